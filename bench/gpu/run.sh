#!/usr/bin/env bash
# The GPU benchmarks in one device call of under 8 minutes: unpack the packages the device image lacks,
# record the environment, run bench/efficiency.py --device cuda within a time budget, then
# bench/lora_switch.py --device cuda; logs and JSON go to $OUT (at most 8 files come back).
#
# Here, once:  bash ../shared/gpu/make-bundle.sh            (builds .gpu/site.tar.xz, ~50 MB)
# Device call: run(command="bash bench/gpu/run.sh", carry=[".gpu"], timeout_s=540)
# Dry run here, CPU only, the local venv instead of the bundle:
#              DRY_RUN=1 OUT=/tmp/gpu-dry bash bench/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
OUT=${OUT:-/tmp/sdbatch-gpu-out}
TOTAL_S=${TOTAL_S:-450}          # the whole script, unpacking included; the call's limit is 600 s
LORA_RESERVE_S=${LORA_RESERVE_S:-150}  # kept for lora_switch (model loads, one UNet compile)
work=/tmp/sdbatch-bench
mkdir -p "$OUT" "$work"
elapsed() { echo $(( $(date +%s) - started )); }

if [ ! -f .gpu/site.tar.xz ]; then
    echo "no .gpu/site.tar.xz: build it here with 'bash ../shared/gpu/make-bundle.sh' and carry .gpu" | tee "$OUT/env.txt"
    exit 2
fi
mkdir -p /tmp/sdbatch-site && tar xJf .gpu/site.tar.xz -C /tmp/sdbatch-site || exit 2
if [ -n "${DRY_RUN:-}" ]; then
    py=${PYTHON:-.venv/bin/python}; device=cpu; quick=--quick
    export PYTHONPATH=$PWD
else
    py=${PYTHON:-python3}; device=cuda; quick=
    export PYTHONPATH=/tmp/sdbatch-site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SDBATCH_CACHE=/tmp/sdbatch-cache TOKENIZERS_PARALLELISM=false
echo "unpacked in $(elapsed) s" | tee "$OUT/env.txt"

$py - <<'PY' 2>&1 | tee -a "$OUT/env.txt"
import importlib.metadata as md, platform, torch
names = ("torch", "diffusers", "transformers", "peft", "accelerate", "ray", "pyarrow", "safetensors")
print("python", platform.python_version(), "|", ", ".join(f"{n} {md.version(n)}" for n in names))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"bf16 native {torch.cuda.is_bf16_supported(including_emulation=False)}")
import sdbatch.render.renderer, sdbatch.engine.cluster  # noqa: F401  everything imports
PY
[ "${PIPESTATUS[0]}" = 0 ] || exit 3

budget=$(( TOTAL_S - $(elapsed) - LORA_RESERVE_S ))
echo "efficiency: budget ${budget} s (starts no run after it)" | tee -a "$OUT/env.txt"
$py bench/efficiency.py --device "$device" $quick --budget-s "$budget" --timeout 300 --work "$work" \
    --json-out "$OUT/efficiency.json" 2>&1 | tee "$OUT/efficiency.log"

$py bench/lora_switch.py --device "$device" $quick --switches 20 --work "$work" \
    --json-out "$OUT/lora_switch.json" 2>&1 | tee "$OUT/lora_switch.log"
echo "done in $(elapsed) s" | tee -a "$OUT/env.txt"
