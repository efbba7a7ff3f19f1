"""The webdataset layout through the Renderer: tars read by the `webdataset` library, failed rows, resume and races."""

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from sdbatch.a1111.parameters import parse_parameters
from sdbatch.output.commits import marker_key
from sdbatch.output.layouts.webdataset import tar_key
from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore
from sdbatch.tasks import ShardTask
from tests.support.generator_images import embedded_parameters
from tests.support.tiny_variants import write_tiny_lora

pytestmark = pytest.mark.usefixtures("tiny_cache")


class RacingRenderer(Renderer):
    """Once told to, renders a racing attempt of a shard to its commit just as its own renders finish: the
    real interleaving of two actors given the same shard, made deterministic."""

    race: ShardTask | None = None

    def render_rows(self, rows):
        yield from super().render_rows(rows)
        if self.race is not None:
            task, self.race = self.race, None
            self.render_shard(task)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    corrupt = root / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage, not a safetensors file" * 10)
    return {"lora": str(write_tiny_lora(root / "ink.safetensors", 1)), "corrupt": str(corrupt)}


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    r = RacingRenderer(LocalStore(str(tmp_path_factory.mktemp("out"))),
                       RendererSettings(batch_size=4, io_threads=2, cpu_threads=2))
    yield r
    r.close()


def _rows(assets) -> tuple[dict, ...]:
    def row(i, animal, loras=()):
        return {"id": f"r{i}", "prompt": f"a tiny {animal} {i}", "negative_prompt": "blurry", "seed": 50 + i,
                "model": "tiny:sd15", "width": 64, "height": 48, "steps": 2, "scheduler": "euler",
                "guidance_scale": 5.0, "loras": [{"path": p, "weight": w} for p, w in loras], "controlnets": [],
                "animal": animal, "legs": 4}

    # r1 has a LoRA (its hash goes into the parameters); r2's LoRA is corrupt, so r2 fails at render time.
    return row(0, "cat"), row(1, "dog", [(assets["lora"], 0.8)]), row(2, "owl", [(assets["corrupt"], 1.0)])


def _task(shard: str, attempt: str, assets) -> ShardTask:
    return ShardTask(shard, attempt, _rows(assets), "png", 95, layout="webdataset")


def _samples(store, shard: str) -> list[dict]:
    # empty_check=False: a shard whose rows all failed is an empty tar, which is no error for one shard.
    return list(wds.WebDataset(store.url_for(tar_key(shard)), shardshuffle=False, empty_check=False))


def _metadata(store, shard: str) -> dict[str, dict]:
    marker = json.loads(store.get(marker_key(shard)))
    return {r["id"]: r for r in pq.read_table(store.url_for(marker["metadata"])).to_pylist()}


def test_shard_tar_has_one_sample_per_ok_row_with_labels_and_parameters(renderer, assets):
    store = renderer.store
    result = renderer.render_shard(_task("000000", "a1", assets))
    assert (result.rows_ok, result.rows_failed, result.committed) == (2, 1, True), result.failures
    samples = _samples(store, "000000")
    assert [s["__key__"] for s in samples] == ["r0", "r1"]  # the failed row is not in the tar
    assert store.list("images/") == []
    for sample, row in zip(samples, _rows(assets)):
        record = json.loads(sample["json"])
        assert (record["animal"], record["legs"], record["status"]) == (row["animal"], 4, "ok")
        assert record["image"] == f"shards/000000.tar#{row['id']}.png" and record["model_hash"]
        assert sample["txt"].decode() == row["prompt"]
        assert Image.open(io.BytesIO(sample["png"])).size == (64, 48)
        fields = parse_parameters(embedded_parameters(sample["png"]))
        assert (fields["prompt"].split(" <lora:")[0], fields["negative_prompt"]) == (row["prompt"], "blurry")
        assert (fields["Seed"], fields["Size"], fields["Model hash"]) == (str(row["seed"]), "64x48",
                                                                           record["model_hash"][:10])
    assert "Lora hashes" in parse_parameters(embedded_parameters(samples[1]["png"]))
    meta = _metadata(store, "000000")
    assert meta["r2"]["status"] == "failed" and "safetensors" in meta["r2"]["error"] and meta["r2"]["image"] is None
    assert meta["r1"]["image"] == "shards/000000.tar#r1.png"
    assert meta["r1"]["loras_used"][0]["weight"] == 0.8


