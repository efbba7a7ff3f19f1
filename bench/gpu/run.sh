#!/usr/bin/env bash
# The GPU benchmarks in one device call: unpack the packages the device image lacks, record the environment,
# then the steps of $STEPS in order, most valuable first. Each step has a budget (the most it may take: it is
# killed there) and a need (what it is expected to take: it starts only while that much of TOTAL_S is left);
# the steps that do not fit are skipped, never cut short by the call's own limit. A failed step does not stop
# the ones after it. After every step bench/gpu/summary.py merges what is there into $OUT, so a call cut short
# still brings back every finished figure.
#
# Steps (GPU: 1024x1024, bf16, batch 1; FLUX.1-dev and SD3.5 28 steps, SDXL 30; real-size architectures with
# random weights written by bench/gpu/models.py; estimates on an H100 from FLOPs and load sizes, not measured):
#   model-flux    FLUX.1-dev folder (12B transformer, T5-XXL, CLIP-L, VAE: 33.5 GB), FLOPs per step, bare step time
#   flux          bench/efficiency.py A (bare diffusers loop) vs B (sdbatch), 6 images     (~2x50 s: loads 33 GB)
#   model-sd3     SD3.5-medium (or SD3_VARIANT=large) folder: T5-XXL and CLIP-L linked from FLUX's, CLIP-G new
#   sd3           the pair, 8 images
#   model-sdxl    SDXL folder (2.6B UNet; CLIP-L and CLIP-G linked)
#   sdxl          the pair, 8 images
#   flux-cache    the FLUX pair with render.step_cache = $FLUX_CACHE on both sides (bench/efficiency.py --step-cache)
#   flux-compile  the FLUX pair, both denoisers torch.compile'd (compiling 57 blocks: the costliest step)
#   sd3-compile   the SD3.5 pair compiled
#   sd15 sd15-lora sd15-compile    the earlier SD1.5 steps: efficiency batch 1/4/8/16, lora_switch, compiled pair
#   score         bench/score_steps.py: the score steps per image at CLIP ViT-L/14 size (fp16), 512x512, batch 8;
#                 their share of an SD1.5 512x512 image is this over sd15's seconds per image
# Expected on an H100 (FLOPs counted on meta: FLUX 74 TFLOP per step, SD3.5-medium 22.5 and SDXL 13.5 with both
# CFG rows, a 1024 px VAE decode 10.5; at ~60% MFU an image takes ~3.5, ~1.2 and ~0.8 s): unpacking and the
# environment ~20 s, model-flux ~55, flux ~115, model-sd3 ~20, sd3 ~85, model-sdxl ~15, sdxl ~75: ~385 s; then
# flux-cache (its need becomes flux's time + 10 s) fits in the default TOTAL_S; flux-compile (flux's + 130 s)
# and what follows run only with a larger TOTAL_S or a STEPS that leaves earlier steps out.
# Order: FLUX first, as the largest model of the newest family, where sdbatch's overhead and memory matter most,
# and the only family with step caching; then one eager pair per family, since each family is its own code path
# in sdbatch that no GPU has run yet; then FLUX's step cache and compile, whose cost is known only after the eager
# pair (a compile pair costs about two eager pairs); SD1.5 last: the smallest model, its steps rehearsed before.
#
# Out ($OUT, 5 files; at most 8 come back): env.txt (environment and the timeline), run.log (every step's
# output), summary.txt (one table), results.json (every step's JSON, merged), smi.csv (GPU memory/use/power
# every 0.5 s, for each step's peak memory).
#
# Here, once:  bash ../shared/gpu/make-bundle.sh            (builds .gpu/site.tar.xz, ~50 MB)
# Device call: run(command="bash bench/gpu/run.sh", carry=[".gpu"], timeout_s=540)
#              TOTAL_S (default 500) is the whole script; steps stop by it, plus 15 s of kill grace.
#              STEPS="model-flux flux-compile" bash bench/gpu/run.sh   runs only those, in that order.
# Dry run here, CPU only, the local venv instead of the bundle (tiny sizes, 64x64, 2 steps):
#              DRY_RUN=1 OUT=/tmp/gpu-dry bash bench/gpu/run.sh
# Rehearsal here, CPU only, with a bundle in front of a venv that holds only the image's packages:
#              bash bench/gpu/rehearse.sh     (it runs this script with DRY_RUN=bundle BUNDLE=... PYTHON=...)
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
OUT=${OUT:-/tmp/sdbatch-gpu-out}
work=${WORK:-/tmp/sdbatch-bench}
STEPS=${STEPS:-"model-flux flux model-sd3 sd3 model-sdxl sdxl flux-cache flux-compile sd3-compile sd15 score sd15-lora sd15-compile"}
SD3_VARIANT=${SD3_VARIANT:-medium}
FLUX_CACHE=${FLUX_CACHE:-taylorseer:4}
# step: budget (killed there), need (started only with this much left); GPU seconds
declare -A BUDGET=([model-flux]=150 [flux]=200 [model-sd3]=60 [sd3]=130 [model-sdxl]=50 [sdxl]=120
                   [flux-cache]=170 [flux-compile]=330 [sd3-compile]=240 [sdxl-compile]=200 [sd15]=200 [sd15-lora]=150
                   [sd15-compile]=200 [score]=90)
