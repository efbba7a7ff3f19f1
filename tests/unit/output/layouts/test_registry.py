"""The layout registry: every layout by its name, and an unknown one refused before anything is read or written."""

import pytest

from sdbatch.errors import SpecError
from sdbatch.output.layouts import LAYOUTS, layout_named
from sdbatch.run.driver import SubmitRequest, prepare
from sdbatch.spec import load_spec


def test_each_layout_is_registered_under_the_name_it_answers_to():
    assert sorted(LAYOUTS) == ["files", "webdataset"]
    assert all(layout_named(name).name == name for name in LAYOUTS)


def test_an_unknown_layout_is_refused_naming_the_ones_there_are_before_the_manifest_is_read(tmp_path):
    with pytest.raises(SpecError, match="output.layout = 'parquet' is invalid; use one of files, webdataset"):
        layout_named("parquet")
    spec = load_spec(None, {"output.layout": "parquet"})
    with pytest.raises(SpecError, match="output.layout"):  # the manifest does not even exist
        prepare(SubmitRequest(str(tmp_path / "absent.parquet"), str(tmp_path / "out"), spec))
    assert not (tmp_path / "out").exists()
