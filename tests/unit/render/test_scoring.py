"""Scores of a committed shard: images read back from the store in every layout match the scores of the images as
rendered, by id; a score file stands once written; a failing step leaves its files for later, never fails a shard."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.output.layouts import LAYOUTS
from sdbatch.output.scores import score_identity, score_key
from sdbatch.render.scoring import RenderScores, ShardScorer
from sdbatch.render.steps.scorer import Scorer
from sdbatch.settings import ScoreSettings
from sdbatch.store.local import LocalStore
from sdbatch.tasks import ShardTask
from tests.support.shard_outputs import attempt, rendered, rows

pytestmark = pytest.mark.usefixtures("tiny_cache")
SETTINGS = ScoreSettings(steps=("clip", "phash"), clip_model="tiny:clip", batch_size=2)


@pytest.fixture(scope="module")
def scorer():
    return Scorer(SETTINGS, "cpu")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_stored_images_score_as_the_rendered_ones_by_id(tmp_path, scorer, layout):
    store = LocalStore(str(tmp_path))
    task_rows = rows(5)
    outcome = attempt(store, layout, "000003", "a1", task_rows, failing={"r2"})
    ok = [{**row, **result} for row, result in zip(task_rows, sorted(outcome.results, key=lambda r: r["id"]))
          if result["status"] == "ok"]
    shard_scorer = ShardScorer(store, scorer)
    assert shard_scorer.finish("000003", layout, ok, "a1") == ["clip", "phash"]
    images = [rendered(row).image for row in ok]
    expected = scorer.score(images, [row["prompt"] for row in ok])
    clip = pq.read_table(pa.BufferReader(store.get(score_key("clip", "000003"))))
    assert clip.column("id").to_pylist() == [row["id"] for row in ok]  # the failed row has no score
    assert clip.column("clip_score").to_pylist() == pytest.approx(expected["clip"]["clip_score"], abs=1e-6)
    assert len(set(clip.column("clip_score").to_pylist())) == len(ok)  # distinct images: a mix-up would show
    phash = pq.read_table(pa.BufferReader(store.get(score_key("phash", "000003"))))
    assert phash.column("phash").to_pylist() == expected["phash"]["phash"]
    assert score_identity(store.get(score_key("clip", "000003")))["images_from"] == "store"
    assert shard_scorer.finish("000003", layout, ok, "a2") == []  # the files stand: nothing rewritten


def test_a_failing_step_leaves_the_shards_files_to_the_runs_end(tmp_path, scorer, monkeypatch):
    store = LocalStore(str(tmp_path))
    scores = RenderScores(store, SETTINGS, "cpu", None)
    monkeypatch.setattr(scores, "_scorer", ShardScorer(store, scorer))
    shard = scores.begin()
    monkeypatch.setattr(scorer, "score", lambda *_: (_ for _ in ()).throw(RuntimeError("CUDA error")))
    row = rows(1)[0]
    shard.add(row, rendered(row).image)
    shard.close()  # the failure is logged, not raised: the shard's images still commit
    assert shard.scored is None
    task = ShardTask("000001", "a1", (row,), "png", 95, layout="files")
    scores.write(task, [{"id": row["id"], "status": "ok", "image": "images/000001/r0.png"}], shard)
    assert store.list("scores/") == []