declare -A DUR=()
declare -A NEED=([model-flux]=60 [flux]=100 [model-sd3]=25 [sd3]=65 [model-sdxl]=20 [sdxl]=55
                 [flux-cache]=100 [flux-compile]=220 [sd3-compile]=150 [sdxl-compile]=130 [sd15]=120 [sd15-lora]=60
                 [sd15-compile]=170 [score]=40)
mkdir -p "$OUT" "$work"
for key in "${!BUDGET[@]}"; do  # BUDGET_flux_cache=200 NEED_flux_cache=120 ... override a step's figures
    b=BUDGET_${key//-/_} n=NEED_${key//-/_}
    BUDGET[$key]=${!b:-${BUDGET[$key]}} NEED[$key]=${!n:-${NEED[$key]}}
done
rm -rf "$work/json" "$work/steps.tsv" "$work/smi.csv" "$OUT"/{env.txt,run.log,summary.txt,results.json,smi.csv}
mkdir -p "$work/json"
elapsed() { echo $(( $(date +%s) - started )); }
note() { echo "[$(elapsed) s] $*" | tee -a "$OUT/env.txt"; }

bundle=${BUNDLE:-.gpu/site.tar.xz}
if [ "${DRY_RUN:-}" != 1 ]; then
    if [ ! -f "$bundle" ]; then
        note "no $bundle: build it here with 'bash ../shared/gpu/make-bundle.sh' and carry .gpu"
        exit 2
    fi
    rm -rf /tmp/sdbatch-site && mkdir -p /tmp/sdbatch-site && tar xJf "$bundle" -C /tmp/sdbatch-site || exit 2
fi
if [ "${DRY_RUN:-}" = bundle ]; then
    py=${PYTHON:?the venv that stands for the image}; device=cpu
    export PYTHONPATH=/tmp/sdbatch-site:$PWD
elif [ -n "${DRY_RUN:-}" ]; then
    py=${PYTHON:-.venv/bin/python}; device=cpu
    export PYTHONPATH=$PWD
else
    py=${PYTHON:-python3}; device=cuda
    export PYTHONPATH=/tmp/sdbatch-site:$PWD
fi
if [ "$device" = cuda ]; then
    TOTAL_S=${TOTAL_S:-500}
    size=1024; flux_images=6; images=8; quick=
    declare -A STEPS_OF=([flux]=28 [sd3]=28 [sdxl]=30)
else  # the same steps at tiny sizes; nothing is skipped for time unless TOTAL_S says so
    TOTAL_S=${TOTAL_S:-1200}
    size=64; flux_images=2; images=2; quick=--quick
    declare -A STEPS_OF=([flux]=2 [sd3]=2 [sdxl]=2)
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SDBATCH_CACHE=/tmp/sdbatch-cache TOKENIZERS_PARALLELISM=false
# Every process a step starts carries this in its environment (Ray's daemons too): what reap() ends, by pid.
run_id="sdbatch-gpu-$$-$started"
note "unpacked; steps: $STEPS; TOTAL_S $TOTAL_S"

$py - <<'PY' 2>&1 | tee -a "$OUT/env.txt"
import importlib.metadata as md, os, platform, shutil, torch
names = ("torch", "diffusers", "transformers", "peft", "accelerate", "ray", "pyarrow", "safetensors", "pillow")
print("python", platform.python_version(), "| nproc", os.cpu_count(), "|",
      ", ".join(f"{n} {md.version(n)}" for n in names))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"bf16 native {torch.cuda.is_bf16_supported(including_emulation=False)}")
mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
print(f"host memory {mem / 2**20:.0f} GiB; free: " + ", ".join(
      f"{p} {shutil.disk_usage(p).free / 2**30:.0f} GiB" for p in ("/tmp", "/dev/shm") if os.path.isdir(p)))
import sdbatch.engine.cluster, sdbatch.render.renderer  # noqa: E401,F401  everything imports
PY
[ "${PIPESTATUS[0]}" = 0 ] || exit 3

# Model folders: in RAM (/dev/shm) where it has room for all three (46 GB) and the host has memory to spare
# beside a 34 GB load: no disk writeback to wait for. Otherwise on the disk, deleting folders to make room.
free_gib() { df -Pk "$1" 2>/dev/null | awk 'NR == 2 { print int($4 / 1048576) }'; }
mem_gib=$(awk '/^MemTotal/ { print int($2 / 1048576) }' /proc/meminfo)
if [ -z "${MODELS:-}" ]; then
    if [ "$device" = cuda ] && [ "$(free_gib /dev/shm || echo 0)" -ge 60 ] && [ "$mem_gib" -ge 120 ]; then
        MODELS=/dev/shm/sdbatch-models
    else
        MODELS=$work/models
    fi
fi
mkdir -p "$MODELS"
note "models in $MODELS ($(free_gib "$MODELS") GiB free)"

sampler=
if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then
    (while :; do
        echo "$(date +%s.%N),$(nvidia-smi --query-gpu=memory.used,utilization.gpu,power.draw \
            --format=csv,noheader,nounits 2>/dev/null | head -1)"
        sleep 0.5
    done) > "$work/smi.csv" 2>/dev/null &
    sampler=$!
fi

reap() {  # what a step left running (a killed step's children, Ray's daemons): ended by pid
    local p pid killed=0
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx "SDBATCH_GPU_RUN=$run_id"; then
            kill -9 "$pid" 2>/dev/null && killed=$((killed + 1))
        fi
    done
    [ "$killed" = 0 ] || { note "reaped $killed leftover processes"; sleep 2; }
}

summarize() {
    [ -n "$sampler" ] && cp "$work/smi.csv" "$OUT/smi.csv" 2>/dev/null
    $py bench/gpu/summary.py --work "$work" --out "$OUT" > /dev/null 2>>"$OUT/run.log"
}

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$work/steps.tsv"; }

# step NAME COMMAND...: runs it within min(budget, time left), or skips it when less than its need is left.
step() {
    local name=$1 budget=${BUDGET[$1]} need=${NEED[$1]} left limit t0 s0 rc status
    shift
    left=$(( TOTAL_S - $(elapsed) ))
    if [ "$left" -lt "$need" ]; then
        note "skip $name: ${left} s left, it needs ${need}"
        record "$name" "" "" "" skipped
        return
    fi
    limit=$(( budget < left ? budget : left ))
    note "start $name: budget ${budget} s, limit ${limit} s, ${left} s left"
    echo "===== $name: $*" >> "$OUT/run.log"
    t0=$(date +%s.%N) s0=$(date +%s)
    SDBATCH_GPU_RUN=$run_id timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/run.log"
    rc=${PIPESTATUS[0]}
    reap
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    record "$name" "$rc" "$t0" "$(date +%s.%N)" "$status"
    DUR[$name]=$(( $(date +%s) - s0 ))
    note "end $name: $status (rc $rc) after ${DUR[$name]} s"
    summarize
    # A variant of a pair just measured needs about what the pair took (a compiled one, compiling besides).
    case $name in flux|sd3|sdxl)
        [ "$status" = ok ] || return
        local variant extra
        for variant in cache:10 compile:130; do
            extra=${variant#*:} variant=$name-${variant%:*}
            [ -n "${NEED[$variant]:-}" ] && [ $(( DUR[$name] + extra )) -gt "${NEED[$variant]}" ] &&
                NEED[$variant]=$(( DUR[$name] + extra )) && note "$variant now needs ${NEED[$variant]} s"
        done ;;
    esac
}

