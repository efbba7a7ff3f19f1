"""Score steps on a real local Ray with the tiny models: every image scored as it renders, a resumed run's scores
equal to those `sdbatch score` adds to a run made without steps, identical images with identical hashes."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

import sdbatch
from sdbatch.output.scores import score_identity
from sdbatch.store import open_store
from tests.support.util import REPO, SDBATCH, run_cli, tiny_rows, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(REPO / "jobs" / "demo.toml")
STEPS = ["--clip-model", "tiny:clip", "--aesthetic-model", "tiny:aesthetic", "--safety-model", "tiny:safety"]
COLUMNS = ("clip_score", "aesthetic", "punsafe", "phash")
# 12 steps at 32x32, 2-row shards: long enough for the kill to land mid-run on a 2-core box.
RENDER = ["--steps", "12", "--width", "32", "--height", "32", "--shard-size", "2", "--actors", "2"]


def _scores(out) -> dict[str, tuple]:
    table = sdbatch.read_results(str(out))
    return {row["id"]: tuple(row[c] for c in COLUMNS) for row in table.to_pylist()}


def test_scores_made_while_rendering_resumed_or_added_later_by_sdbatch_score_are_the_same(tmp_path):
    rows = [{**row, "seed": n, "style": "ab"[n % 2]} for n, row in enumerate(tiny_rows(16))]
    rows.insert(1, {**rows[0], "id": "twin"})  # the first row's prompt and seed, in its micro-batch: the same image
    manifest = write_manifest(tmp_path / "m.parquet", rows)

    plain = tmp_path / "plain"
    made = run_cli("submit", str(manifest), "--output", str(plain), "--job", JOB, *RENDER)
    assert made.returncode == 0, made.stdout + made.stderr
    assert not set(COLUMNS) & set(sdbatch.read_results(str(plain)).column_names)
    scored = run_cli("score", str(plain), "--steps", "clip,aesthetic,safety,phash", *STEPS)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert "9 to score" in " ".join(scored.stdout.split()), scored.stdout
    again = run_cli("score", str(plain), "--steps", "clip,aesthetic,safety,phash", *STEPS)
    assert "0 to score" in " ".join(again.stdout.split()), again.stdout  # resumable per shard: nothing redone
    expected = _scores(plain)
    assert all(value is not None for values in expected.values() for value in values), expected
    assert expected["twin"][3] == expected[rows[0]["id"]][3]
    assert expected["twin"][:3] == pytest.approx(expected[rows[0]["id"]][:3], abs=1e-5)
    assert len({values[3] for values in expected.values()}) == len(rows) - 1  # distinct images, distinct hashes

    with_steps = ["--score", "clip,aesthetic,safety,phash", *STEPS]
    whole = tmp_path / "whole"
    made = run_cli("submit", str(manifest), "--output", str(whole), "--job", JOB, *RENDER, *with_steps)
    assert made.returncode == 0, made.stdout + made.stderr
    _assert_same(_scores(whole), expected)  # scored as they rendered = scored from the store afterwards
    _assert_loads_as_an_imagefolder(whole, rows)

    out = tmp_path / "resumed"
    args = ["submit", str(manifest), "--output", str(out), "--job", JOB, *RENDER, *with_steps]
    driver = subprocess.Popen([*SDBATCH, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 180
    while len(list((out / "_committed").glob("*.json"))) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _assert_same(_scores(out), _scores(whole))  # a resumed run's scores are an uninterrupted one's
    assert json.loads((out / "_SUCCESS.json").read_text())["finished"]
    assert _images_from(plain) == {"store"}  # sdbatch score reads the stored images back
    assert _images_from(whole) == {"render"}  # scored on the actor, as they rendered
    assert "render" in _images_from(out)  # the shards rendered after the kill were scored as they rendered


def _assert_same(got: dict[str, tuple], expected: dict[str, tuple]) -> None:
    assert got.keys() == expected.keys()
    for row_id, values in expected.items():
        assert got[row_id][3] == values[3], row_id  # the same image, the same hash
        assert got[row_id][:3] == pytest.approx(values[:3], abs=1e-5), row_id


def _images_from(out) -> set[str]:
    store = open_store(str(out))
    return {score_identity(store.get(key))["images_from"] for key in store.list("scores/")}


def _assert_loads_as_an_imagefolder(out, rows: list[dict]) -> None:
    """A finished files output is a Hugging Face imagefolder as it is: images with their labels and scores."""
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert loaded.num_rows == len(rows) and isinstance(loaded.features["image"], datasets.Image)
    by_id = {row["id"]: row for row in loaded}
    for row in rows:
        assert by_id[row["id"]]["style"] == row["style"] and by_id[row["id"]]["clip_score"] is not None
        assert by_id[row["id"]]["image"].size == (32, 32)
