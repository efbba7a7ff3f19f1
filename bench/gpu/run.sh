#!/usr/bin/env bash
# The GPU benchmarks in one device call of under 8 minutes: unpack the packages the device image lacks,
# record the environment, then bench/efficiency.py --device cuda (batch 1/4/8/16, within a time budget),
# bench/lora_switch.py --device cuda, and the compiled efficiency pair if time is left. Logs and JSON go
# to $OUT (7 files; at most 8 come back). Every step runs even when an earlier one failed.
#
# Here, once:  bash ../shared/gpu/make-bundle.sh            (builds .gpu/site.tar.xz, ~50 MB)
# Device call: run(command="bash bench/gpu/run.sh", carry=[".gpu"], timeout_s=540)
# Dry run here, CPU only, the local venv instead of the bundle:
#              DRY_RUN=1 OUT=/tmp/gpu-dry bash bench/gpu/run.sh
# Rehearsal here, CPU only, with a bundle in front of a venv that holds only the image's packages:
#              bash bench/gpu/rehearse.sh     (it runs this script with DRY_RUN=bundle BUNDLE=... PYTHON=...)
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
OUT=${OUT:-/tmp/sdbatch-gpu-out}
TOTAL_S=${TOTAL_S:-460}              # the whole script, unpacking included (the call's limit: 600 s)
LORA_S=${LORA_S:-150}                # kept for lora_switch: model loads and one UNet compile
COMPILE_PAIR_S=${COMPILE_PAIR_S:-170}  # the compiled A/B pair runs only if this much is left
work=/tmp/sdbatch-bench
mkdir -p "$OUT" "$work"
elapsed() { echo $(( $(date +%s) - started )); }
note() { echo "[$(elapsed) s] $*" | tee -a "$OUT/env.txt"; }

bundle=${BUNDLE:-.gpu/site.tar.xz}
if [ ! -f "$bundle" ]; then
    note "no $bundle: build it here with 'bash ../shared/gpu/make-bundle.sh' and carry .gpu"
    exit 2
fi
rm -rf /tmp/sdbatch-site && mkdir -p /tmp/sdbatch-site && tar xJf "$bundle" -C /tmp/sdbatch-site || exit 2
if [ "${DRY_RUN:-}" = bundle ]; then
    py=${PYTHON:?the venv that stands for the image}; device=cpu; quick=--quick
    export PYTHONPATH=/tmp/sdbatch-site:$PWD
elif [ -n "${DRY_RUN:-}" ]; then
    py=${PYTHON:-.venv/bin/python}; device=cpu; quick=--quick
    export PYTHONPATH=$PWD
else
    py=${PYTHON:-python3}; device=cuda; quick=
    export PYTHONPATH=/tmp/sdbatch-site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SDBATCH_CACHE=/tmp/sdbatch-cache TOKENIZERS_PARALLELISM=false
note "unpacked"

$py - <<'PY' 2>&1 | tee -a "$OUT/env.txt"
import importlib.metadata as md, os, platform, torch
names = ("torch", "diffusers", "transformers", "peft", "accelerate", "ray", "pyarrow", "safetensors", "pillow")
print("python", platform.python_version(), "| nproc", os.cpu_count(), "|",
      ", ".join(f"{n} {md.version(n)}" for n in names))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"bf16 native {torch.cuda.is_bf16_supported(including_emulation=False)}")
import sdbatch.engine.cluster, sdbatch.render.renderer  # noqa: E401,F401  everything imports
PY
[ "${PIPESTATUS[0]}" = 0 ] || exit 3

budget=$(( TOTAL_S - $(elapsed) - LORA_S - 60 ))
note "efficiency, batch 1/4/8/16: starts no run after ${budget} s"
$py bench/efficiency.py --device "$device" $quick --compile off --budget-s "$budget" --timeout 240 \
    --work "$work" --json-out "$OUT/efficiency.json" 2>&1 | tee "$OUT/efficiency.log"

note "lora_switch"
$py bench/lora_switch.py --device "$device" $quick --switches 20 --work "$work" \
    --json-out "$OUT/lora_switch.json" 2>&1 | tee "$OUT/lora_switch.log"

left=$(( TOTAL_S - $(elapsed) ))
if [ "$left" -ge "$COMPILE_PAIR_S" ]; then
    note "efficiency, batch 8 compiled on both sides (${left} s left)"
    $py bench/efficiency.py --device "$device" $quick --compile only --timeout "$(( left - 10 ))" \
        --work "$work" --json-out "$OUT/efficiency-compile.json" 2>&1 | tee "$OUT/efficiency-compile.log"
else
    note "compiled pair skipped: ${left} s left, it needs ${COMPILE_PAIR_S}"
fi
note "done"
