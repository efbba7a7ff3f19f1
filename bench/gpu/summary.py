"""The GPU run's figures in one table and one JSON: bench/gpu/run.sh calls this after every step, so a call cut
short still brings back what was measured. Stdlib only (no torch import: it runs in a second).

Reads WORK/steps.tsv (name, exit code, start, end, status: one line per step), WORK/json/*.json (each step's
--json-out: model-<family>.json from bench/gpu/models.py, the efficiency pairs' and the other benchmarks'), and
WORK/smi.csv (epoch seconds, GPU memory used in MiB, utilisation %, power W: nvidia-smi every half second).
Writes OUT/results.json (all of it) and OUT/summary.txt (the table).

MFU is computed from FLOPs counted per image (bench/gpu/models.py: steps x one denoiser step, both CFG rows, plus
one VAE decode; text encoders left out, as sdbatch encodes each prompt once) and steady images/s (the calls after
the first), against --peak-tflops (an H100 SXM's dense bf16 989).

    python bench/gpu/summary.py --work /tmp/sdbatch-bench --out $OUT
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

H100_BF16_PEAK_TFLOPS = 989.0


def read_steps(work: Path) -> list[dict]:
    steps = []
    path = work / "steps.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            name, rc, start, end, status = (line.split("\t") + [""] * 5)[:5]
            steps.append({"name": name, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                          "start": float(start or 0), "end": float(end or 0), "status": status})
    return steps


def read_smi(work: Path) -> list[tuple[float, float, float, float]]:
    samples = []
    path = work / "smi.csv"
    if path.is_file():
        for line in path.read_text().splitlines():
            fields = [x.strip() for x in line.split(",")] + ["", "", "", ""]
            try:
                epoch, mem, util = (float(x) for x in fields[:3])
            except ValueError:  # nvidia-smi did not answer that time
                continue
            try:
                power = float(fields[3])
            except ValueError:  # "[N/A]" on some boards
                power = float("nan")
            samples.append((epoch, mem, util, power))
    return samples


def gpu_during(samples, start: float, end: float) -> dict:
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return {}
    powers = [s[3] for s in inside if s[3] == s[3]]
    return {"gpu_peak_mib": max(s[1] for s in inside), "gpu_util_mean": statistics.mean(s[2] for s in inside),
            "gpu_power_mean_w": statistics.mean(powers) if powers else None, "samples": len(inside)}


def model_flops(models: dict, family: str, size: int, steps: int) -> float | None:
    """FLOPs of one image of `family` at `size` and `steps`, from its models.py figures (None: not counted)."""
    figures = models.get(family)
    if not figures:
        return None
    m = figures["measure"]
    if m["size"] != size:
        return None
    return steps * m["step_flops"] + m["vae_decode_flops"]


def efficiency_rows(data: dict, models: dict, peak: float) -> list[dict]:
    rows = []
    for run in data.get("runs", []):
        config = run.get("config")
        if not config:
            continue
        family = data.get("args", {}).get("family")
        flops = model_flops(models, family, config["width"], config["steps"])
        row = {"label": f"batch {config['batch']}{' compile' if config['compile'] else ''}",
               "images": config["images"], "ratio": run["ratio"], "ratio_of": run["ratio_of"]}
        for side in "AB":
            r = run[side]
            row[side] = {k: r.get(k) for k in ("images_per_second", "steady_images_per_second", "wall_seconds",
                                                "first_image_seconds", "peak_gib")}
            if flops and r.get("steady_images_per_second") == r.get("steady_images_per_second"):  # not NaN
                row[side]["mfu"] = r["steady_images_per_second"] * flops / (peak * 1e12)
        rows.append(row)
    return rows


def si(n: float) -> str:
    """12.3 G, 74.4 T: three digits and a unit prefix."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {prefix}"
    return f"{n:.3g} "


