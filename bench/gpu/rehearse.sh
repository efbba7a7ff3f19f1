#!/usr/bin/env bash
# Rehearses bench/gpu/run.sh here, on the CPU, before device time is spent on it: a venv with the GPU
# image's versions of what sdbatch imports (not its CUDA torch: the CPU build of the same line), the
# packages the image lacks unpacked in front of it as the bundle would be, then run.sh in DRY_RUN=bundle
# mode and one SD1.5-architecture pair (the model the GPU run writes, at 64x64 and 2 steps): 105 s and 44 s
# here, plus the venv's install the first time.
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

DRY_RUN=bundle BUNDLE="$root/site.tar.xz" PYTHON="$venv/bin/python" OUT="$root/out" bash bench/gpu/run.sh \
    > "$root/run.log" 2>&1 || true
export PYTHONPATH=/tmp/sdbatch-site:$PWD HF_HUB_OFFLINE=1  # run.sh unpacked the bundle there
"$venv/bin/python" -c "import sys; sys.path.insert(0, 'bench'); from sdref import write_sd15_random; \
write_sd15_random('$root/sd15-random', device='cpu')" > "$root/sd15.log" 2>&1
"$venv/bin/python" bench/efficiency.py --device cpu --model "$root/sd15-random" --size 64 --steps 2 --batch 2 \
    --images 4 --rounds 1 --compile off >> "$root/sd15.log" 2>&1 || true

ok=0
for f in efficiency.json lora_switch.json efficiency-compile.json; do
    [ -s "$root/out/$f" ] && echo "ok: $f" || { echo "MISSING: $f (see $root/run.log)"; ok=1; }
done
grep -q '^efficiency: ' "$root/sd15.log" && echo "ok: SD1.5 architecture pair" \
    || { echo "FAILED: SD1.5 architecture pair (see $root/sd15.log)"; ok=1; }
exit $ok
