"""Efficiency: the same rows rendered by a bare diffusers loop (A) and by sdbatch end to end (B), side by side.

A: one process loads the pipeline of the class the model folder names (model_index.json), calls it per batch
with one CPU generator per row and saves PNGs with PIL. B: sdbatch's driver (prepare + execute, as
`sdbatch submit` runs them) on a private local Ray with one actor given the whole machine, writing to a local
output folder. Both sides get the same rows, steps, size, batch, guidance_scale (3.5 for FLUX, sdbatch's
default there; 7.5 for the others) and, for SD3 and FLUX, T5 length (the family's default, 256 and 512), all
explicit. Each side runs in a fresh process; A and B alternate because shared machines drift. The rows cycle six
prompts with a seed each, as datasets repeat prompts: sdbatch encodes each prompt once per actor, the bare loop on
every call; --distinct-prompts gives every row its own prompt, to compare without that.

--method phase (default): several rounds (AB, BA, ...). Reported per run: images/s over the rendering phase
(A: first batch to last PNG; B: `render_seconds` of _SUCCESS.json's last_run), wall time from process launch
(B: Ray start, actor, model load included), time to first image (launch to the first PNG's mtime), and
"steady" images/s: pipeline calls after the first (no warm-up, no compiling), which MFU uses. `efficiency` is
the median over rounds (and configs) of B/A images/s over the rendering phase; for a compiled config, of B/A
steady images/s (the side that compiles second finds inductor's cache warm).

--method whole: each side's whole process (launch to exit, timed by this parent) at two row counts N1 < N2,
R repeats, sides and sizes alternated (A1 B1 B2 A2, B1 A1 A2 B2, ...). T(N) is the minimum over repeats;
marginal seconds per image = (T(N2) - T(N1)) / (N2 - N1), which cancels start-up (imports, Ray, model load,
exit). `efficiency` is A's marginal over B's: sdbatch's throughput relative to the bare loop. Defaults: 64x64,
6 steps, batch 4, 200 and 400 rows, 3 repeats.

    .venv/bin/python bench/efficiency.py                       # CPU: tiny SD1.5 128x128, 4 steps, batch 4
    .venv/bin/python bench/efficiency.py --family flux         # the same on the tiny FLUX.1 model
    .venv/bin/python bench/efficiency.py --device cpu --quick  # one round, few images: a dry run
    .venv/bin/python bench/efficiency.py --method whole --family flux   # whole processes, 200 and 400 rows
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
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Dense bf16 tensor-core peak of an H100 SXM (H200: the same chip); --peak-tflops for other cards.
H100_BF16_PEAK_TFLOPS = 989.0
FAMILIES = ("sd15", "sdxl", "sd3", "flux")  # tiny:<name>
CFG_GUIDANCE = 7.5  # classifier-free guidance for the families whose sdbatch default is the job's


@dataclass(frozen=True)
class Config:
    device: str
    model: str  # what sdbatch is given (tiny:<family> or a folder)
    model_dir: str  # the same model as a folder, for the bare loop
    images: int
    batch: int
    steps: int
    width: int
    height: int
    compile: bool = False
    guidance_scale: float = CFG_GUIDANCE
    max_sequence_length: int | None = None  # T5 tokens (SD3, FLUX); None: the family has no T5
    negative: bool = True  # whether the call guides with the (empty) negative prompt; FLUX: no (no true CFG)
    distinct_prompts: bool = False  # every row its own prompt (sdref.bench_rows), else six prompts in turn
    step_cache: str = "none"  # [render] step_cache on both sides: sdbatch's setting, diffusers' enable_cache for A

    def label(self) -> str:
        return f"batch {self.batch}{' compile' if self.compile else ''}"


def family_settings(family: str) -> dict:
    """What both sides pass for a family's rows, explicitly: sdbatch's own defaults where it has them."""
    from sdbatch.family import FAMILIES as DESCRIPTORS

    descriptor = next(d for d in DESCRIPTORS if d.tiny == family)
    # FLUX.1-dev's guidance is distilled (an input of the transformer); sdbatch encodes a negative prompt for it
    # only with true CFG (true_cfg_scale > 1), and so does diffusers.
    return {"guidance_scale": descriptor.guidance_scale or CFG_GUIDANCE,
            "max_sequence_length": descriptor.max_sequence_length, "negative": not descriptor.distilled_guidance}


# ------------------------------------------------------------------------------------------------ children

def bare_loop(config: Config, rows: list[dict], out: str | Path) -> dict:
    """What one would write without sdbatch: the pipeline class the folder names, loaded once; one CPU generator
    per row; PNGs saved with PIL."""
    import inspect

    import diffusers
    import torch

    cuda = config.device == "cuda"
    folder = Path(config.model_dir)
    cls = getattr(diffusers, json.loads((folder / "model_index.json").read_text())["_class_name"])
    takes = inspect.signature(cls.__init__).parameters
    options = {k: v for k, v in {"safety_checker": None, "requires_safety_checker": False,
                                 "add_watermarker": False}.items() if k in takes}
    pipe = cls.from_pretrained(str(folder), dtype=torch.bfloat16 if cuda else torch.float32, **options)
    pipe = pipe.to(config.device)
    pipe.set_progress_bar_config(disable=True)
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    if cuda and hasattr(pipe, "unet"):  # convolutions: what sdbatch does for UNet families on CUDA
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if config.step_cache != "none":  # what a user of diffusers writes; sdbatch's [render] step_cache does the same
        from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

        from sdbatch.settings import step_cache_parts

        name, value = step_cache_parts(config.step_cache)
        denoiser.enable_cache(FirstBlockCacheConfig(threshold=value) if name == "first_block" else
                              TaylorSeerCacheConfig(cache_interval=value, taylor_factors_dtype=denoiser.dtype))
    if config.compile:
        denoiser.compile()
    extra = {} if config.max_sequence_length is None else {"max_sequence_length": config.max_sequence_length}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started, calls = time.perf_counter(), []
    for start in range(0, len(rows), config.batch):
        chunk = rows[start:start + config.batch]
        generators = [torch.Generator("cpu").manual_seed(int(r["seed"])) for r in chunk]
        if config.negative:
            extra["negative_prompt"] = [""] * len(chunk)
        call_started = time.perf_counter()
        with torch.inference_mode():
            images = pipe(prompt=[r["prompt"] for r in chunk], num_inference_steps=config.steps,
                          guidance_scale=config.guidance_scale, width=config.width, height=config.height,
                          generator=generators, **extra).images
        calls.append(time.perf_counter() - call_started)
        for row, image in zip(chunk, images):
            image.save(out / f"{row['id']}.png")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {"render_seconds": time.perf_counter() - started, "images": len(rows), "call_seconds": calls,
            "peak_gib": peak}


def child_a(config: Config, out: str) -> dict:
    from sdref import bench_rows

    return bare_loop(config, bench_rows(config.images, distinct=config.distinct_prompts), out)


def child_b(config: Config, out: str) -> dict:
    """What `sdbatch submit` does, as a library call; nothing else (the parent reads the results)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.console import Console
    from sdref import bench_rows

    from sdbatch.cli.progress import RunProgress
    from sdbatch.run.driver import SubmitRequest, execute, prepare
    from sdbatch.spec import load_spec

    manifest = Path(out).with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(bench_rows(config.images, distinct=config.distinct_prompts)), manifest)
    overrides = {
        "defaults.model": config.model, "defaults.steps": config.steps, "defaults.width": config.width,
        "defaults.height": config.height, "defaults.guidance_scale": config.guidance_scale,
        "run.batch_size": config.batch, "run.actors": 1, "run.device": config.device,
        "render.compile": config.compile, "render.step_cache": config.step_cache}
    if config.max_sequence_length is not None:
        overrides["defaults.max_sequence_length"] = config.max_sequence_length
    with prepare(SubmitRequest(str(manifest), out, load_spec(overrides=overrides))) as prepared:
        summary = execute(prepared, lambda total, done: RunProgress(Console(stderr=True, quiet=True), total, done))
    success = json.loads((Path(out) / "_SUCCESS.json").read_text())
    return {"render_seconds": success["last_run"]["render_seconds"], "images": success["rows_ok"],
            "exit_code": summary.exit_code}


