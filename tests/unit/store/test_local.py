"""LocalStore and the local scheme: temp files, writability, listings, whole-file reads."""

from __future__ import annotations

import os

import pytest

from sdbatch.errors import ObjectNotFound, StoreError
from sdbatch.store import Reader, local
from sdbatch.store.base import PROBE_DIR
from sdbatch.store.local import LocalStore


def test_list_skips_local_temp_files(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put("d/k", b"v")
    (tmp_path / "d" / f"{local._TMP_MARK}abc").write_bytes(b"half")  # as left by a crash
    assert store.list() == ["d/k"]


def test_local_check_writable_fails_clearly(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="cannot write"):
        LocalStore(str(tmp_path / "file" / "sub")).check_writable()


def test_local_list_reads_only_the_folder_the_prefix_names(tmp_path, monkeypatch):
    """A shard's commit lists its own metadata folder: that must not cost more as other shards pile up."""
    store = LocalStore(str(tmp_path))
    for shard in range(200):
        store.put(f"metadata/{shard:06d}/a.parquet", b"x")
    read = []
    scandir = os.scandir
    monkeypatch.setattr(local.os, "scandir", lambda path: read.append(os.path.relpath(path, tmp_path))
                        or scandir(path))
    assert store.list("metadata/000123/") == ["metadata/000123/a.parquet"]
    assert read == [os.path.join("metadata", "000123")]
    read.clear()
    # A partial name: its parent folder is read once, and only the matching subfolders below it.
    assert store.list("metadata/00012") == [f"metadata/{n:06d}/a.parquet" for n in range(120, 130)]
    assert sorted(read) == ["metadata"] + [os.path.join("metadata", f"{n:06d}") for n in range(120, 130)]


def test_the_local_scheme_splits_and_reads_files_and_says_when_one_is_missing(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    assert local.split(str(tmp_path / "a.png")) == (str(tmp_path), "a.png")
    assert local.split(f"file://{tmp_path}/a.png") == (str(tmp_path), "a.png")
    reader = Reader()
    assert reader.read(str(tmp_path / "a.png")) == b"png" == reader.read(f"file://{tmp_path}/a.png")
    with pytest.raises(ObjectNotFound, match="no such file"):
        reader.read(str(tmp_path / "b.png"))
    store, key = reader.store_of(str(tmp_path / "a.png"))
    assert isinstance(store, LocalStore) and store.get(key) == b"png"


def test_a_local_store_links_its_files_for_a_browser(tmp_path):
    store = LocalStore(str(tmp_path))
    assert store.local_folder() == str(tmp_path)
    assert store.browser_url("images/a b.png", 60) == (tmp_path / "images" / "a b.png").as_uri()


def test_write_survives_another_process_removing_its_empty_folder(tmp_path, monkeypatch):
    """Two drivers on one output each probe it and remove the empty probe folder: one driver's cleanup
    can land between the other's folder creation and its write, and must not fail that driver."""
    store = LocalStore(str(tmp_path / "out"))
    makedirs = os.makedirs
    removed = []

    def makedirs_then_lose_it(path, exist_ok=False):
        makedirs(path, exist_ok=exist_ok)
        if not removed and os.path.basename(path) == PROBE_DIR:  # the other driver's cleanup, once
            removed.append(path)
            os.rmdir(path)

    monkeypatch.setattr(local.os, "makedirs", makedirs_then_lose_it)
    store.check_writable()
    store.put("a/b", b"v")
    assert removed and store.get("a/b") == b"v"


def test_write_survives_the_output_folder_vanishing_inside_makedirs(tmp_path, monkeypatch):
    """The other driver also removes the output folder it made: our makedirs found the parent, then its mkdir
    of the probe folder met no parent (FileNotFoundError from makedirs itself). The write tries again."""
    store = LocalStore(str(tmp_path / "out"))
    makedirs = os.makedirs
    raced = []

    def parent_gone_once(path, exist_ok=False):
        if not raced and os.path.basename(path) == PROBE_DIR:
            raced.append(path)
            raise FileNotFoundError(2, "No such file or directory", path)
        makedirs(path, exist_ok=exist_ok)

    monkeypatch.setattr(local.os, "makedirs", parent_gone_once)
    store.check_writable()
    assert raced
