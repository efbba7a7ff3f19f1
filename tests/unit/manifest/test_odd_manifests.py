"""Every kind of odd manifest the fuzzing pass found: a refusal naming its column and row, never a traceback."""

import math

import pyarrow as pa
import pytest

from sdbatch.errors import ManifestError
from sdbatch.manifest.normalize import normalize
from sdbatch.manifest.problems import MESSAGE_CHARS, Notes
from sdbatch.plan.planned import plan_manifest
from sdbatch.settings import RowDefaults
from tests.support.odd_manifests import REFUSED, write_damaged_page, write_refused, write_repeated_column

DEFAULTS = RowDefaults(model="tiny:sd15")


def _refusal(path, tmp_path, defaults=DEFAULTS) -> str:
    with pytest.raises(ManifestError) as info:
        plan_manifest(str(path), defaults, 4, str(tmp_path), write=False)
    return str(info.value)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_kind_of_odd_manifest_is_refused_naming_column_and_row(name, tmp_path):
    message = _refusal(write_refused(name, tmp_path), tmp_path)
    for needle in REFUSED[name][1]:
        assert needle in message
    assert "\x1b" not in message and "\x07" not in message
    assert all(len(line) <= MESSAGE_CHARS + 10 for line in message.splitlines())


def test_a_column_name_used_twice_is_refused(tmp_path):
    message = _refusal(write_repeated_column(tmp_path), tmp_path)
    assert "column 'prompt': appears 2 times in the file's schema" in message


def test_a_damaged_data_page_is_a_manifest_error_that_says_where(tmp_path):
    message = _refusal(write_damaged_page(tmp_path), tmp_path)
    assert "cannot be read after row 1000" in message and "the file is damaged" in message


def test_the_limits_are_the_jobs_to_raise(tmp_path):
    path = write_refused("steps_past_the_limit", tmp_path)
    assert plan_manifest(str(path), RowDefaults(model="tiny:sd15", max_steps=100_000), 4, str(tmp_path),
                         write=False).plan.rows_total == 1
    path = write_refused("hires_past_the_limit", tmp_path)
    assert plan_manifest(str(path), RowDefaults(model="tiny:sd15", max_pixels=8192 * 8192), 4, str(tmp_path),
                         write=False).plan.rows_total == 1
    with pytest.raises(ManifestError, match="column 'hires_steps'.*use 1 to 20"):
        normalize(pa.table({"prompt": ["a"], "width": [64], "height": [64], "hires_scale": [2.0],
                            "hires_steps": [21]}), RowDefaults(model="tiny:sd15", max_steps=20))


def test_nan_in_a_scalar_column_stays_missing_as_pandas_writes_nulls():
    out = normalize(pa.table({"prompt": ["a"], "guidance_scale": [math.nan], "steps": [math.nan]}), DEFAULTS)
    assert out.column("guidance_scale").to_pylist() == [DEFAULTS.guidance_scale]
    assert out.column("steps").to_pylist() == [DEFAULTS.steps]


def test_a_check_that_meets_input_it_did_not_foresee_refuses_it_with_its_place(monkeypatch):
    def choke(*args, **kwargs):
        raise ZeroDivisionError("nobody thought of this")

    monkeypatch.setattr("sdbatch.manifest.normalize.normalize_controlnets", choke)
    with pytest.raises(ManifestError, match=r"column 'controlnets': could not be checked \(ZeroDivisionError: "
                                            r"nobody thought of this\); fix or drop the value"):
        normalize(pa.table({"prompt": ["a"]}), DEFAULTS)
    monkeypatch.setattr("sdbatch.manifest.columns.seeds", choke)
    with pytest.raises(ManifestError, match=r"column 'seed': could not be checked \(ZeroDivisionError"):
        normalize(pa.table({"prompt": ["a"]}), DEFAULTS)


def test_labels_named_like_settings_are_kept_and_pointed_out():
    notes = Notes()
    out = normalize(pa.table({"prompt": ["a"], "cfg_scale": [9.0], "Steps": [20], "negative_promt": ["x"],
                              "sampler": ["Euler"], "animal": ["fox"]}), DEFAULTS, notes=notes)
    assert out.column("cfg_scale").to_pylist() == [9.0] and out.column("guidance_scale").to_pylist() == [7.5]
    (line,) = notes.lines()
    assert line.startswith("4 label column(s) look like a setting")
    assert "'cfg_scale': did you mean 'guidance_scale'?" in line and "'Steps': did you mean 'steps'?" in line
    assert "'negative_promt': did you mean 'negative_prompt'?" in line
    assert "sampler" not in line and "animal" not in line  # three examples, and a label of its own is left alone