# ------------------------------------------------------------------------------------------------ parent

MARK = "SDBATCH_BENCH_RUN"  # in a run's environment, and so in its Ray daemons' and workers'


def cpu_ticks(pid: str) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class Others(threading.Thread):
    """CPU seconds of the processes outside a run (this one and those with the run's mark in their environment
    left out), sampled twice a second: what other work took from the run. A process that ends between samples
    loses its last half second."""

    def __init__(self, mark: str):
        super().__init__(daemon=True)
        self.mark, self.stop, self.ticks = f"{MARK}={mark}".encode(), threading.Event(), 0
        self.seen: dict[str, int | None] = {}  # pid: last ticks, None for a process of the run (or this one)
        self.sample(count=False)

    def sample(self, count: bool = True) -> None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if self.seen.get(pid, 0) is None:
                    continue
                # Looked at each time: a child's environment is its parent's until it execs.
                if int(pid) == os.getpid() or self.mark in Path(f"/proc/{pid}/environ").read_bytes():
                    self.seen[pid] = None
                    continue
                ticks = cpu_ticks(pid)
            except OSError:  # gone, or not ours to read
                continue
            self.ticks += ticks - self.seen.get(pid, 0) if count else 0  # born since the last sample: all of it
            self.seen[pid] = ticks

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()

    def seconds(self) -> float:
        self.stop.set()
        if self.ident is not None:  # started: sampling while the run goes, else only at both ends
            self.join()
        self.sample()
        return self.ticks / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float, cores: float = 0.25, span: float = 5.0) -> float:
    """Wait (at most `limit` s) until other processes have used under `cores` CPUs for `span` s in a row: other
    work on a 2-core box slows a 2-thread render of a tiny model many times over (each operator's threads wait
    for each other). Returns the seconds waited."""
    started = time.monotonic()
    quiet_since = started
    while time.monotonic() - started < limit:
        others = Others("none")
        time.sleep(1.0)
        if others.seconds() > cores:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= span:
            break
    return time.monotonic() - started


