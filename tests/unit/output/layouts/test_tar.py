"""The webdataset layout's tar: deterministic, readable by tarfile, rows recoverable for adoption."""

import io
import tarfile

from sdbatch.output.layouts.tar import (
    Sample,
    build_tar,
    member_ref,
    members,
    read_member,
    rows_from_tar,
    split_ref,
)


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