def test_a_rerun_after_the_tar_adopts_it_and_never_renders_or_duplicates(renderer, assets):
    store = renderer.store
    renderer.render_shard(_task("000001", "a1", assets))
    tar = store.get(tar_key("000001"))
    first = _metadata(store, "000001")
    # Died after its metadata, before its marker: the rerun commits that metadata as it is.
    store.delete(marker_key("000001"))
    again = renderer.render_shard(_task("000001", "a2", assets))
    assert (again.rendered, again.adopted, again.committed, again.rows_ok) == (0, 2, True, 2)
    assert _metadata(store, "000001") == first and "safetensors" in again.failures["r2"]
    assert store.list("metadata/000001/") == ["metadata/000001/a1.parquet"]
    # Died after its tar, before its metadata: the rerun records the tar's rows and says why r2 is missing.
    store.delete(marker_key("000001"))
    store.delete("metadata/000001/a1.parquet")
    third = renderer.render_shard(_task("000001", "a3", assets))
    assert (third.rendered, third.adopted, third.committed, third.rows_ok) == (0, 2, True, 2)
    assert "attempt a1" in third.failures["r2"] and "stopped before committing" in third.failures["r2"]
    meta = _metadata(store, "000001")
    assert {k: (v["status"], v["adopted"]) for k, v in meta.items()} == {
        "r0": ("ok", True), "r1": ("ok", True), "r2": ("failed", False)}
    assert meta["r0"]["seed"] == first["r0"]["seed"] and meta["r0"]["device"] == first["r0"]["device"]
    assert store.list("metadata/000001/") == ["metadata/000001/a3.parquet"]
    assert store.get(tar_key("000001")) == tar and [s["__key__"] for s in _samples(store, "000001")] == ["r0", "r1"]


def test_a_racing_attempt_that_writes_the_tar_first_is_the_one_recorded(renderer, assets):
    store = renderer.store
    renderer.race = _task("000002", "a1", assets)
    late = renderer.render_shard(_task("000002", "a2", assets))
    assert not late.committed and (late.rows_ok, late.rows_failed) == (2, 1)
    assert json.loads(store.get(marker_key("000002")))["attempt"] == "a1"
    assert store.list("metadata/000002/") == ["metadata/000002/a1.parquet"]  # no orphan from a2
    samples = _samples(store, "000002")
    assert [s["__key__"] for s in samples] == ["r0", "r1"]
    assert {json.loads(s["json"])["attempt"] for s in samples} == {"a1"}
    with tarfile.open(store.url_for(tar_key("000002"))) as tar:  # plain tarfile reads it too
        assert len(tar.getnames()) == 6


def test_a_shard_where_every_row_fails_commits_an_empty_tar(renderer, assets):
    rows = tuple({**row, "loras": [{"path": assets["corrupt"], "weight": 1.0}]} for row in _rows(assets)[:2])
    result = renderer.render_shard(ShardTask("000003", "a1", rows, "png", 95, layout="webdataset"))
    assert (result.rows_ok, result.rows_failed, result.committed) == (0, 2, True)
    assert _samples(renderer.store, "000003") == []
    with tarfile.open(renderer.store.url_for(tar_key("000003"))) as tar:
        assert tar.getnames() == []


def test_ids_with_a_dot_are_refused_for_the_webdataset_layout_before_anything_is_written(tmp_path):
    from sdbatch.errors import ManifestError
    from sdbatch.run.driver import SubmitRequest, prepare
    from sdbatch.spec import load_spec
    from tests.support.util import write_manifest

    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "cat.v2", "prompt": "a cat"}])
    out = tmp_path / "out"
    with pytest.raises(ManifestError, match=r"column 'id', row id 'cat.v2' \(row 0\).*--layout files"):
        prepare(SubmitRequest(str(manifest), str(out), load_spec(None, {"output.layout": "webdataset"})))
    assert not out.exists()
    prepare(SubmitRequest(str(manifest), str(out), load_spec(None))).close()  # the files layout takes such ids
