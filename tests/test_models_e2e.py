"""Two model families in one manifest on a real local Ray: both render, with their own LoRAs, and models load rarely."""

import json
import random
from pathlib import Path

import pytest

import sdbatch
from sdbatch.storage import open_store
from tests.util import assert_exactly_once, run_cli, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(Path(__file__).resolve().parents[1] / "jobs" / "demo.toml")
PER_VARIANT = 6


def test_mixed_sd15_and_sdxl_manifest_renders_both_with_few_model_loads(tmp_path):
    from sdbatch.render.loading import resolve_model_path
    from sdbatch.render.tiny_variants import write_tiny_lora

    resolve_model_path("tiny:sdxl")  # built once up front, as tiny_cache does for tiny:sd15
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
