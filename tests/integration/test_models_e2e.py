"""Two model families in one manifest on a real local Ray: both render, with their own LoRAs, and models load rarely."""

import json
import random

import pytest

import sdbatch
from sdbatch.store import open_store
from tests.support.util import REPO, assert_exactly_once, run_cli, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(REPO / "jobs" / "demo.toml")
PER_VARIANT = 6


def test_mixed_sd15_and_sdxl_manifest_renders_both_with_few_model_loads(tmp_path):
    from sdbatch.render.models.sources import resolve_source
    from tests.support.tiny_variants import write_tiny_lora

    resolve_source("tiny:sdxl")  # built once up front, as tiny_cache does for tiny:sd15
    loras = {family: str(write_tiny_lora(tmp_path / f"{family}.safetensors", seed=2, family=family))
             for family in ("sd15", "sdxl")}
    rows = []
    for family in ("sd15", "sdxl"):
        for lora in (None, loras[family]):
            rows += [{"prompt": f"a {family} picture {k}", "model": f"tiny:{family}",
                      "loras": [{"path": lora, "weight": 0.8}] if lora else []} for k in range(PER_VARIANT)]
    random.Random(0).shuffle(rows)  # the plan groups them; the order of the manifest must not matter
    rows = [{"id": f"r{n:03d}", **row} for n, row in enumerate(rows)]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    result = run_cli("submit", str(manifest), "--output", str(out), "--job", JOB, "--steps", "1", "--width", "32",
                     "--height", "32", "--shard-size", "3", "--actors", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_exactly_once(open_store(str(out)), [row["id"] for row in rows])
    success = json.loads((out / "_SUCCESS.json").read_text())
    assert success["last_run"]["model_loads"] <= 2 + 2, success["loads_per_actor"]  # models + actors
    assert success["lora_loads"] <= 2 + 2, success["loads_per_actor"]
    by_id = {row["id"]: row for row in rows}
    for row in sdbatch.read_results(str(out)).to_pylist():
        assert row["model"] == by_id[row["id"]]["model"]
        assert [u["path"] for u in row["loras_used"]] == [x["path"] for x in by_id[row["id"]]["loras"]]


def test_a_second_model_that_cannot_load_gives_up_only_its_shards_and_a_rerun_renders_them(tmp_path):
    """An overnight run with a broken second checkpoint: the first model's rows all render, the broken
    model's shards are reported not done (exit 1, no _SUCCESS.json), and once the file is fixed the same
    command renders just those."""
    import shutil

    from sdbatch.render.models.sources import resolve_source

    good = resolve_source("tiny:sd15").path
    broken = tmp_path / "broken-model"
    shutil.copytree(good, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00" * 64)  # passes the driver's checks (a diffusers folder), fails to load
    rows = [{"id": f"g{n:02d}", "prompt": f"good {n}", "model": "tiny:sd15"} for n in range(6)]
    rows += [{"id": f"b{n:02d}", "prompt": f"broken {n}", "model": str(broken)} for n in range(6)]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    args = ["submit", str(manifest), "--output", str(out), "--job", JOB, "--steps", "1", "--width", "32",
            "--height", "32", "--shard-size", "2", "--actors", "2"]
    first = run_cli(*args)
    said = " ".join((first.stdout + first.stderr).split())
    assert first.returncode == 1, said
    assert "3 shards (" in said and "failed to load" in said and str(broken) in said, said
    assert "cannot be loaded" in said and said.count("cannot be loaded") == 1, said  # once, not per shard
    assert not (out / "_SUCCESS.json").exists()
    done = sdbatch.read_results(str(out))
    assert sorted(done.column("id").to_pylist()) == [r["id"] for r in rows[:6]]
    assert set(done.column("status").to_pylist()) == {"ok"}

    shutil.copy(good / "unet" / "diffusion_pytorch_model.safetensors", weights)
    again = run_cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 shards already done" in " ".join(again.stdout.split())
    assert_exactly_once(open_store(str(out)), [row["id"] for row in rows])
