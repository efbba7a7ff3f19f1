"""Per-row LoRAs and ControlNets on a real local Ray: affinity keeps loads low, bad assets fail only their rows."""

import json
import random

import numpy as np
import pytest
from PIL import Image

import sdbatch
from sdbatch.store import open_store
from tests.support.util import REPO, run_cli, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(REPO / "jobs" / "demo.toml")
# 5 shards per variant (as 50 rows in 10-row shards were): enough that, without affinity, both actors meet
# every variant; with 4-row shards (one pipeline call each) at 40% of the rows.
VARIANT_ROWS = 20
SHARD_SIZE = 4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tests.support.tiny_variants import write_tiny_controlnet, write_tiny_lora

    root = tmp_path_factory.mktemp("assets")
    (root / "loras").mkdir()
    for n in range(6):
        write_tiny_lora(root / "loras" / f"style{n}.safetensors", seed=n + 1)
    controlnets = [write_tiny_controlnet(root / f"cn{n}", seed=n + 1) for n in range(2)]
    images = []
    for n in range(3):
        pixels = np.random.default_rng(n).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"edge{n}.png")
        images.append(root / f"edge{n}.png")
    (root / "loras" / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    (root / "not-an-image.png").write_text("nope")
    return {"root": root, "controlnets": controlnets, "images": images}


def _rows(assets) -> list[dict]:
    rows = []
    for n in range(6):
        rows += [{"prompt": f"a cat <lora:style{n}:0.8> number {k}", "controlnet": None, "control_image": None}
                 for k in range(VARIANT_ROWS)]
    for n, cn in enumerate(assets["controlnets"]):
        rows += [{"prompt": f"a dog {k}", "controlnet": str(cn), "control_image": str(assets["images"][k % 3])}
                 for k in range(VARIANT_ROWS)]
    random.Random(0).shuffle(rows)
    return [{"id": f"r{n:03d}", **row} for n, row in enumerate(rows)]


def _submit(manifest, out, assets, *extra, cwd=None):
    return run_cli("submit", str(manifest), "--output", str(out), "--job", JOB, "--lora-dir",
                   str(assets["root"] / "loras"), "--steps", "1", "--width", "32", "--height", "32",
                   "--shard-size", str(SHARD_SIZE), "--actors", "2", *extra, cwd=cwd)


def test_affinity_keeps_loads_to_variants_plus_actors(tmp_path, assets):
    manifest = write_manifest(tmp_path / "m.parquet", _rows(assets))
    with_affinity = _submit(manifest, tmp_path / "a", assets)
    assert with_affinity.returncode == 0, with_affinity.stdout + with_affinity.stderr
    success = json.loads((tmp_path / "a" / "_SUCCESS.json").read_text())
    loads = success["lora_loads"] + success["controlnet_loads"]
    assert success["rows_ok"] == 8 * VARIANT_ROWS
    assert 8 <= loads <= 8 + 2, success["loads_per_actor"]
    assert set(success["loads_per_actor"]["lora"]) == {"actor-1", "actor-2"}

    without = _submit(manifest, tmp_path / "b", assets, "--no-affinity")
    assert without.returncode == 0, without.stderr
    other = json.loads((tmp_path / "b" / "_SUCCESS.json").read_text())
    assert other["lora_loads"] + other["controlnet_loads"] > loads

    for row in sdbatch.read_results(str(tmp_path / "a")).to_pylist():  # provenance on every row
        if "dog" in row["prompt"]:
            [used] = row["controlnets_used"]
            assert used["model_hash"] and len(used["image_sha256"]) == 64 and used["scale"] == 1.0
            assert not row["loras_used"]
        else:
            [used] = row["loras_used"]
            assert len(used["sha256"]) == 64 and used["weight"] == 0.8 and "<lora" not in row["prompt"]


def test_corrupt_lora_and_unreadable_control_image_fail_only_their_rows(tmp_path, assets):
    """...and so does an embedding of another family, while A1111 weights and embeddings render (the folder
    given relative to where the command runs, which the actors do not share)."""
    import torch
    from safetensors.torch import save_file

    from sdbatch.a1111.parameters import parse_parameters
    from tests.support.generator_images import embedded_parameters

    (tmp_path / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, 32)}, tmp_path / "embeddings" / "fuzzyfox.safetensors")
    save_file({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 48)}, tmp_path / "embeddings" / "xlstyle.safetensors")
    good = [{"id": f"good{k}", "prompt": f"a (cat:1.3) {k} <lora:style0:1>", "controlnet": None,
             "control_image": None, "negative_prompt": "fuzzyfox" if k == 0 else ""} for k in range(4)]
    bad = [{"id": "bad-lora", "prompt": "a cat <lora:broken:1>", "controlnet": None, "control_image": None},
           {"id": "bad-image", "prompt": "a dog", "controlnet": str(assets["controlnets"][0]),
            "control_image": str(assets["root"] / "not-an-image.png")},
           {"id": "bad-embedding", "prompt": "a xlstyle dog", "controlnet": None, "control_image": None}]
    manifest = write_manifest(tmp_path / "m.parquet", good + bad)
    result = _submit(manifest, tmp_path / "out", assets, "--embedding-dir", "embeddings", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "bad-lora" in result.stdout and "bad-image" in result.stdout and "bad-embedding" in result.stdout
    table = {r["id"]: r for r in sdbatch.read_results(str(tmp_path / "out")).to_pylist()}
    assert {k for k, r in table.items() if r["status"] == "ok"} == {f"good{k}" for k in range(4)}
    assert table["bad-lora"]["error"] and table["bad-image"]["error"]
    assert "embedding xlstyle is an SDXL embedding" in table["bad-embedding"]["error"]
    assert [e["name"] for e in table["good0"]["embeddings_used"]] == ["fuzzyfox"]
    assert table["good1"]["embeddings_used"] == [] and table["good1"]["prompt_syntax"] == "a1111"
    store = open_store(str(tmp_path / "out"))
    assert len(store.list("images/")) == 4
    fields = parse_parameters(embedded_parameters(store.get(table["good0"]["image"])))
    assert fields["TI hashes"] == f"fuzzyfox: {table['good0']['embeddings_used'][0]['sha256'][:12]}"
    assert fields["prompt"].startswith("a (cat:1.3) 0")