def run_side(side: str, config: Config, work: Path, timeout: float, quiet_wait: float = 0) -> dict:
    """One side's fresh process; `wall_seconds` is launch to exit, timed here. `others_cores`: the CPUs the rest of
    the machine used meanwhile."""
    waited = wait_quiet(quiet_wait) if quiet_wait else 0.0
    out = work / f"{side}-{time.time_ns()}"
    load_before, others = os.getloadavg()[0], Others(out.name)
    others.start()
    launched = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", side, "--config", json.dumps(asdict(config)),
                           "--out", str(out)], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", MARK: out.name})
    wall = time.time() - launched
    load_after, others_cores = os.getloadavg()[0], others.seconds() / wall
    if proc.returncode != 0:
        raise RuntimeError(f"side {side} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    pngs = list(out.rglob("*.png"))
    if len(pngs) != config.images or result["images"] != config.images:
        raise RuntimeError(f"side {side} wrote {len(pngs)} PNGs, expected {config.images}")
    return {**result, "side": side, "out": str(out), "wall_seconds": wall,
            "first_image_seconds": min(p.stat().st_mtime for p in pngs) - launched,
            "load_before": load_before, "load_after": load_after, "others_cores": others_cores,
            "waited_seconds": waited}


def call_seconds(run: dict, batch: int) -> list[float]:
    """Each pipeline call's seconds: A times them; B records each row's share of its call in the results."""
    if run["side"] == "A":
        return run["call_seconds"]
    from sdbatch import read_results

    results = read_results(run["out"]).sort_by("id")  # bench ids sort in manifest order, the order rows render in
    shares = results.column("render_seconds").to_pylist()
    return [sum(shares[i:i + batch]) for i in range(0, len(shares), batch)]


def phase_figures(run: dict, config: Config) -> dict:
    later = call_seconds(run, config.batch)[1:]  # without the first call: warm-up, and compiling when compiled
    steady = (config.images - config.batch) / sum(later) if later else float("nan")
    return {"side": run["side"], "images_per_second": run["images"] / run["render_seconds"],
            "steady_images_per_second": steady, "render_seconds": run["render_seconds"],
            "peak_gib": run.get("peak_gib", float("nan")),  # A on CUDA: calibrates fastpath.auto_batch_size
            "wall_seconds": run["wall_seconds"], "first_image_seconds": run["first_image_seconds"],
            "load_before": run["load_before"], "load_after": run["load_after"], "others_cores": run["others_cores"]}


def configs(args, model: str, model_dir: str) -> list[Config]:
    passed = family_settings(args.family)
    if args.method == "whole":
        size = args.size or 64
        return [Config(args.device, model, model_dir, 0, args.batch or 4, args.steps or 6, size, size, **passed)]
    if args.device == "cpu":
        # 32 rows: ~22 s of rendering, so the shard's set-up and commit are small next to it.
        images = 8 if args.quick else args.images or 32
        plain = Config("cpu", model, model_dir, images, args.batch or 4, args.steps or 4, args.size or 128,
                       args.size or 128, **passed)
        compiled = Config(**{**asdict(plain), "compile": True})  # ~40 s of compiling per side on 2 cores
        return {"off": [plain], "also": [plain], "only": [compiled]}[args.compile]
    size, steps = args.size or 512, args.steps or 30
    batches = [args.batch] if args.batch else [1, 4, 8, 16]
    # ~8-15 s of rendering per run on an H100: long against a batch, short against the process start.
    plain = [Config("cuda", model, model_dir, args.images or max(8, 4 * b), b, steps, size, size, **passed)
             for b in batches]
    compiled = [Config("cuda", model, model_dir, args.images or 32, args.batch or 8, steps, size, size,
                       compile=True, **passed)]
    return {"off": plain, "also": plain + compiled, "only": compiled}[args.compile]


def prepare_model(args) -> tuple[str, str]:
    if args.model:
        return args.model, args.model
    if args.device == "cpu" or args.family != "sd15":
        from sdbatch.render.models.sources import resolve_source

        return f"tiny:{args.family}", str(resolve_source(f"tiny:{args.family}").path)
    from sdref import write_sd15_random

    folder = write_sd15_random(Path(args.work) / "sd15-random", device="cuda")
    return str(folder), str(folder)


# ------------------------------------------------------------------------------------ method: rendering phase

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
                pair[side] = r = phase_figures(run_side(side, config, work, args.timeout, args.quiet_wait), config)
                print(f"round {round_ + 1} {config.label():16s} {side}: {r['images_per_second']:.3f} img/s "
                      f"rendering, wall {r['wall_seconds']:.1f} s, first image {r['first_image_seconds']:.1f} s, "
                      f"others {r['others_cores']:.2f} cores, load {r['load_before']:.2f}-{r['load_after']:.2f}",
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


# ------------------------------------------------------------------------------------ method: whole process

def measure_whole(args, base: Config, work: Path) -> list[dict]:
    """Whole processes at N1 and N2 rows, repeated; the side that goes first alternates by repeat and size, so
    the runs go A1 B1 B2 A2, B1 A1 A2 B2, ..."""
    runs = []
    for repeat in range(args.repeats):
        for at, rows in enumerate(args.rows):
            config = Config(**{**asdict(base), "images": rows})
            for side in ("AB" if (repeat + at) % 2 == 0 else "BA"):
                run = run_side(side, config, work, args.timeout, args.quiet_wait)
                runs.append({"repeat": repeat + 1, "rows": rows, **{key: run[key] for key in (
                    "side", "wall_seconds", "render_seconds", "others_cores", "load_before",
                    "load_after", "waited_seconds")}})
                print(f"repeat {repeat + 1} {rows:5d} rows {side}: wall {run['wall_seconds']:7.2f} s (rendering "
                      f"{run['render_seconds']:.2f} s), others "
                      f"{run['others_cores']:.2f} cores, load {run['load_before']:.2f}-{run['load_after']:.2f}, "
                      f"waited {run['waited_seconds']:.0f} s for quiet", flush=True)
    return runs


def report_whole(args, runs: list[dict]) -> dict:
    n1, n2 = args.rows
    best = {(side, n): min((r for r in runs if r["side"] == side and r["rows"] == n), key=lambda r: r["wall_seconds"])
            for side in "AB" for n in (n1, n2)}

    def marginal(key: str) -> dict[str, float]:
        return {side: (best[side, n2][key] - best[side, n1][key]) / (n2 - n1) for side in "AB"}

    # The rendering phase of the same runs, for where the wall-clock marginal goes (start-up cancels in both).
    wall, render = marginal("wall_seconds"), marginal("render_seconds")
    print(f"\nwhole process, min over {args.repeats} repeat(s); every run's wall in brackets, in run order")
    print(f"{'side':4s} {f'T({n1}) s':>10s} {f'T({n2}) s':>10s} {'marginal s/img':>15s} {'rendering s/img':>16s} "
          f"{'others (cores)':>15s}")
    for side in "AB":
        walls = [", ".join(f"{r['wall_seconds']:.2f}" for r in runs if r["side"] == side and r["rows"] == n)
                 for n in (n1, n2)]
        print(f"{side:4s} {best[side, n1]['wall_seconds']:10.2f} {best[side, n2]['wall_seconds']:10.2f} "
              f"{wall[side]:15.4f} {render[side]:16.4f} {best[side, n1]['others_cores']:7.2f} "
              f"{best[side, n2]['others_cores']:7.2f}   [{walls[0]}] [{walls[1]}]")
    # Each repeat's own pair of sizes: the spread that taking the minima hides.
    per_repeat = []
    for repeat in sorted({r["repeat"] for r in runs}):
        t = {(r["side"], r["rows"]): r["wall_seconds"] for r in runs if r["repeat"] == repeat}
        if len(t) == 4:
            a, b = ((t[side, n2] - t[side, n1]) / (n2 - n1) for side in "AB")
            per_repeat.append({"repeat": repeat, "A": a, "B": b, "ratio": a / b})
    print("per repeat, marginal s/img A / B (A/B): " + "; ".join(
        f"{x['A']:.4f} / {x['B']:.4f} ({x['ratio']:.3f})" for x in per_repeat))
    ratio = wall["A"] / wall["B"]
    print(f"A/B marginal s/image: {ratio:.3f} (sdbatch's throughput relative to the bare loop; goal >= 0.95)")
    return {"best": {f"{side}{n}": r for (side, n), r in best.items()}, "marginal": wall, "render_marginal": render,
            "per_repeat": per_repeat, "ratio": ratio}


# ------------------------------------------------------------------------------------------------ main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--method", choices=("phase", "whole"), default="phase",
                        help="phase: images/s over the rendering phase, rounds of A and B; whole: whole processes "
                             "at two row counts, marginal seconds per image")
    parser.add_argument("--family", choices=FAMILIES, default="sd15",
                        help="the tiny model of this family (CUDA, sd15: the SD1.5 architecture, random weights)")
    parser.add_argument("--quick", action="store_true", help="one round, few images: checks the harness")
    parser.add_argument("--rounds", type=int, default=None, help="phase: default 5 on CPU, 1 on CUDA (1 with --quick)")
    parser.add_argument("--images", type=int, help="phase: rows per run (CPU default 32; CUDA max(8, 4 x batch))")
    parser.add_argument("--rows", type=int, nargs=2, default=(200, 400), metavar=("N1", "N2"),
                        help="whole: the two row counts (default 200 400)")
    parser.add_argument("--repeats", type=int, default=3, help="whole: runs per side and row count (default 3)")
    parser.add_argument("--quiet-wait", type=float, default=None, metavar="S",
                        help="before each run wait up to S s until the rest of the machine uses under 0.25 CPUs "
                             "for 5 s (default: whole 300, phase 0)")
    parser.add_argument("--distinct-prompts", action="store_true",
                        help="every row its own prompt (default: six prompts in turn, many seeds each, which "
                             "sdbatch encodes once each and the bare loop every time)")
    parser.add_argument("--step-cache", default="none", metavar="SETTING",
                        help="[render] step_cache on both sides (first_block:<t>, taylorseer:<n>; FLUX.1)")
    parser.add_argument("--batch", type=int, help="one batch size (CPU and whole default 4; CUDA default 1, 4, 8, 16)")
    parser.add_argument("--steps", type=int, help="default: phase 4 on CPU, 30 on CUDA; whole 6")
    parser.add_argument("--size", type=int, help="width = height (default: phase 128 on CPU, 512 on CUDA; whole 64)")
    parser.add_argument("--model", help="a diffusers folder for both sides, of --family (default: its tiny model; "
                                        "on CUDA for sd15 the SD1.5 architecture, random weights)")
    parser.add_argument("--compile", choices=("off", "also", "only"), default="also",
                        help="phase, CUDA: also (or only) batch 8 with torch.compile of the denoiser on both sides; "
                             "the second side to compile reuses inductor's on-disk caches, so compare its wall "
                             "time and first image with care")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_TFLOPS)
    parser.add_argument("--budget-s", type=float, default=0, help="phase: stop starting runs after this long (0: none)")
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
    if args.method == "whole" and not 0 < args.rows[0] < args.rows[1]:
        parser.error("--rows N1 N2 needs 0 < N1 < N2")
    if args.quiet_wait is None:
        args.quiet_wait = 300.0 if args.method == "whole" else 0.0
    args.rounds = args.rounds or (1 if args.quick or args.device == "cuda" else 5)
    args.work = args.work or tempfile.mkdtemp(prefix="sdbatch-eff-")
    started, load_start = time.monotonic(), os.getloadavg()
    model, model_dir = prepare_model(args)
    plan = [replace(c, distinct_prompts=args.distinct_prompts, step_cache=args.step_cache)
            for c in configs(args, model, model_dir)]
    c = plan[0]
    runs = (f"rows {args.rows[0]} and {args.rows[1]}, {args.repeats} repeat(s)" if args.method == "whole"
            else f"{args.rounds} round(s)")
    print(f"efficiency ({args.method}): {args.device}, {_conditions()}; model {model}; {c.width}x{c.height}, "
          f"{c.steps} steps, batch {c.batch}, guidance {c.guidance_scale}"
          f"{f', T5 length {c.max_sequence_length}' if c.max_sequence_length else ''}; "
          f"{'distinct prompts' if c.distinct_prompts else 'six prompts in turn'}; step cache {c.step_cache}; "
          f"{runs}; "
          f"load average {_load(load_start)}", flush=True)
    if args.method == "whole":
        runs = measure_whole(args, c, Path(args.work))
        figures = report_whole(args, runs)
        efficiency = figures["ratio"]
    else:
        runs = measure(args, plan, Path(args.work))
        figures = {}
        efficiency = report(args, runs)
    load_end = os.getloadavg()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "runs": runs, "figures": figures,
                                                   "load_start": load_start, "load_end": load_end}, indent=1))
    print(f"total {time.monotonic() - started:.0f} s; load average at start {_load(load_start)}, "
          f"at end {_load(load_end)}")
    print(f"efficiency: {efficiency:.3f}" if args.method == "whole" else f"efficiency: {efficiency:.2f}")
    return 0


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def _conditions() -> str:
    from importlib.metadata import version

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").is_file() else None
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True, check=False).stdout.strip() or "unknown"
    versions = ", ".join(f"{name} {version(name)}" for name in ("torch", "diffusers", "transformers", "ray"))
    return (f"{model or platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
            f"python {platform.python_version()}, {versions}; git {git}")


if __name__ == "__main__":
    sys.exit(main())