# make_room FAMILY GiB: on a disk too small for every folder, delete those no later step needs, then any other.
make_room() {
    local family=$1 need=$2 other
    for other in flux sd3 sdxl; do
        [ "$(free_gib "$MODELS")" -ge "$need" ] && return
        [ "$other" = "$family" ] && continue
        case " $remaining " in *" $other"*) continue ;; esac
        note "deleting $MODELS/$other to make room for $family"; rm -rf "$MODELS/$other"
    done
    for other in flux sd3 sdxl; do
        [ "$(free_gib "$MODELS")" -ge "$need" ] && return
        [ "$other" = "$family" ] || { note "deleting $MODELS/$other (needed later)"; rm -rf "$MODELS/$other"; }
    done
}

pair() {  # pair NAME FAMILY [bench/efficiency.py arguments...]
    local name=$1 family=$2 script=bench/efficiency.py
    shift 2
    if [ ! -f "$MODELS/$family/sdbatch_bench_model.json" ]; then
        note "skip $name: no $family model (its model step failed or was skipped)"
        record "$name" "" "" "" skipped
        return
    fi
    local n=$images
    [ "$family" = flux ] && n=$flux_images
    step "$name" $py $script "$@" --device "$device" --family "$family" --model "$MODELS/$family" --size "$size" \
        --steps "${STEPS_OF[$family]}" --batch 1 --images "$n" --rounds 1 --timeout "${BUDGET[$name]}" \
        --work "$work/eff" --json-out "$work/json/$name.json"
}

model() {  # model FAMILY
    local family=$1 room=10
    [ "$family" = flux ] && room=40
    make_room "$family" "$room"
    step "model-$family" $py bench/gpu/models.py "$family" --out "$MODELS/$family" --parts "$MODELS/_parts" \
        --device "$device" $quick --size "$size" --steps "${STEPS_OF[$family]}" --variant "$SD3_VARIANT" \
        --json-out "$work/json/model-$family.json"
}

set -- $STEPS
while [ $# -gt 0 ]; do
    name=$1
    shift
    remaining="$*"
    case $name in
        model-flux|model-sd3|model-sdxl) model "${name#model-}" ;;
        flux|sd3|sdxl) pair "$name" "$name" --compile off ;;
        flux-cache) pair "$name" flux --step-cache "$FLUX_CACHE" --compile off ;;
        flux-compile|sd3-compile|sdxl-compile) pair "$name" "${name%-compile}" --compile only ;;
        sd15)  # the SD1.5 architecture at 512x512, 30 steps (CPU: tiny), batch 1/4/8/16 within the budget
            step sd15 $py bench/efficiency.py --device "$device" $quick --compile off \
                --budget-s "$(( BUDGET[sd15] - 60 ))" --timeout 240 --work "$work" --json-out "$work/json/sd15.json" ;;
        score)
            step score $py bench/score_steps.py --device "$device" $quick --json-out "$work/json/score.json" ;;
        sd15-lora)
            step sd15-lora $py bench/lora_switch.py --device "$device" $quick --switches 20 --work "$work" \
                --json-out "$work/json/sd15-lora.json" ;;
        sd15-compile)
            step sd15-compile $py bench/efficiency.py --device "$device" $quick --compile only \
                --timeout "$(( BUDGET[sd15-compile] - 10 ))" --work "$work" --json-out "$work/json/sd15-compile.json" ;;
        *) note "unknown step $name (known: model-flux flux model-sd3 sd3 model-sdxl sdxl flux-cache flux-compile" \
                "sd3-compile sdxl-compile sd15 score sd15-lora sd15-compile)" ;;
    esac
done

[ -n "$sampler" ] && kill "$sampler" 2>/dev/null
summarize
note "done"
cat "$OUT/summary.txt"