def fmt(value, spec: str = ".3f", none: str = "-") -> str:
    if value is None or value != value:  # None or NaN
        return none
    return format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_TFLOPS)
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    steps, samples = read_steps(work), read_smi(work)
    results: dict = {"steps": steps, "json": {}, "models": {}}
    for path in sorted((work / "json").glob("*.json")):
        try:
            results["json"][path.stem] = json.loads(path.read_text())
        except ValueError as exc:
            results["json"][path.stem] = {"error": f"unreadable: {exc}"}
    for name, data in results["json"].items():
        if name.startswith("model-") and isinstance(data, list):
            for figures in data:
                results["models"][figures["family"]] = figures
    lines = [f"{'step':14s} {'status':8s} {'rc':>3s} {'s':>5s} {'GPU peak GiB':>12s} {'util %':>6s}  figures"]
    for step in steps:
        gpu = gpu_during(samples, step["start"], step["end"])
        step["gpu"] = gpu
        seconds = step["end"] - step["start"] if step["end"] else 0
        head = (f"{step['name']:14s} {step['status']:8s} {fmt(step['rc'], 'd'):>3s} {seconds:5.0f} "
                f"{fmt(gpu.get('gpu_peak_mib', float('nan')) / 1024, '.1f'):>12s} "
                f"{fmt(gpu.get('gpu_util_mean'), '.0f'):>6s}  ")
        data = results["json"].get(step["name"])
        if data is None:
            lines.append(head + ("(no JSON)" if step["status"] != "skipped" else ""))
            continue
        if step["name"].startswith("model-") and isinstance(data, list) and data:
            f = data[0]
            m = f["measure"]
            text = (f"{si(f['params']['denoiser'])} denoiser parameters, {si(f['bytes_total'])}B "
                    f"({si(f['bytes_own'])}B own) on {f['filesystem']}: build {f['build_s']:.0f} s, write "
                    f"{f['write_s']:.0f} s + encoders {f['parts_s']:.0f} s, {fmt(f.get('write_gb_s'), '.2f')} GB/s; "
                    f"{si(m['step_flops'])}FLOP/step/image, {si(m['image_flops'])}FLOP/image "
                    f"at {m['size']} px, {m['steps']} steps")
            if "step_s" in m:
                text += (f"; bare step {m['step_s'] * 1e3:.1f} ms, MFU {m['step_mfu']:.1%}, bare image "
                         f"{m['bare_image_s']:.2f} s, finite {m.get('finite')}")
            lines.append(head + text)
            continue
        if isinstance(data, dict) and "runs" in data and data.get("figures") == {}:
            rows = efficiency_rows(data, results["models"], args.peak_tflops)
            step["efficiency"] = rows
            cache = data.get("args", {}).get("step_cache")
            cache = None if cache == "none" else cache
            for n, row in enumerate(rows):
                a, b = row["A"], row["B"]
                text = (f"{row['label']}{f' cache {cache}' if cache else ''}, {row['images']} images: A "
                        f"{fmt(a['images_per_second'])} B {fmt(b['images_per_second'])} img/s, B/A "
                        f"{fmt(row['ratio'])} ({row['ratio_of'].replace('_images_per_second', '')}); steady A "
                        f"{fmt(a['steady_images_per_second'])} B {fmt(b['steady_images_per_second'])}; MFU A "
                        f"{fmt(a.get('mfu'), '.1%')} B {fmt(b.get('mfu'), '.1%')}; wall A "
                        f"{fmt(a['wall_seconds'], '.0f')} B {fmt(b['wall_seconds'], '.0f')} s; A peak "
                        f"{fmt(a['peak_gib'], '.1f')} GiB")
                lines.append((head if n == 0 else " " * len(head)) + text)
            continue
        if isinstance(data, dict) and "runs" in data:
            lines.append(head + f"efficiency {fmt(data['figures'].get('ratio'))}")
            continue
        lines.append(head + "JSON in results.json")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "summary.txt").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
