"""Five model families in one manifest on a real local Ray: all render, with their own LoRAs, models load rarely, and
a run with a broken model resumes once it is fixed."""

import json
import random
import re

import pytest

import sdbatch
from sdbatch.store import open_store
from tests.support.util import REPO, assert_exactly_once, run_cli, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(REPO / "jobs" / "demo.toml")
PER_VARIANT = 6


FAMILIES = ("sd15", "sdxl", "sd3", "flux", "zimage")


def test_five_families_in_one_manifest_render_exactly_once_with_few_loads_and_a_broken_model_resumes(tmp_path):
    """SD1.5, SDXL, SD3, FLUX and Z-Image rows, with and without a LoRA of their family, shuffled: one run, models and LoRAs
    loaded rarely. The FLUX model is broken at first (an overnight run with a bad checkpoint): the other families'
    rows all render, its shards are reported not done (exit 1, said once), and once the file is fixed the same
    command renders just those."""
    import shutil

    from sdbatch.render.models.sources import resolve_source
    from tests.support.tiny_variants import write_tiny_lora

    good = resolve_source("tiny:flux").path
    flux = tmp_path / "flux-model"
    shutil.copytree(good, flux)
    weights = flux / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00" * 64)  # passes the driver's checks (a FLUX folder), fails to load
    models = {family: f"tiny:{family}" for family in FAMILIES} | {"flux": str(flux)}
    loras = {family: str(write_tiny_lora(tmp_path / f"{family}.safetensors", seed=2, family=family))
             for family in FAMILIES}
    rows = []
    for family in FAMILIES:
        for lora in (None, loras[family]):
            rows += [{"prompt": f"a {family} picture {k}", "model": models[family],
                      "loras": [{"path": lora, "weight": 0.8}] if lora else []} for k in range(PER_VARIANT)]
    random.Random(0).shuffle(rows)  # the plan groups them; the order of the manifest must not matter
    rows = [{"id": f"r{n:03d}", **row} for n, row in enumerate(rows)]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    args = ["submit", str(manifest), "--output", str(out), "--job", JOB, "--steps", "1", "--width", "32",
            "--height", "32", "--shard-size", "3", "--actors", "2"]
    first = run_cli(*args)
    said = " ".join((first.stdout + first.stderr).split())
    assert first.returncode == 1, said
    assert "4 shards (" in said and "failed to load" in said and str(flux) in said, said
    assert said.count("cannot be loaded") == 1, said  # once, not per shard
    assert not (out / "_SUCCESS.json").exists()
    loads = re.search(r"loads\s*│\s*(\d+) model, (\d+) LoRA", first.stdout)
    assert loads and int(loads[1]) <= 4 + 2 and int(loads[2]) <= 4 + 2, first.stdout  # models (LoRAs) + actors
    done = sdbatch.read_results(str(out))
    assert sorted(done.column("id").to_pylist()) == sorted(r["id"] for r in rows if r["model"] != str(flux))
    assert set(done.column("status").to_pylist()) == {"ok"}

    shutil.copy(good / "transformer" / "diffusion_pytorch_model.safetensors", weights)
    again = run_cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "16 shards already done" in " ".join(again.stdout.split())
    assert_exactly_once(open_store(str(out)), [row["id"] for row in rows])
    success = json.loads((out / "_SUCCESS.json").read_text())
    assert success["last_run"]["model_loads"] <= 1 + 2, success["loads_per_actor"]  # the FLUX model + actors
    assert success["last_run"]["lora_loads"] <= 1 + 2, success["loads_per_actor"]
    by_id = {row["id"]: row for row in rows}
    families = {"tiny:sd15": "sd1", "tiny:sdxl": "sdxl", "tiny:sd3": "sd3", "tiny:zimage": "zimage", str(flux): "flux"}
    for row in sdbatch.read_results(str(out)).to_pylist():
        assert row["model"] == by_id[row["id"]]["model"] and row["family"] == families[row["model"]]
        assert [u["path"] for u in row["loras_used"]] == [x["path"] for x in by_id[row["id"]]["loras"]]
