"""`manifest from-images` without Ray: rows written a batch at a time, nothing left behind on failure."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from PIL import Image

from sdbatch import reproduce
from sdbatch.a1111 import save_options
from sdbatch.errors import ManifestError
from sdbatch.reproduce import manifest_from_images, write_manifest_from_images

PARAMETERS = "a red fox {n}\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: {n}, Size: 64x64, Model: tiny"


def _image(path, n: int | None) -> None:
    options = save_options("png", PARAMETERS.format(n=n)) if n is not None else {}
    Image.new("RGB", (8, 8)).save(path, "PNG", **options)


def test_rows_are_written_in_batches_and_read_as_they_would_be_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "BATCH_ROWS", 4)
    (tmp_path / "images").mkdir()
    for n in range(11):
        _image(tmp_path / "images" / f"img{n:02d}.png", n)
    _image(tmp_path / "images" / "plain.png", None)  # no parameters: skipped, counted
    rows, skipped = write_manifest_from_images(str(tmp_path / "images"), str(tmp_path / "m.parquet"))
    written = pq.ParquetFile(tmp_path / "m.parquet")
    assert (rows, skipped) == (11, 1) and written.metadata.num_row_groups == 3
    table, _ = manifest_from_images(str(tmp_path / "images"))
    assert written.read().equals(table)
    assert table.column("seed").to_pylist() == list(range(11))


def test_a_folder_without_parameters_leaves_no_manifest(tmp_path):
    (tmp_path / "images").mkdir()
    _image(tmp_path / "images" / "plain.png", None)
    with pytest.raises(ManifestError, match="none of the 1 images"):
        write_manifest_from_images(str(tmp_path / "images"), str(tmp_path / "m.parquet"))
    assert list(tmp_path.iterdir()) == [tmp_path / "images"]
