"""Job specs: TOML loading, flag overrides, validation and the run identity."""

from pathlib import Path

import pytest

from sdbatch.spec import JobSpec, SpecError, load_spec, spec_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_demo_job_loads_and_flags_override_it():
    spec = load_spec(REPO / "jobs" / "demo.toml", {"defaults.steps": 3, "run.actors": 1, "output.format": None})
    assert spec.defaults.model == "tiny:sd15"
    assert spec.defaults.steps == 3 and spec.run.actors == 1
    assert spec.output.format == "png"  # None means "flag not given": the file's value stands


def test_every_shipped_job_file_is_valid():
    for path in (REPO / "jobs").glob("*.toml"):
        load_spec(path)


@pytest.mark.parametrize("text, needle", [
    ("[defaults]\nsteps = 0\n", "defaults.steps"),
    ("[defaults]\nwidth = 500\n", "defaults.width"),
    ("[defaults]\nstepz = 3\n", "defaults.stepz"),
    ("[output]\nformat = 'gif'\n", "output.format"),
    ("[defaults]\nsteps = 'ten'\n", "defaults.steps"),
    ("[nope]\nx = 1\n", "nope"),
    ("not toml at all [", "not valid TOML"),
])
def test_bad_job_files_name_the_setting(tmp_path, text, needle):
    path = tmp_path / "job.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=needle):
        load_spec(path)


def test_identity_ignores_runtime_settings_but_not_render_settings():
    base = load_spec(None)
    assert load_spec(None, {"run.actors": 7, "run.batch_size": 2}).identity() == base.identity()
    assert load_spec(None, {"defaults.steps": 12}).identity() != base.identity()
    assert load_spec(None, {"output.shard_size": 3}).identity() != base.identity()


def test_round_trip_through_dict():
    spec = load_spec(None, {"defaults.width": 64, "run.actors": 2})
    assert spec_from_dict(spec.to_dict()) == spec
    assert isinstance(spec, JobSpec)


