"""The Renderer without Ray: batch independence, failure isolation, adoption of partial shards, commits."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from sdbatch.output.commits import commit_shard, marker_key
from sdbatch.output.layouts.files import image_key
from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore
from sdbatch.tasks import ShardTask

pytestmark = pytest.mark.usefixtures("tiny_cache")


def _row(i: int, **extra) -> dict:
    row = {"id": f"r{i}", "prompt": f"a small test picture {i}", "negative_prompt": "blurry", "seed": 1000 + i,
           "model": "tiny:sd15", "width": 64, "height": 48, "steps": 4, "scheduler": "euler_a",
           "guidance_scale": 6.0}
    return {**row, **extra}


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return LocalStore(str(tmp_path_factory.mktemp("out")))


@pytest.fixture(scope="module")
def renderer(store):
    r = Renderer(store, RendererSettings(batch_size=4, io_threads=2, cpu_threads=2))
    yield r
    r.close()


def test_row_image_does_not_depend_on_its_batch_or_shard(renderer, store):
    target = _row(2)
    alone = next(iter(renderer.render_rows([target])))
    assert alone.batch_size == 1
    batched = {r.row["id"]: r for r in renderer.render_rows([_row(0), _row(1), target, _row(3)])}
    assert batched["r2"].batch_size == 4
    result = renderer.render_shard(ShardTask("other", "a1", (_row(9), target), "png", 95))
    assert result.rows_ok == 2
    in_shard = Image.open(io.BytesIO(store.get(image_key("other", "r2", "png"))))
    assert alone.image.size == (64, 48)
    for other in (batched["r2"].image, in_shard):
        assert np.abs(_pixels(alone.image) - _pixels(other)).max() <= 1
    # ...while a different seed really does change the picture (so the comparison can fail).
    reseeded = next(iter(renderer.render_rows([_row(2, seed=5)])))
    assert np.abs(_pixels(alone.image) - _pixels(reseeded.image)).max() > 10


def test_micro_batches_split_where_the_variant_changes(renderer):
    rows = [_row(0), _row(1), _row(2, steps=3), _row(3)]
    sizes = [r.batch_size for r in renderer.render_rows(rows)]
    assert sizes == [2, 2, 1, 1]


class FaultyRenderer(Renderer):
    """Makes any pipeline call that contains the prompt 'explode' fail, as a corrupt input would."""

    def _call_pipeline(self, batch):
        if any("explode" in r["prompt"] for r in batch.rows):
            raise RuntimeError("simulated render failure")
        return super()._call_pipeline(batch)


def test_a_failing_row_is_recorded_and_its_batch_mates_still_render(store):
    renderer = FaultyRenderer(store, RendererSettings(batch_size=4, io_threads=2))
    rows = (_row(0), _row(1, prompt="explode please"), _row(2), _row(3))
    result = renderer.render_shard(ShardTask("faulty", "a1", rows, "png", 95))
    renderer.close()
    assert (result.rows_ok, result.rows_failed) == (3, 1)
    assert "simulated render failure" in result.failures["r1"]
    assert not store.exists(image_key("faulty", "r1", "png"))
    assert store.exists(image_key("faulty", "r0", "png"))
    assert json.loads(store.get(marker_key("faulty")))["failed"] == 1


def test_partly_written_shard_adopts_existing_images(renderer, store):
    rows = (_row(0), _row(1), _row(2))
    first = renderer.render_shard(ShardTask("partial", "a1", rows[:2], "png", 95))
    assert first.rendered == 2
    store.delete("_committed/partial.json")  # as if the attempt died after its images, before its marker
    before = store.get(image_key("partial", "r0", "png"))
    again = renderer.render_shard(ShardTask("partial", "a2", rows, "png", 95))
    assert (again.rendered, again.adopted, again.rows_ok) == (1, 2, 3)
    assert store.get(image_key("partial", "r0", "png")) == before
    marker = json.loads(store.get("_committed/partial.json"))
    assert marker["attempt"] == "a2" and marker["rows"] == 3
    assert store.list("metadata/partial/") == ["metadata/partial/a2.parquet"]  # the dead attempt's is gone


def test_second_commit_of_a_shard_loses_and_leaves_no_orphan_metadata(store):
    rows = [{"id": "x", "shard": "race", "attempt": a, "status": "ok"} for a in ("w1", "w2")]
    assert commit_shard(store, "race", "w1", [rows[0]])["attempt"] == "w1"
    assert commit_shard(store, "race", "w2", [rows[1]])["attempt"] == "w1"  # w1's marker stands
    assert store.list("metadata/race/") == ["metadata/race/w1.parquet"]


@pytest.mark.parametrize("fmt, magic", [("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_other_formats(renderer, store, fmt, magic):
    renderer.render_shard(ShardTask(f"fmt-{fmt}", "a1", (_row(0),), fmt, 90))
    assert store.get(image_key(f"fmt-{fmt}", "r0", fmt)).startswith(magic)
