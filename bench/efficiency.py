"""Efficiency: the same rows rendered by a bare diffusers loop (A) and by sdbatch end to end (B), side by side.

A: one process loads the pipeline once, calls it per batch with one CPU generator per row and saves PNGs with
PIL. B: sdbatch's driver (prepare + execute, as `sdbatch submit` runs them) on a private local Ray with one
actor given the whole machine, writing to a local output folder. Each side runs in a fresh process; A and B
alternate (ABBA...) for several rounds, because shared machines drift. Reported per run: images/s over the
rendering phase (A: first batch to last PNG; B: `render_seconds` of _SUCCESS.json's last_run), wall time from
process launch (B: Ray start, actor, model load included), time to first image (launch to the first PNG's
mtime), and "steady" images/s: pipeline calls after the first (no warm-up, no compiling), which MFU uses.
`efficiency` is the median over rounds (and configs) of B/A images/s over the rendering phase; for a compiled
config, of B/A steady images/s (the side that compiles second finds inductor's cache warm).

    .venv/bin/python bench/efficiency.py                       # CPU: tiny model 128x128, 4 steps, batch 4
    .venv/bin/python bench/efficiency.py --device cpu --quick  # one round, few images: a dry run
    python bench/efficiency.py --device cuda                   # SD1.5 architecture 512x512, 30 steps,
                                                               # batch 1/4/8/16, then batch 8 compiled
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Dense bf16 tensor-core peak of an H100 SXM (H200: the same chip); --peak-tflops for other cards.
H100_BF16_PEAK_TFLOPS = 989.0


@dataclass(frozen=True)
class Config:
    device: str
    model: str  # what sdbatch is given (tiny:sd15 or a folder)
    model_dir: str  # the same model as a folder, for the bare loop
    images: int
    batch: int
    steps: int
    width: int
    height: int
    compile: bool = False

    def label(self) -> str:
        return f"batch {self.batch}{' compile' if self.compile else ''}"


# ------------------------------------------------------------------------------------------------ children

def child_a(config: Config, out: str) -> dict:
    import torch
    from sdref import bare_loop, bench_rows

    cuda = config.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    return bare_loop(config.model_dir, bench_rows(config.images), config.batch, config.steps, config.width,
                     config.height, out, config.device, dtype, channels_last=cuda, compile=config.compile)


def child_b(config: Config, out: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.console import Console
    from sdref import bench_rows

    from sdbatch import read_results
    from sdbatch.cli.progress import RunProgress
    from sdbatch.run.driver import SubmitRequest, execute, prepare
    from sdbatch.spec import load_spec

    manifest = Path(out).with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(bench_rows(config.images)), manifest)
    spec = load_spec(overrides={
        "defaults.model": config.model, "defaults.steps": config.steps, "defaults.width": config.width,
        "defaults.height": config.height, "defaults.guidance_scale": 7.5, "run.batch_size": config.batch,
        "run.actors": 1, "run.device": config.device, "render.compile": config.compile})
    with prepare(SubmitRequest(str(manifest), out, spec)) as prepared:  # its working folder goes afterwards
        summary = execute(prepared, lambda total, done: RunProgress(Console(stderr=True, quiet=True), total, done))
    success = json.loads((Path(out) / "_SUCCESS.json").read_text())
    results = read_results(out).sort_by("id")  # bench ids sort in manifest order, the order rows render in
    shares = results.column("render_seconds").to_pylist()  # each row's share of its pipeline call
    calls = [sum(shares[i:i + config.batch]) for i in range(0, len(shares), config.batch)]
    return {"render_seconds": success["last_run"]["render_seconds"], "images": success["rows_ok"],
            "images_per_second": success["last_run"]["images_per_second"], "call_seconds": calls,
            "exit_code": summary.exit_code}


# ------------------------------------------------------------------------------------------------ parent

def run_side(side: str, config: Config, work: Path, timeout: float) -> dict:
    out = work / f"{side}-{time.time_ns()}"
    launched = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", side, "--config", json.dumps(asdict(config)),
                           "--out", str(out)], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - launched
    if proc.returncode != 0:
        raise RuntimeError(f"side {side} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    pngs = list(out.rglob("*.png"))
    if len(pngs) != config.images:
        raise RuntimeError(f"side {side} wrote {len(pngs)} PNGs, expected {config.images}")
    first = min(p.stat().st_mtime for p in pngs)
    later = result["call_seconds"][1:]  # without the first call: warm-up, and compiling when compiled
    steady = (config.images - config.batch) / sum(later) if later else float("nan")
    return {"side": side, "images_per_second": result["images"] / result["render_seconds"],
            "steady_images_per_second": steady, "render_seconds": result["render_seconds"],
            "peak_gib": result.get("peak_gib", float("nan")),  # A on CUDA: calibrates fastpath.auto_batch_size
            "wall_seconds": wall, "first_image_seconds": first - launched}


def configs(args, model: str, model_dir: str) -> list[Config]:
    if args.device == "cpu":
        # 32 rows: ~22 s of rendering, so the shard's set-up and commit are small next to it.
        images = 8 if args.quick else args.images or 32
        plain = Config("cpu", model, model_dir, images, args.batch or 4, args.steps or 4, args.size or 128,
                       args.size or 128)
        compiled = Config(**{**asdict(plain), "compile": True})  # ~40 s of compiling per side on 2 cores
        return {"off": [plain], "also": [plain], "only": [compiled]}[args.compile]
    size, steps = args.size or 512, args.steps or 30
    batches = [args.batch] if args.batch else [1, 4, 8, 16]
    # ~8-15 s of rendering per run on an H100: long against a batch, short against the process start.
    plain = [Config("cuda", model, model_dir, args.images or max(8, 4 * b), b, steps, size, size) for b in batches]
    compiled = [Config("cuda", model, model_dir, args.images or 32, args.batch or 8, steps, size, size, compile=True)]
    return {"off": plain, "also": plain + compiled, "only": compiled}[args.compile]


def prepare_model(args) -> tuple[str, str]:
    if args.model:
        return args.model, args.model
    if args.device == "cpu":
        from sdbatch.render.models.sources import resolve_source

        return "tiny:sd15", str(resolve_source("tiny:sd15").path)
    from sdref import write_sd15_random

    folder = write_sd15_random(Path(args.work) / "sd15-random", device="cuda")
    return str(folder), str(folder)


def measure(args, plan: list[Config], work: Path) -> list[dict]:
    """Rounds of A and B per config, alternating which goes first; stops early when the budget is spent."""
    deadline = time.monotonic() + args.budget_s if args.budget_s else float("inf")
    rows = []
    for round_ in range(args.rounds):
        for config in plan:
            if time.monotonic() > deadline:
                print(f"budget spent: skipped round {round_ + 1} of {config.label()}", flush=True)
                continue
            pair = {}
            for side in ("AB" if round_ % 2 == 0 else "BA"):
                pair[side] = run_side(side, config, work, args.timeout)
                r = pair[side]
                print(f"round {round_ + 1} {config.label():16s} {side}: {r['images_per_second']:.3f} img/s "
                      f"rendering, wall {r['wall_seconds']:.1f} s, first image {r['first_image_seconds']:.1f} s",
                      flush=True)
            # Compiled: the side that compiles second reuses inductor's on-disk cache, so its first call is
            # cheaper; compare the calls after the first, which neither side compiles in.
            key = "steady_images_per_second" if config.compile else "images_per_second"
            rows.append({"round": round_ + 1, "config": asdict(config), "A": pair["A"], "B": pair["B"],
                         "ratio": pair["B"][key] / pair["A"][key], "ratio_of": key})
    return rows


def report(args, rows: list[dict]) -> float:
    peak = args.peak_tflops * 1e12
    by_config: dict[str, list[dict]] = {}
    for row in rows:
        by_config.setdefault(Config(**row["config"]).label(), []).append(row)
    print(f"\n{'config':16s} {'rounds':>6s} {'A img/s':>9s} {'B img/s':>9s} {'B/A':>6s} {'A wall':>7s} {'B wall':>7s} "
          f"{'A first':>8s} {'B first':>8s} {'A steady':>9s} {'B steady':>9s}"
          + ("  MFU A / B (steady)  A peak GiB" if args.device == "cuda" else ""))
    for label, group in by_config.items():
        def med(side: str, key: str, group=group) -> float:
            return statistics.median(r[side][key] for r in group)

        line = (f"{label:16s} {len(group):6d} {med('A', 'images_per_second'):9.3f} "
                f"{med('B', 'images_per_second'):9.3f} "
                f"{statistics.median(r['ratio'] for r in group):6.3f} {med('A', 'wall_seconds'):7.1f} "
                f"{med('B', 'wall_seconds'):7.1f} {med('A', 'first_image_seconds'):8.1f} "
                f"{med('B', 'first_image_seconds'):8.1f} {med('A', 'steady_images_per_second'):9.3f} "
                f"{med('B', 'steady_images_per_second'):9.3f}")
        if args.device == "cuda":
            from sdref import FLOPS_PER_IMAGE

            scale = FLOPS_PER_IMAGE * (group[0]["config"]["steps"] / 30) / peak
            line += (f"  {med('A', 'steady_images_per_second') * scale:.1%} / "
                     f"{med('B', 'steady_images_per_second') * scale:.1%}  {med('A', 'peak_gib'):.1f}")
        print(line)
    if any(r["config"]["compile"] for r in rows):
        print("compiled configs: B/A is of steady images/s (inductor's cache is warm for the second side)")
    return statistics.median(r["ratio"] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="one round, few images: checks the harness")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 on CPU, 1 on CUDA (1 with --quick)")
    parser.add_argument("--images", type=int, help="rows per run (CPU default 32; CUDA max(8, 4 x batch))")
    parser.add_argument("--batch", type=int, help="one batch size (CPU default 4; CUDA default 1, 4, 8, 16)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--size", type=int, help="width = height (CPU default 128, CUDA 512)")
    parser.add_argument("--model", help="a diffusers folder for both sides (default: tiny:sd15 / SD1.5 random)")
    parser.add_argument("--compile", choices=("off", "also", "only"), default="also",
                        help="CUDA: also (or only) batch 8 with torch.compile of the UNet on both sides; the "
                             "second side to compile reuses inductor's on-disk caches, so compare its wall time "
                             "and first image with care")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_TFLOPS)
    parser.add_argument("--budget-s", type=float, default=0, help="stop starting runs after this long (0: none)")
    parser.add_argument("--timeout", type=float, default=900, help="per run")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--json-out", help="write every measurement here")
    parser.add_argument("--child", choices=("A", "B"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config = Config(**json.loads(args.config))
        result = (child_a if args.child == "A" else child_b)(config, args.out)
        print(json.dumps(result), flush=True)
        os._exit(0)  # pyarrow / Ray threads can hang or abort at interpreter exit; the result is out
    args.rounds = args.rounds or (1 if args.quick or args.device == "cuda" else 5)
    args.work = args.work or tempfile.mkdtemp(prefix="sdbatch-eff-")
    started = time.monotonic()
    model, model_dir = prepare_model(args)
    plan = configs(args, model, model_dir)
    print(f"efficiency: {args.device}, {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
          f"python {platform.python_version()}, {_versions()}; model {model}; "
          f"{plan[0].width}x{plan[0].height}, {plan[0].steps} steps; {args.rounds} round(s)", flush=True)
    rows = measure(args, plan, Path(args.work))
    efficiency = report(args, rows)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1))
    print(f"total {time.monotonic() - started:.0f} s")
    print(f"efficiency: {efficiency:.2f}")
    return 0


def _versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("torch", "diffusers", "transformers", "ray"))


if __name__ == "__main__":
    sys.exit(main())
