"""The webdataset layout without torch: its deterministic tars, a shard's samples, adoption, races, readers."""

import io
import json
import tarfile

import pyarrow as pa
import pytest

from sdbatch.errors import ManifestError
from sdbatch.output.commits import marker_key
from sdbatch.output.layouts import layout_named
from sdbatch.output.layouts.webdataset import (
    Sample,
    build_tar,
    member_ref,
    members,
    read_member,
    rows_from_tar,
    split_ref,
    tar_key,
)
from sdbatch.store.local import LocalStore
from tests.support.shard_outputs import attempt, rows


def _samples():
    return [Sample(f"r{i}", "png", bytes([i]) * 10, {"id": f"r{i}", "status": "ok", "label": "cat"}, f"prompt {i}")
            for i in range(3)]


def test_tar_holds_image_json_and_prompt_per_row_in_order():
    data = build_tar(_samples())
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert names == [f"r{i}.{ext}" for i in range(3) for ext in ("png", "json", "txt")]
    assert read_member(data, "r1.png") == bytes([1]) * 10 and read_member(data, "r2.txt") == b"prompt 2"


def test_tar_bytes_are_deterministic_so_a_retried_put_is_identical():
    assert build_tar(_samples()) == build_tar(_samples())


def test_ids_of_the_longest_allowed_length_fit_in_the_tar():
    row_id = "x" * 128  # the manifest allows 128 characters; ustar names stop at 100
    data = build_tar([Sample(row_id, "png", b"img", {"id": row_id}, "p")])
    assert tarfile.open(fileobj=io.BytesIO(data)).getnames() == [f"{row_id}.png", f"{row_id}.json", f"{row_id}.txt"]
    assert rows_from_tar(data) == [{"id": row_id}] and build_tar([Sample(row_id, "png", b"img", {"id": row_id}, "p")]) == data


def test_rows_come_back_from_the_tar():
    assert [r["label"] for r in rows_from_tar(build_tar(_samples()))] == ["cat"] * 3


def test_member_references():
    ref = member_ref("000004", "r1", "png")
    assert ref == "shards/000004.tar#r1.png" and split_ref(ref) == ("shards/000004.tar", "r1.png")
    assert split_ref("images/000004/r1.png") == ("images/000004/r1.png", None)


def test_members_picks_the_images_in_tar_order():
    assert members(build_tar(_samples()), (".png",)) == [(f"r{i}.png", bytes([i]) * 10) for i in range(3)]


def _tar_rows(store, shard: str) -> list[str]:
    return [row["id"] for row in rows_from_tar(store.get(tar_key(shard)))]


def test_a_shard_is_one_tar_of_its_ok_rows_in_manifest_order_with_labels(tmp_path):
    store = LocalStore(str(tmp_path))
    outcome = attempt(store, "webdataset", "000000", "a1", rows(3), failing={"r1"})
    assert outcome.committed and (outcome.rendered, outcome.adopted) == (3, 0)
    assert store.list("images/") == [] and _tar_rows(store, "000000") == ["r0", "r2"]
    record = json.loads(read_member(store.get(tar_key("000000")), "r2.json"))
    assert (record["label"], record["status"], record["image"]) == ("cat2", "ok", "shards/000000.tar#r2.png")
    assert {r["id"]: r["status"] for r in outcome.results} == {"r0": "ok", "r1": "failed", "r2": "ok"}


def test_a_tar_left_by_an_attempt_that_died_is_adopted_and_nothing_renders_again(tmp_path):
    store = LocalStore(str(tmp_path))
    attempt(store, "webdataset", "000000", "a1", rows(3), failing={"r1"})
    tar = store.get(tar_key("000000"))
    store.delete(marker_key("000000"))
    store.delete(f"metadata/000000/{store.list('metadata/000000/')[0].rsplit('/', 1)[1]}")  # and its metadata
    again = attempt(store, "webdataset", "000000", "a2", rows(3))
    assert again.committed and (again.rendered, again.adopted) == (0, 2) and store.get(tar_key("000000")) == tar
    failed = {r["id"]: r["error"] for r in again.results if r["status"] == "failed"}
    assert list(failed) == ["r1"] and "attempt a1" in failed["r1"]


def test_a_racing_attempt_that_writes_the_tar_first_is_the_one_recorded(tmp_path):
    store = LocalStore(str(tmp_path))

    def race():
        attempt(store, "webdataset", "000000", "a1", rows(2, seed=99))

    late = attempt(store, "webdataset", "000000", "a2", rows(2), race=race)
    assert not late.committed and late.marker["attempt"] == "a1"
    assert {json.loads(read_member(store.get(tar_key("000000")), "r0.json"))["seed"]} == {99}


def test_ids_with_a_dot_are_refused_with_their_row_and_readers_find_and_link_the_members(tmp_path):
    layout = layout_named("webdataset")
    with pytest.raises(ManifestError, match=r"row id 'cat.v2' \(row 41\).*--layout files"):
        layout.check_ids(pa.array(["cat", "cat.v2"]), 40)
    store = LocalStore(str(tmp_path))
    attempt(store, "webdataset", "000000", "a1", rows(2))
    found = list(layout.images_in(store, tar_key("000000")))
    assert [(f.ref, f.name) for f in found] == [("shards/000000.tar#r0.png", "r0.png"),
                                                ("shards/000000.tar#r1.png", "r1.png")]
    assert list(layout.images_in(store, "job.json")) == []
    link = layout.browsable(store)
    assert link(found[1].ref) == "gallery_files/r1.png" and store.get("gallery_files/r1.png") == found[1].data
