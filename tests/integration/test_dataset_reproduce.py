"""Dataset-ready outputs end to end: images carry A1111 parameters, `manifest from-images` then `submit
--layout webdataset` reproduces them, and the webdataset run reads back with the `webdataset` library."""

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

import sdbatch
from sdbatch.a1111.parameters import parse_parameters
from sdbatch.manifest.from_images import manifest_from_images
from sdbatch.output.layouts.files import image_key
from sdbatch.render.renderer import Renderer
from sdbatch.run.gallery import GallerySettings, make_gallery
from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore
from sdbatch.tasks import ShardTask
from tests.support.generator_images import embedded_parameters
from tests.support.tiny_variants import write_tiny_lora
from tests.support.util import REPO, run_cli

pytestmark = pytest.mark.usefixtures("tiny_cache")
JOB = str(REPO / "jobs" / "demo.toml")
NOISE = 1  # 1/255: float noise between batch shapes and thread counts on CPU


@dataclass(frozen=True)
class Original:
    store: LocalStore
    rows: tuple[dict, ...]
    corrupt_lora: str


def _row(i: int, **extra) -> dict:
    row = {"id": f"p{i}", "prompt": f"a tiny lighthouse {i}", "negative_prompt": "", "seed": 900 + i,
           "model": "tiny:sd15", "width": 64, "height": 48, "steps": 2, "scheduler": "euler_a",
           "guidance_scale": 6.0, "loras": [], "controlnets": []}
    return {**row, **extra}


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Original:
    """Images rendered in process (files layout): varied samplers, sizes, a negative prompt and a LoRA."""
    root = tmp_path_factory.mktemp("original")
    lora = str(write_tiny_lora(root / "ink.safetensors", 3))
    corrupt = root / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00not a safetensors file" * 10)
    rows = (_row(0, negative_prompt="fog"),
            _row(1, scheduler=None, width=48, height=64, loras=[{"path": lora, "weight": 0.7}]),
            # A seed as sdbatch derives them: all 63 bits, beyond what a float holds exactly.
            _row(2, scheduler="dpmpp_2m", steps=3, guidance_scale=3.5, seed=3839760927045813647))
    store = LocalStore(str(root / "out"))
    renderer = Renderer(store, RendererSettings(batch_size=4, io_threads=2, cpu_threads=2))
    try:
        assert renderer.render_shard(ShardTask("000000", "a1", rows, "png", 95)).rows_ok == 3
        for fmt in ("jpeg", "webp"):  # one row each: the parameters must survive in EXIF too
            assert renderer.render_shard(ShardTask(fmt, "a1", rows[:1], fmt, 90)).rows_ok == 1
    finally:
        renderer.close()
    return Original(store, rows, str(corrupt))


@pytest.fixture(scope="module")
def resubmitted(original, tmp_path_factory) -> Path:
    """`manifest from-images` on the original images, plus one row that fails at render time, then one
    `submit --layout webdataset` on local Ray (the only Ray start in this module)."""
    root = tmp_path_factory.mktemp("resubmit")
    made = run_cli("manifest", "from-images", original.store.url_for("images/000000"), "-o", str(root / "m.parquet"))
    assert made.returncode == 0 and "3 rows" in made.stdout, made.stdout + made.stderr
    table = pq.read_table(root / "m.parquet")
    bad = {"id": "broken", "prompt": "a broken one", "loras": [{"path": original.corrupt_lora, "weight": 1.0}],
           "source_image": "none"}
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([bad], schema=table.schema)]), root / "m2.parquet")
    output = root / "out"
    run = run_cli("submit", str(root / "m2.parquet"), "--output", str(output), "--job", JOB, "--actors", "1",
                  "--layout", "webdataset", "--shard-size", "2")
    assert run.returncode == 1, run.stdout + run.stderr  # 1: finished with a failed row
    return output


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _samples(output: Path) -> dict[str, dict]:
    tars = sorted(str(p) for p in (output / "shards").glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(tars, shardshuffle=False)}


def test_every_image_carries_a1111_parameters(original):
    for row in original.rows:
        text = embedded_parameters(original.store.get(image_key("000000", row["id"], "png")))
        settings = text.split("\n")[-1]
        assert settings.startswith(f"Steps: {row['steps']}, Sampler: "), text
        fields = parse_parameters(text)
        assert fields["Seed"] == str(row["seed"]) and fields["Size"] == f"{row['width']}x{row['height']}"
        assert fields["CFG scale"] == f"{row['guidance_scale']:g}" and fields["Model"] == "tiny:sd15"
        assert len(fields["Model hash"]) == 10
        assert ("Lora hashes" in fields) == bool(row["loras"])
    assert "Negative prompt: fog" in embedded_parameters(original.store.get(image_key("000000", "p0", "png")))
    for fmt, ext in (("jpeg", "jpg"), ("webp", "webp")):
        fields = parse_parameters(embedded_parameters(original.store.get(image_key(fmt, "p0", fmt))) or "")
        assert (fields["prompt"], fields["Seed"], fields["Sampler"]) == ("a tiny lighthouse 0", "900", "Euler a"), ext


def test_from_images_then_submit_reproduces_every_image(original, resubmitted):
    samples = _samples(resubmitted)
    assert sorted(samples) == ["p0", "p1", "p2"]
    for row in original.rows:
        before = _pixels(original.store.get(image_key("000000", row["id"], "png")))
        after = _pixels(samples[row["id"]]["png"])
        assert before.shape == after.shape and np.abs(before - after).max() <= NOISE, row["id"]
    # from-images reads the webdataset layout too: the members of its tars, named as results name them.
    again, skipped = manifest_from_images(str(resubmitted / "shards"))
    assert skipped == 0 and sorted(f"shards/{s}" for s in again.column("source_image").to_pylist()) == sorted(
        sdbatch.read_results(str(resubmitted)).column("image").drop_null().to_pylist())
    # ...and the comparison can fail: a different seed moves the picture far beyond the noise.
    assert np.abs(_pixels(samples["p0"]["png"]) - _pixels(samples["p2"]["png"])).max() > 10


def test_webdataset_run_reads_back_one_sample_per_ok_row_with_labels(resubmitted):
    results = sdbatch.read_results(str(resubmitted))
    status = dict(zip(results.column("id").to_pylist(), results.column("status").to_pylist()))
    assert status == {"p0": "ok", "p1": "ok", "p2": "ok", "broken": "failed"}
    samples = _samples(resubmitted)
    assert sorted(samples) == sorted(i for i, s in status.items() if s == "ok")  # the failed row is in no tar
    for row in results.filter(pa.compute.equal(results.column("status"), "ok")).to_pylist():
        record = json.loads(samples[row["id"]]["json"])
        assert record["source_image"] == row["source_image"] == f"{row['id']}.png"  # the label, intact
        assert record["image"] == row["image"] and row["image"].startswith(f"shards/{row['shard']}.tar#")
        assert samples[row["id"]]["txt"].decode() == row["prompt"]
    assert not (resubmitted / "images").exists()
    success = json.loads((resubmitted / "_SUCCESS.json").read_text())
    assert (success["rows_ok"], success["rows_failed"]) == (3, 1)


def test_gallery_shows_webdataset_members(resubmitted):
    store = LocalStore(str(resubmitted))
    page = Path(make_gallery(store, GallerySettings())).read_text()
    sources = sorted(re.findall(r'<img src="([^"]+)"', page))
    assert sources == [f"gallery_files/p{i}.png" for i in range(3)]
    for source in sources:
        assert Image.open(resubmitted / source).size in ((64, 48), (48, 64))
    assert 'data-id="broken"' in page
