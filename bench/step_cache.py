"""Step caching ([render] step_cache) on a deeper random FLUX.1-style transformer: speed-up, steps skipped, pixels.

Tiny models show nothing (their blocks cost less than the call around them), so this builds the tiny FLUX.1
pipeline with a deeper, wider transformer (random weights, `--double` + `--single` blocks) and renders the same
rows through sdbatch's Renderer (in-process, no Ray) once per setting: `none` and each `--caches` entry. Settings
alternate within each round, the order rotating per round, because shared machines drift. Reported per setting:
seconds per image (median over rounds), speed-up against `none` measured in the same rounds, the share of steps
whose full transformer ran (the last block's attention computed, not skipped or predicted), and the mean and max
pixel difference from the uncached image of the same row (0-255).

    .venv/bin/python bench/step_cache.py                  # 12 blocks, 128x128, 24 steps, 4 rows, 3 rounds
    .venv/bin/python bench/step_cache.py --quick          # a dry run
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

DEFAULT_CACHES = ("first_block:0.1", "first_block:0.3", "first_block:0.5", "taylorseer:3", "taylorseer:5")


def write_model(folder: Path, double: int, single: int, heads: int) -> str:
    """The tiny FLUX.1 pipeline with a deeper transformer, as a diffusers folder."""
    import torch
    from diffusers import FluxTransformer2DModel

    from sdbatch.render.tiny.flux import build_flux_pipeline, transformer_config

    pipe = build_flux_pipeline(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        pipe.transformer = FluxTransformer2DModel(**{**transformer_config(), "num_layers": double,
                                                     "num_single_layers": single, "num_attention_heads": heads})
    pipe.save_pretrained(folder)
    return str(folder)


def rows(model: str, count: int, size: int, steps: int) -> list[dict]:
    subjects = ("a red fox", "a lighthouse", "a bowl of ramen", "an old tram")
    return [{"id": f"r{n}", "prompt": f"{subjects[n % len(subjects)]}, watercolor", "negative_prompt": "",
             "seed": 100 + n, "model": model, "width": size, "height": size, "steps": steps, "scheduler": None,
             "guidance_scale": 3.5, "loras": [], "controlnets": [], "pipeline": "txt2img", "strength": None,
             "hires_scale": None, "prompt_syntax": "a1111", "max_sequence_length": 64} for n in range(count)]


class Side:
    """One setting's warm Renderer, with a counter of the steps whose full transformer ran."""

    def __init__(self, cache: str, model: str, out: Path):
        from sdbatch.render.renderer import Renderer
        from sdbatch.settings import FastPath, RendererSettings
        from sdbatch.store.local import LocalStore

        self.cache = cache
        self.renderer = Renderer(LocalStore(str(out / cache.replace(":", "-"))),
                                 RendererSettings(batch_size=1, io_threads=1, cpu_threads=None,
                                                  fast=FastPath(step_cache=cache)))
        transformer = self.renderer.model(model).pipeline.transformer
        self.full_steps = 0
        # Inside the last block's attention: FirstBlockCache skips the whole block, TaylorSeer predicts the
        # attention's output; either way this layer does not run on a step the cache saved.
        transformer.single_transformer_blocks[-1].attn.to_q.register_forward_hook(self._count)
        self.seconds: list[float] = []
        self.images: dict[str, object] = {}

    def _count(self, *_) -> None:
        self.full_steps += 1

    def render(self, batch: list[dict]) -> None:
        started = time.perf_counter()
        out = list(self.renderer.render_rows(batch))
        self.seconds.append((time.perf_counter() - started) / len(batch))
        for rendered in out:
            assert rendered.error is None, rendered.error
            self.images[rendered.row["id"]] = rendered.image


def pixel_difference(side: Side, base: Side) -> tuple[float, int]:
    import numpy as np

    diffs = [np.abs(np.asarray(side.images[k], dtype=np.int16) - np.asarray(base.images[k], dtype=np.int16))
             for k in base.images]
    return float(np.mean([d.mean() for d in diffs])), int(max(d.max() for d in diffs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caches", nargs="+", default=DEFAULT_CACHES)
    parser.add_argument("--double", type=int, default=4, help="double-stream blocks")
    parser.add_argument("--single", type=int, default=8, help="single-stream blocks")
    parser.add_argument("--heads", type=int, default=8, help="attention heads of 16 dims each")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round of 1 row, 8 steps, 64x64")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.rows, args.steps, args.size = 1, 1, 8, 64
    import torch

    from sdbatch.settings import step_cache_parts

    for cache in args.caches:
        step_cache_parts(cache)  # a typo fails here, not after the model is built
    work = Path(tempfile.mkdtemp(prefix="sdbatch-stepcache-"))
    model = write_model(work / "model", args.double, args.single, args.heads)
    batch = rows(model, args.rows, args.size, args.steps)
    sides = [Side(cache, model, work / "out") for cache in ("none", *args.caches)]
    for side in sides:  # warm-up: first calls allocate and pick kernels
        side.render(batch[:1])
        side.seconds.clear()
        side.full_steps = 0
    print(f"step_cache: transformer {args.double}+{args.single} blocks, {args.heads * 16} wide; {args.size}x"
          f"{args.size}, {args.steps} steps, {args.rows} rows at batch 1, {args.rounds} rounds; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for round_no in range(args.rounds):
        shift = round_no % len(sides)
        for side in sides[shift:] + sides[:shift]:
            side.render(batch)
    base = sides[0]
    results = []
    print(f"{'setting':18s} {'s/image':>8s} {'speed-up':>9s} {'full steps':>11s} {'mean diff':>10s} {'max diff':>9s}")
    for side in sides:
        speedups = [b / s for b, s in zip(base.seconds, side.seconds)]  # same round, side by side
        full = side.full_steps / (args.rounds * args.rows * args.steps)
        mean_diff, max_diff = pixel_difference(side, base)
        results.append({"cache": side.cache, "seconds_per_image": statistics.median(side.seconds),
                        "speedup": statistics.median(speedups), "full_step_share": full,
                        "mean_pixel_diff": mean_diff, "max_pixel_diff": max_diff})
        print(f"{side.cache:18s} {statistics.median(side.seconds):8.3f} {statistics.median(speedups):8.2f}x "
              f"{full:10.0%} {mean_diff:10.2f} {max_diff:9d}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    for side in sides:
        side.renderer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
