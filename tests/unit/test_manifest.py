"""Manifest validation and normalization: every error names the column, the row and the fix."""

import pandas as pd
import pyarrow as pa
import pytest

from sdbatch.commits import RESULT_SCHEMA
from sdbatch.errors import ManifestError
from sdbatch.manifest import MANIFEST_COLUMNS, RESULT_COLUMNS, derive_seed, normalize, read_manifest
from sdbatch.settings import RowDefaults
from tests.support.util import write_manifest

DEFAULTS = RowDefaults(model="tiny:sd15", steps=5, width=64, height=64, seed=7)


def _normalize(rows):
    return normalize(pa.Table.from_pylist(rows), DEFAULTS)


def test_defaults_ids_and_seeds_are_filled_in():
    table = _normalize([{"prompt": "a", "seed": None, "steps": None}, {"prompt": "b", "seed": 5, "steps": 9}])
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["000000", "000001"]
    assert rows[0]["seed"] == derive_seed(7, "000000") and rows[1]["seed"] == 5
    assert rows[0]["steps"] == 5 and rows[1]["steps"] == 9
    assert rows[0]["model"] == "tiny:sd15" and rows[0]["width"] == 64
    assert rows[0]["negative_prompt"] == ""


def test_full_63_bit_seeds_are_kept_exactly():
    """Derived seeds use all 63 bits, and manifests rebuilt from images carry them: above 2**53 a float
    cannot hold them, so they must never pass through one (they once failed as "not a whole number")."""
    seeds = [2**63 - 1, 3839760927045813647, derive_seed(7, "x"), 2**53 + 1]
    table = _normalize([{"prompt": "a", "seed": seed} for seed in seeds])
    assert table.column("seed").to_pylist() == seeds
    assert _normalize([{"prompt": "a", "seed": 12.0}]).column("seed").to_pylist() == [12]
    with pytest.raises(ManifestError, match="12.5 is not a whole number"):
        _normalize([{"prompt": "a", "seed": 12.5}])
    # pandas stores an int column with a missing value as float64: such seeds arrive already rounded.
    df = pd.DataFrame({"prompt": ["a", "b"], "seed": [3839760927045813647, None]})
    with pytest.raises(ManifestError, match=r"row 0\): 3.839760927045814e\+18 is a float above 2\*\*53.*'Int64'"):
        normalize(pa.Table.from_pandas(df, preserve_index=False), DEFAULTS)
    fixed = pd.DataFrame({"prompt": ["a", "b"], "seed": pd.array([3839760927045813647, None], dtype="Int64")})
    assert normalize(pa.Table.from_pandas(fixed, preserve_index=False), DEFAULTS).column("seed")[0].as_py() == \
        3839760927045813647


def test_label_columns_pass_through():
    table = _normalize([{"prompt": "a", "animal": "cat", "score": 0.5}])
    assert table.column("animal").to_pylist() == ["cat"]
    assert table.column("score").to_pylist() == [0.5]


def test_the_manifest_columns_are_what_normalize_writes_and_labels_may_not_take_result_names():
    table = _normalize([{"prompt": "a", "animal": "cat"}])
    assert table.column_names == [*MANIFEST_COLUMNS, "animal"]
    assert set(RESULT_COLUMNS) == set(RESULT_SCHEMA.names) - set(MANIFEST_COLUMNS)
    assert "image" in RESULT_COLUMNS and "seed" not in RESULT_COLUMNS
    for name in ("status", "model_hash"):
        with pytest.raises(ManifestError, match=f"column '{name}'.*rename this label column"):
            _normalize([{"prompt": "a", name: "x"}])


def test_pandas_nan_in_integer_columns_means_default():
    df = pd.DataFrame({"prompt": ["a", "b"], "steps": [12, None]})
    table = normalize(pa.Table.from_pandas(df, preserve_index=False), DEFAULTS)
    assert table.column("steps").to_pylist() == [12, 5]


@pytest.mark.parametrize("rows, column, row_hint, fix_hint", [
    ([{"text": "a"}], "prompt", None, "add a string column 'prompt'"),
    ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "id", "row id 'a' (row 1)", "unique"),
    ([{"id": "a/b", "prompt": "x"}], "id", "row id 'a/b'", "rename it"),
    ([{"id": "..", "prompt": "x"}], "id", "row id '..'", "rename it"),
    ([{"id": "ok", "prompt": "x", "width": 500}], "width", "row id 'ok'", "use 496 or 504"),
    ([{"id": "ok", "prompt": "x", "steps": 0}], "steps", "row id 'ok'", "use steps >= 1"),
    ([{"id": "ok", "prompt": "x", "steps": -3}], "steps", "row id 'ok'", "use steps >= 1"),
    ([{"id": "ok", "prompt": None}], "prompt", "row id 'ok'", "use ''"),
    ([{"id": "ok", "prompt": "x", "steps": "ten"}], "steps", None, "expected int"),
    ([{"id": "ok", "prompt": "x", "scheduler": "magic"}], "scheduler", "row id 'ok'", "euler_a"),
    ([{"id": "ok", "prompt": "x", "seed": -1}], "seed", "row id 'ok'", "2**63"),
    ([{"id": "ok", "prompt": "x <lora:foo:0.8>"}], "prompt", "row id 'ok'", "pass --lora-dir"),
    ([{"id": "ok", "prompt": "x", "status": "draft"}], "status", None, "rename this label column"),
    ([{"id": "ok", "prompt": "x", "controlnets": [{"model": "s3://b/cn", "scale": 1.0,
                                                   "image": "https://h/i.png?X-Amz-Signature=ab"}]}],
     "controlnets", "row id 'ok'", "use an s3:// URI"),
    ([{"id": "ok", "prompt": "x", "controlnet": "s3://b/cn", "control_image": "https://u:p@h/i.png"}],
     "controlnets", "row id 'ok'", "use an s3:// URI"),
    ([{"id": "ok", "prompt": "x", "vae": "https://h/vae.safetensors?token=abc"}], "vae", "row id 'ok'",
     "password, signature or token"),
])
def test_bad_rows_are_refused_with_column_row_and_fix(rows, column, row_hint, fix_hint):
    with pytest.raises(ManifestError) as info:
        _normalize(rows)
    message = str(info.value)
    assert f"column '{column}'" in message
    if row_hint:
        assert row_hint in message
    assert fix_hint in message


def test_many_problems_are_summarized_not_flooded():
    rows = [{"id": f"r{i}", "prompt": "x", "width": 100} for i in range(30)]
    with pytest.raises(ManifestError) as info:
        _normalize(rows)
    assert "30 problem(s)" in str(info.value) and "and 20 more" in str(info.value)


def test_read_refuses_missing_and_non_parquet_files(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "nope.parquet"))
    bad = tmp_path / "bad.parquet"
    bad.write_text("id,prompt\n1,a\n")
    with pytest.raises(ManifestError, match="not a Parquet file"):
        read_manifest(str(bad))


def test_read_round_trips_a_written_manifest(tmp_path):
    path = write_manifest(tmp_path / "m.parquet", [{"prompt": "a"}, {"prompt": "b"}])
    assert read_manifest(str(path)).num_rows == 2
