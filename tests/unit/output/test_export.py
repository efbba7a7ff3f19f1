"""Exports of a run as Hugging Face datasets, read back offline by `datasets`: images, labels and scores."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from sdbatch.errors import UsageError
from sdbatch.output.commits import RESULT_SCHEMA, commit_shard, read_markers
from sdbatch.output.export import IMAGE_REF, ExportSettings, export, write_imagefolder_metadata
from sdbatch.output.export.card import Distribution
from sdbatch.output.export.source import OPERATIONAL, object_key, rechunk
from sdbatch.output.layouts.webdataset import read_member
from sdbatch.output.results import compact, read_results
from sdbatch.store.local import LocalStore
from tests.support.image_runs import image_run

datasets = pytest.importorskip("datasets")
LAYOUTS = ("files", "webdataset")


@pytest.fixture(autouse=True)
def offline_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def load(tmp_path, *args, **kwargs):
    return datasets.load_dataset(*args, split="train", cache_dir=str(tmp_path / "hf-cache"), **kwargs)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def source_image(store, ref: str) -> bytes:
    key, _, member = ref.partition("#")
    return read_member(store.get(key), member) if member else store.get(key)


def ok_rows(store, keep=lambda row: True) -> list[dict]:
    return [row for row in read_results(store).to_pylist() if row["status"] == "ok" and keep(row)]


def card(dest) -> dict:
    text = (dest / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def assert_rows_match(dataset, store, expected: list[dict], image_column="image"):
    assert dataset["id"] == [row["id"] for row in expected]
    for got, row in zip(dataset, expected):
        assert np.array_equal(np.asarray(got[image_column].convert("RGB")), pixels(source_image(store, row["image"])))
        assert (got["label"], got["tags"], got["quality"]) == (row["label"], row["tags"], row["quality"])
        assert got["aesthetic"] == pytest.approx(row["aesthetic"])
        assert (got["prompt"], got["seed"], got["model"]) == (row["prompt"], row["seed"], row["model"])


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_imagefolder_metadata_makes_a_files_output_loadable_where_it_is(tmp_path, kind):
    store = image_run(tmp_path / "run", "files")
    assert write_imagefolder_metadata(store, kind) == f"metadata.{kind}"
    dataset = load(tmp_path, "imagefolder", data_dir=str(tmp_path / "run"))
    assert isinstance(dataset.features["image"], datasets.Image)
    assert not {*OPERATIONAL, IMAGE_REF, "file_name"} & set(dataset.column_names)
    assert_rows_match(dataset, store, ok_rows(store))  # the failed row s1r3 is left out
    other = "jsonl" if kind == "parquet" else "parquet"
    write_imagefolder_metadata(store, other)  # datasets refuses two metadata files: the other kind goes
    assert store.exists(f"metadata.{other}") and not store.exists(f"metadata.{kind}")


def test_imagefolder_metadata_is_for_the_files_layout_only(tmp_path):
    store = image_run(tmp_path / "run", "webdataset", shards=1)
    with pytest.raises(UsageError, match="not files of their own.*sdbatch export"):
        write_imagefolder_metadata(store)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_parquet_export_holds_exactly_the_filtered_rows_as_image_features(tmp_path, layout):
    store = image_run(tmp_path / "run", layout, unscored=frozenset({2}))
    dest = tmp_path / "dest"
    summary = export(store, LocalStore(str(dest)), "parquet", where=pc.field("label") == "cat1", rows_per_file=2)
    expected = ok_rows(store, lambda row: row["label"] == "cat1")
    assert (summary.rows, summary.rows_seen, summary.rows_failed, summary.rows_filtered) == (5, 12, 1, 6)
    assert summary.files == tuple(f"data/train-{n:05d}-of-00003.parquet" for n in range(3))
    dataset = load(tmp_path, "parquet", data_files=str(dest / "data" / "*.parquet"))
    assert isinstance(dataset.features["image"], datasets.Image)
    assert dataset.column_names[0] == "image" and not set(OPERATIONAL) & set(dataset.column_names)
    assert dataset[IMAGE_REF] == [row["image"] for row in expected]
    assert_rows_match(dataset, store, expected)
    assert dataset["aesthetic"][-1] is None  # the third shard has no score file
    info = card(dest)
    assert info["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    assert info["dataset_info"]["splits"][0]["num_examples"] == 5
    assert [f["name"] for f in info["dataset_info"]["features"]] == dataset.column_names
    from_card = load(tmp_path, str(dest))  # as the Hub reads it: the card's configs and features
    assert from_card.features == dataset.features and from_card["id"] == dataset["id"]


def test_the_card_tells_the_run_models_settings_counts_and_score_distributions(tmp_path):
    store = image_run(tmp_path / "run", "files")
    export(store, LocalStore(str(tmp_path / "dest")), "parquet")
    text = (tmp_path / "dest" / "README.md").read_text()
    assert "run `image-run`" in text and "| failed (not exported) | 1 |" in text and "| exported | 11 |" in text
    assert "- **model**: `tiny:sd15` (11)" in text and "- **size**: `16x8` (11)" in text
    values = [row["aesthetic"] for row in ok_rows(store)]
    line = next(line for line in text.splitlines() if line.startswith("| aesthetic |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[1] == "11" and float(cells[2]) == pytest.approx(min(values), abs=1e-3)
    assert float(cells[3]) == pytest.approx(np.mean(values), rel=1e-3)
    assert float(cells[5]) == pytest.approx(np.median(values), rel=1e-3)
    assert float(cells[7]) == pytest.approx(max(values), rel=1e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_imagefolder_export_holds_the_images_beside_their_metadata(tmp_path, layout):
    store = image_run(tmp_path / "run", layout)
    dest = tmp_path / "dest"
    summary = export(store, LocalStore(str(dest)), "imagefolder", settings=ExportSettings(files_per_folder=4))
    expected = ok_rows(store)
    assert summary.files == ("train/metadata.parquet",) and summary.rows == len(expected) == 11
    images = sorted(p.relative_to(dest).as_posix() for p in (dest / "train").rglob("*.png"))
    assert images == sorted(f"train/{n // 4:05d}/{row['id']}.png" for n, row in enumerate(expected))
    dataset = load(tmp_path, str(dest))  # the card's configs: train/**
    assert isinstance(dataset.features["image"], datasets.Image)
    assert_rows_match(dataset, store, expected)
    assert card(dest)["dataset_info"]["splits"][0]["num_examples"] == 11


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_webdataset_export_holds_a_sample_per_row(tmp_path, layout):
    store = image_run(tmp_path / "run", layout, unscored=frozenset({0, 1}))
    dest = tmp_path / "dest"
    summary = export(store, LocalStore(str(dest)), "webdataset", rows_per_file=4)
    expected = ok_rows(store)
    assert summary.files == tuple(f"data/train-{n:05d}-of-00003.tar" for n in range(3))
    members = {}
    for key in summary.files:
        with tarfile.open(dest / key) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    assert sorted(members) == sorted(f"{row['id']}.{ext}" for row in expected for ext in ("png", "json", "txt"))
    for row in expected:
        assert members[f"{row['id']}.png"] == source_image(store, row["image"])
        assert members[f"{row['id']}.txt"].decode() == row["prompt"]
        sample = yaml.safe_load(members[f"{row['id']}.json"])  # JSON is YAML
        assert (sample["label"], sample["tags"], sample[IMAGE_REF]) == (row["label"], row["tags"], row["image"])
    # The card's features: left to infer them from the first 5 samples, datasets would type `aesthetic` null.
    dataset = load(tmp_path, str(dest))
    assert dataset["__key__"] == [row["id"] for row in expected]
    assert isinstance(dataset.features["png"], datasets.Image) and dataset[0]["json"]["label"] == "cat0"
    assert [sample["aesthetic"] for sample in dataset["json"]] == pytest.approx([row["aesthetic"] for row in expected])


def test_refusals_name_the_fix(tmp_path):
    store = image_run(tmp_path / "run", "files", shards=1)
    dest = LocalStore(str(tmp_path / "dest"))
    with pytest.raises(UsageError, match="export format 'csv' is unknown; use one of parquet, imagefolder"):
        export(store, dest, "csv")
    with pytest.raises(UsageError, match="holds no sdbatch run"):
        export(LocalStore(str(tmp_path / "nothing")), dest, "parquet")
    with pytest.raises(UsageError, match="is the run's output itself"):
        export(store, LocalStore(str(tmp_path / "run")), "parquet")
    with pytest.raises(UsageError, match="cannot be applied.*name columns the results have: id, prompt"):
        export(store, dest, "parquet", where=pc.field("colour") == "red")
    with pytest.raises(UsageError, match="no row of .* can be exported: 4 committed, 0 failed, 4 left out"):
        export(store, dest, "parquet", where=pc.field("label") == "dog")
    assert not (tmp_path / "dest").exists()  # nothing written by a refusal
    export(store, dest, "webdataset")
    with pytest.raises(UsageError, match=r"already holds an export \(README.md, data/\)"):
        export(store, dest, "parquet")
    dotted = image_run(tmp_path / "dotted", "files", shards=1)
    with pytest.raises(UsageError, match="row id .* contains '.'"):
        export(_renamed(dotted), LocalStore(str(tmp_path / "dest2")), "webdataset")


def _renamed(store):
    """A files-layout run whose first id has a dot (the files layout takes such ids)."""
    manifest = pq.read_table(io.BytesIO(store.get("manifest.parquet")))
    ids = ["s0.r0", *manifest["id"].to_pylist()[1:]]
    store.put("manifest.parquet", _parquet(manifest.set_column(0, "id", pa.array(ids))))
    meta = read_markers(store).column("metadata")[0].as_py()
    rows = pq.read_table(io.BytesIO(store.get(meta)), schema=RESULT_SCHEMA).to_pylist()
    rows[0]["id"] = "s0.r0"
    for key in store.list("_committed/") + store.list("metadata/"):
        store.delete(key)
    commit_shard(store, "000000", "a2", rows)
    return store


def _parquet(table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_rechunk_gives_runs_of_exactly_the_size_over_batch_boundaries():
    tables = [pa.table({"n": pa.array(range(start, stop), pa.int64())}) for start, stop in ((0, 3), (3, 3), (3, 10), (10, 11))]
    assert [t["n"].to_pylist() for t in rechunk(iter(tables), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


def test_object_key_of_either_layouts_ref():
    assert object_key("shards/000001.tar#a.png") == "shards/000001.tar"
    assert object_key("images/000001/a.png") == "images/000001/a.png"


def test_a_distribution_keeps_an_even_sample_past_its_bound(monkeypatch):
    from sdbatch.output.export import card as card_module

    monkeypatch.setattr(card_module, "SAMPLE", 50)
    dist = Distribution()
    for start in range(0, 1000, 70):
        dist.add(pa.chunked_array([pa.array(np.arange(start, min(start + 70, 1000), dtype=np.float32))]))
    dist.add(pa.chunked_array([pa.array([None, float("nan")], pa.float32())]))
    summary = dist.summary()
    assert (summary["min"], summary["max"], summary["mean"], dist.count) == (0, 999, 499.5, 1000)
    assert sum(len(part) for part in dist.kept) <= 100 and summary["50%"] == pytest.approx(500, abs=20)


def test_files_are_sized_by_bytes_in_whole_row_groups_and_a_compacted_run_exports_the_same(tmp_path):
    store = image_run(tmp_path / "run", "webdataset")
    compact(store)  # read from results/part-*.parquet from here on
    tiny = ExportSettings(max_file_bytes=1, rows_per_group=2)  # less than an image: a row group per file
    summary = export(store, LocalStore(str(tmp_path / "dest")), "parquet", settings=tiny)
    assert summary.files == tuple(f"data/train-{n:05d}-of-00006.parquet" for n in range(6))
    files = [pq.ParquetFile(tmp_path / "dest" / key) for key in summary.files]
    assert [f.metadata.num_rows for f in files] == [2, 2, 2, 2, 2, 1]
    assert pa.concat_tables(f.read(columns=["id"]) for f in files)["id"].to_pylist() == [
        row["id"] for row in ok_rows(store)]
