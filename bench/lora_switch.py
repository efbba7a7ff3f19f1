"""LoRA switch latency on a warm pipeline: what an actor pays when consecutive batches use different LoRAs.

Modes (each: many switches between 4 LoRAs, p50 / p95 of the time until the pipeline is ready to render):
  resident   all 4 adapters loaded; a switch is set_adapters (sdbatch's path while <= max_loras_resident)
  cache      one adapter resident; a switch deletes it and loads the next from the parsed CPU state-dict cache
  disk       as cache, with the cache off: read the file, hash, parse, load
  hotswap    FastPath(compile=True)'s path: weights copied into fixed slots; on CUDA into a compiled UNet
             (a render after each switch checks that nothing recompiles), on the CPU eagerly unless --compile
CPU: the tiny model and tiny rank-4 LoRAs (tests/support/tiny_variants.py). CUDA: the SD1.5 architecture with
random weights (bench/sdref.py) and rank-16 LoRAs on the attention projections of UNet and CLIP.
The last line is the cache mode's p50: the cost of a variant that is not resident.

    .venv/bin/python bench/lora_switch.py              # CPU, ~1 min
    .venv/bin/python bench/lora_switch.py --compile    # CPU, hotswap into an inductor-compiled UNet too
    python bench/lora_switch.py --device cuda          # SD1.5-sized, compile included (~2 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from sdbatch.render.models.loading import load_model, pick_device  # noqa: E402
from sdbatch.render.variants.cache import VariantCache  # noqa: E402
from sdbatch.render.variants.fetch import Fetcher  # noqa: E402
from sdbatch.render.variants.loras import StateDictCache  # noqa: E402
from sdbatch.settings import FastPath, VariantSettings  # noqa: E402

LORAS = 4


def make_loras(device: str, work: Path) -> tuple[str, list[str]]:
    if device == "cpu":
        from tests.support.tiny_variants import write_tiny_lora

        return "tiny:sd15", [str(write_tiny_lora(work / f"lora{i}.safetensors", seed=i)) for i in range(LORAS)]
    from sdref import write_random_lora, write_sd15_random

    folder = write_sd15_random(work / "sd15-random", device="cuda")
    pipe = load_model(str(folder), torch.device("cpu"), torch.float16).pipeline  # names and shapes only
    return str(folder), [str(write_random_lora(pipe, work / f"lora{i}.safetensors", seed=i)) for i in range(LORAS)]


def variants_for(model, mode: str, device, dtype, fast: FastPath) -> VariantCache:
    settings = VariantSettings(max_loras_resident=LORAS if mode == "resident" else 1,
                               lora_cache_bytes=0 if mode == "disk" else 2 << 30)
    return VariantCache(model.pipeline, device, dtype, settings, StateDictCache(settings.lora_cache_bytes), Fetcher(),
                    fast)


def render_once(pipe, device, size: int) -> None:
    with torch.inference_mode():
        pipe(prompt=["a lighthouse"], num_inference_steps=2, width=size, height=size,
             generator=[torch.Generator("cpu").manual_seed(0)], output_type="latent")
    _sync(device)


def switches(variants: VariantCache, loras: list[str], count: int, device, after=None) -> tuple[list[float], int]:
    """Seconds per switch, cycling through the LoRAs (each used once before timing starts), and the graphs
    torch.compile made after that warm-up (0: no switch recompiled)."""
    for path in loras:
        variants.activate([{"path": path, "weight": 0.8}], [])
        if after:
            after()
    warm_graphs = graphs()
    times = []
    for i in range(count):
        started = time.perf_counter()
        variants.activate([{"path": loras[i % len(loras)], "weight": 0.8}], [])
        _sync(device)
        times.append(time.perf_counter() - started)
        if after:
            after()
    return times, graphs() - warm_graphs


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def graphs() -> int:
    import torch._dynamo.utils as dynamo_utils

    return dynamo_utils.counters["stats"]["unique_graphs"]


def run_mode(mode: str, reference: str, loras: list[str], args) -> dict:
    device, dtype = pick_device(args.device)
    compiled = mode == "hotswap" and (device.type == "cuda" or args.compile)
    fast = FastPath(compile=compiled, lora_rank=args.rank)
    model = load_model(reference, device, dtype, fast)
    variants = variants_for(model, mode, device, dtype, fast)
    if mode == "hotswap" and not fast.compile:  # the compiled path's LoRA handling, eagerly
        from sdbatch.render.variants.hotswap import HotswapLoras

        variants.loras = HotswapLoras(model.pipeline, StateDictCache(2 << 30), Fetcher(), 1, args.rank)
    after = None
    if mode == "hotswap" and fast.compile:
        after = lambda: render_once(model.pipeline, device, args.size)  # noqa: E731
    times, new_graphs = switches(variants, loras, args.switches, device, after)
    result = {"mode": mode, "p50_ms": 1000 * statistics.median(times),
              "p95_ms": 1000 * statistics.quantiles(times, n=20)[-1] if len(times) >= 2 else 1000 * times[0],
              "switches": len(times), "loads": variants.loras.loads}
    if fast.compile:
        result["graphs"] = graphs()  # > 0: the UNet did run compiled
        result["graphs_after_warmup"] = new_graphs
        result["rebuilds"] = variants.loras.rebuilds
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--switches", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="8 switches per mode")
    parser.add_argument("--rank", type=int, default=16, help="hotswap padding rank (FastPath.lora_rank)")
    parser.add_argument("--size", type=int, default=None, help="render size for the compiled check")
    parser.add_argument("--compile", action="store_true",
                        help="CPU: hotswap into a compiled UNet too (inductor, ~1 min), checking recompiles")
    parser.add_argument("--work", default=None)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    args.switches = 8 if args.quick else args.switches
    args.size = args.size or (512 if args.device == "cuda" else 64)
    work = Path(args.work or tempfile.mkdtemp(prefix="sdbatch-lora-"))
    reference, loras = make_loras(args.device, work)
    results = []
    for mode in ("resident", "cache", "disk", "hotswap"):
        result = run_mode(mode, reference, loras, args)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n{args.device}: {reference}, {LORAS} LoRAs, {args.switches} switches per mode, torch {torch.__version__}")
    for r in results:
        print(f"{r['mode']:9s} p50 {r['p50_ms']:8.2f} ms   p95 {r['p95_ms']:8.2f} ms"
              + (f"   graphs {r['graphs']}, after warm-up {r['graphs_after_warmup']}" if "graphs" in r else ""))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    print(f"lora_switch_p50_ms: {next(r['p50_ms'] for r in results if r['mode'] == 'cache'):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
