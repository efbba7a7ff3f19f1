"""Dispatch policy benchmark: 1,000 simulated GPUs fed by sdbatch's dispatch rule, and the driver's CPU per shard."""

import sys
from pathlib import Path

# Runs from the repository root without installing: sdbatch and bench.scheduling from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scheduling.report import main

if __name__ == "__main__":
    sys.exit(main())
