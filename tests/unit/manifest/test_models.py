"""The driver's model checks: each readable model's family found without torch, its rules applied to every row,
and a model of no family refused (the tiny FLUX folder) before any actor or GPU."""

import dataclasses
import json

import pyarrow as pa
import pytest

from sdbatch import family as families
from sdbatch.errors import ManifestError, ModelLoadError
from sdbatch.family import SD1, SDXL
from sdbatch.manifest.models import check_local_references, check_step_cache, family_of
from sdbatch.manifest.normalize import MANIFEST_COLUMNS, normalize
from sdbatch.settings import RowDefaults
from tests.support.model_files import UNSUPPORTED_CLASS, write_unsupported_model
from tests.support.util import run_cli, write_manifest


def _folder(path, class_name):
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return str(path)


def test_each_readable_model_gets_its_family_and_tiny_ones_are_not_built(tmp_path, monkeypatch):
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path / "cache"))
    assert family_of("tiny:sd15") is SD1 and family_of("tiny:sdxl") is SDXL
    assert not (tmp_path / "cache").exists()  # mapped by name: nothing built, no torch
    assert family_of(_folder(tmp_path / "xl", "StableDiffusionXLInpaintPipeline")) is SDXL
    # What only an actor can read (the hub, s3://) or what is not here (local_problem reports it) is left alone.
    for reference in ("org/name", "s3://bucket/model", str(tmp_path / "gone"), "tiny:sd99"):
        assert family_of(reference) is None


def test_a_model_folder_of_no_family_is_refused_before_any_actor(tmp_path):
    """Refused at validation, naming its class and what sdbatch renders."""
    unsupported = write_unsupported_model(tmp_path / "pixart")
    table = pa.table({"id": ["a", "b"], "prompt": ["x", "y"], "model": [str(unsupported), "tiny:sd15"]})
    for check in (check_local_references, lambda t: normalize(t, RowDefaults())):
        with pytest.raises(ModelLoadError) as info:
            check(table)
        message = str(info.value)
        assert f"model '{unsupported}' is a {UNSUPPORTED_CLASS}, which sdbatch does not render" in message
        assert "SD1.x/2.x (StableDiffusionPipeline," in message and "FLUX.1 (FluxPipeline," in message


def test_validate_and_submit_refuse_a_model_of_no_family_with_exit_2_before_ray(tmp_path):
    unsupported = write_unsupported_model(tmp_path / "pixart")
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a fox", "model": str(unsupported)}])
    job = tmp_path / "job.toml"
    job.write_text(f'[defaults]\nmodel = "{unsupported}"\n')
    plain = str(write_manifest(tmp_path / "n.parquet", [{"prompt": "x"}]))
    for args in (("manifest", "validate", str(manifest)), ("manifest", "validate", plain, "--job", str(job)),
                 ("submit", plain, "--job", str(job), "--output", str(tmp_path / "out"))):
        result = run_cli(*args)
        message = " ".join(result.stderr.split())
        assert result.returncode == 2 and f"is a {UNSUPPORTED_CLASS}, which sdbatch does not render" in message, args
        assert "Traceback" not in result.stderr and "Ray" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()


@pytest.fixture
def picky(monkeypatch):
    """SDXL made stricter than any real family: sizes in 16s, no clip_skip or negative prompt or ControlNets, two
    samplers; the checks' machinery on one family, whatever the real ones refuse."""
    strict = dataclasses.replace(SDXL, size_multiple=16, refuses=("clip_skip", "negative_prompt"),
                                 controlnet_pipelines=None, schedulers=("euler", "euler_karras"))
    monkeypatch.setattr(families, "FAMILIES", (SD1, strict))
    return strict


def _messages(table, defaults=RowDefaults()):
    with pytest.raises(ManifestError) as info:
        normalize(table, defaults)
    return str(info.value)


def test_rows_break_their_familys_rules_and_each_problem_names_column_row_and_fix(picky, tmp_path):
    image = tmp_path / "edges.png"
    image.write_bytes(b"png")
    rows = [{"id": "xl-size", "model": "tiny:sdxl", "width": 1000},
            {"id": "xl-skip", "model": "tiny:sdxl", "clip_skip": 2},
            {"id": "xl-neg", "model": "tiny:sdxl", "negative_prompt": "blurry"},
            {"id": "xl-sampler", "model": "tiny:sdxl", "scheduler": "ddim"},
            {"id": "xl-cn", "model": "tiny:sdxl", "controlnet": "org/cn", "control_image": str(image)},
            {"id": "sd-all", "model": "tiny:sd15", "width": 1000, "clip_skip": 2, "negative_prompt": "blurry",
             "scheduler": "ddim", "controlnet": "org/cn", "control_image": str(image)},
            {"id": "xl-fine", "model": "tiny:sdxl", "width": 1024, "scheduler": "euler_karras"}]
    names = dict.fromkeys(name for row in rows for name in row)  # from_pylist would take the first row's keys only
    message = _messages(pa.Table.from_pylist([{"prompt": "a fox", **dict.fromkeys(names), **row} for row in rows]))
    assert "manifest has 5 problem(s) in 7 rows" in message
    assert ("column 'width', row id 'xl-size' (row 0): 1000 is not a multiple of 16, which SDXL models need; "
            "use 992 or 1008") in message
    assert ("column 'clip_skip', row id 'xl-skip' (row 1): is set, but SDXL models (model 'tiny:sdxl') take no "
            "clip_skip; leave it empty for this model's rows") in message
    assert "column 'negative_prompt', row id 'xl-neg' (row 2): is set" in message
    assert ("column 'scheduler', row id 'xl-sampler' (row 3): 'ddim' does not work with SDXL models; use one of "
            "euler, euler_karras or leave it empty for the model's own") in message
    assert "column 'controlnets', row id 'xl-cn' (row 4): is set, but SDXL models" in message
    assert "sd-all" not in message and "xl-fine" not in message  # another family's rows, and rows that fit


def test_a_size_off_the_common_multiple_is_reported_once_and_defaults_are_not_a_rows_own(picky):
    message = _messages(pa.table({"id": ["a"], "prompt": ["x"], "model": ["tiny:sdxl"], "width": [1004]}))
    assert "manifest has 1 problem(s)" in message and "1004 is not a multiple of 8; use 1000 or 1008" in message
    # The job's own defaults (clip_skip 1, prompt_syntax a1111, negative prompt "") fill every row: not refused.
    normalize(pa.table({"id": ["a"], "prompt": ["x"], "model": ["tiny:sdxl"], "negative_prompt": [""]}), RowDefaults())


def test_every_column_a_family_may_refuse_is_one_the_manifest_has():
    refusable = {column for family in families.FAMILIES for column in family.refuses}
    assert refusable <= set(MANIFEST_COLUMNS) - {"id", "prompt", "model", "seed"}


def test_a_step_cache_refuses_the_rows_of_families_without_one_and_only_those():
    table = pa.table({"id": ["f", "s", "z"], "model": ["tiny:flux", "tiny:sd15", "tiny:zimage"]})
    check_step_cache(table, "none")  # nothing to check
    check_step_cache(table.slice(0, 1), "first_block:0.08")  # FLUX.1's transformer has diffusers' step caching
    with pytest.raises(ManifestError) as info:
        check_step_cache(table, "first_block:0.08", first_row=10)
    message = str(info.value)
    assert "2 problem(s)" in message and "row 11" in message and "row 12" in message and "row 10" not in message
    assert "SD1.x/2.x models have no step caching" in message and "Z-Image" in message
    assert "step_cache = 'none'" in message
