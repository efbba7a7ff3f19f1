#!/usr/bin/env bash
# Rehearses bench/gpu/run.sh here, on the CPU, before device time is spent on it: a venv with the GPU
# image's versions of what sdbatch imports (not its CUDA torch: the CPU build of the same line), the
# packages the image lacks unpacked in front of it as the bundle would be, then:
#   1. bench/gpu/models.py all --count-only: the real-size configs (FLUX.1-dev, SD3.5, SDXL, CLIP-L/G, T5-XXL)
#      built on the meta device with the image's transformers and diffusers: parameters against the published
#      models' and FLOPs per step (the count the GPU run repeats on the device for MFU);
#   2. run.sh in DRY_RUN=bundle mode, every step of its default $STEPS at tiny sizes (64x64, 2 steps, the
#      same configs with a few blocks and small widths): each must end "ok";
#   3. one SD1.5-architecture pair (the model the sd15 steps write on the GPU) at 64x64 and 2 steps.
# Here (2 cores, shared with other work): 14-18 s, 200-394 s and 45-49 s, 4-8 min by the load; plus the venv's
# install and the bundle's download the first time (a few minutes, not counted).
#
#   bash bench/gpu/rehearse.sh          # from the project root; logs under /tmp/sdbatch-rehearsal
set -euo pipefail
cd "$(dirname "$0")/../.."
root=/tmp/sdbatch-rehearsal
venv=$root/venv
mkdir -p "$root"
# The image's versions as read there (2026-11, /work/.library/device/KINDS.md), and the plain
# packages it has that ray, boto3 and diffusers need; no pydantic, no importlib_metadata: it lacks them.
image="transformers==5.17.0 huggingface_hub==1.33.0 accelerate==1.15.0 safetensors==0.8.0 tokenizers peft
       numpy pyarrow pillow rich click msgpack protobuf pyyaml requests filelock packaging regex psutil
       aiohttp grpcio python-dateutil six urllib3 attrs jinja2 typing-extensions annotated-doc tqdm fsspec"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0 $image 2>>"$root/pip.log"
    "$venv/bin/pip" uninstall -y -q pydantic pydantic_core || true  # pulled in by a dependency, not there
fi
# The bundle's packages for this machine's Python (make-bundle.sh builds them for the image's 3.12).
pyver=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ ! -f "$root/site.tar.xz" ]; then
    rm -rf "$root/whl" "$root/site" && mkdir -p "$root/site"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$root/whl" ray==2.60.0 diffusers==0.42.1 boto3 botocore s3transfer jmespath typer shellingham \
        jsonschema jsonschema-specifications referencing rpds-py 2>>"$root/pip.log"
    "$venv/bin/python" - "$root/site" "$root"/whl/*.whl <<'PY'
import os, sys, zipfile
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, sys.argv[1])
            if (mode := info.external_attr >> 16) and not info.is_dir():
                os.chmod(path, mode & 0o777)  # ray's raylet and gcs_server stay executable
PY
    tar cf - -C "$root/site" . | xz -T0 -3 > "$root/site.tar.xz"
fi

export PYTHONPATH=/tmp/sdbatch-site:$PWD HF_HUB_OFFLINE=1  # run.sh unpacks the bundle there (first: step 2)
started=$(date +%s)
rm -rf /tmp/sdbatch-site && mkdir -p /tmp/sdbatch-site && tar xJf "$root/site.tar.xz" -C /tmp/sdbatch-site
"$venv/bin/python" bench/gpu/models.py all --count-only > "$root/count.log" 2>&1 || true
grep -v 'Warn\|torchvision' "$root/count.log" | tail -6 || true
count_s=$(( $(date +%s) - started ))
started=$(date +%s)
rm -rf "$root/work"  # the model folders too: every run writes them again
DRY_RUN=bundle BUNDLE="$root/site.tar.xz" PYTHON="$venv/bin/python" OUT="$root/out" WORK="$root/work" \
    bash bench/gpu/run.sh > "$root/run.log" 2>&1 || true
run_s=$(( $(date +%s) - started ))
started=$(date +%s)
"$venv/bin/python" -c "import sys; sys.path.insert(0, 'bench'); from sdref import write_sd15_random; \
write_sd15_random('$root/sd15-random', device='cpu')" > "$root/sd15.log" 2>&1
"$venv/bin/python" bench/efficiency.py --device cpu --model "$root/sd15-random" --size 64 --steps 2 --batch 2 \
    --images 4 --rounds 1 --compile off >> "$root/sd15.log" 2>&1 || true
sd15_s=$(( $(date +%s) - started ))

ok=0
if grep -q '^flux .*parameters' "$root/count.log" && ! grep -q '^warning' "$root/count.log"; then
    echo "ok: real-size configs counted on meta, parameters as published (${count_s} s)"
else
    echo "FAILED: real-size configs (see $root/count.log)"; ok=1
fi
echo "run.sh in ${run_s} s (see $root/run.log, $root/out):"
for name in $(sed -n 's/^STEPS=${STEPS:-"\(.*\)"}$/\1/p' bench/gpu/run.sh); do
    line=$(awk -F'\t' -v n="$name" '$1 == n' "$root/work/steps.tsv" 2>/dev/null)
    status=$(echo "$line" | cut -f5)
    seconds=$(echo "$line" | awk -F'\t' '$3 != "" { printf "%.0f", $4 - $3 }')
    if [ "$status" = ok ]; then echo "  ok: $name (${seconds} s)"; else echo "  FAILED: $name (${status:-not run})"; ok=1; fi
done
for f in env.txt run.log summary.txt results.json; do
    [ -s "$root/out/$f" ] || { echo "MISSING: out/$f"; ok=1; }
done
if grep -q '^efficiency: ' "$root/sd15.log"; then
    echo "ok: SD1.5 architecture pair (${sd15_s} s)"
else
    echo "FAILED: SD1.5 architecture pair (see $root/sd15.log)"; ok=1
fi
exit $ok
