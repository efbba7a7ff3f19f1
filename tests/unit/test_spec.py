"""Job specs: TOML loading, flag overrides, validation and the run identity."""

import json

import pytest

from sdbatch.errors import SpecError
from sdbatch.spec import JobSpec, load_spec
from tests.support.util import REPO


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
    ("[run]\nstart_timeout = 0\n", "run.start_timeout"),
    ("[run]\nhung_shard_factor = 0.5\n", "run.hung_shard_factor"),
    ("[run]\nhung_shard_seconds = -1\n", "run.hung_shard_seconds"),
    ("[run]\nray_restarts = -1\n", "run.ray_restarts"),
    ("[run]\nheartbeat_seconds = 0\n", "run.heartbeat_seconds"),
    ("not toml at all [", "not valid TOML"),
    ("[render]\ndtype = 'half'\n", "render.dtype"),
    ("[render]\ncompile_mode = 'fast'\n", "render.compile_mode"),
    ("[render]\ncompile = 'yes'\n", "render.compile"),
    ("[run]\nbatch_size = 0\n", "run.batch_size"),
    ("[defaults]\nclip_skip = 33\n", "defaults.clip_skip = 33 .*use 1 \\(no skip\\) to 32"),
    ("[render]\noffload = 'disk'\n", "render.offload = 'disk' .*use one of none, model, sequential"),
    ("[render]\noffload = 'model'\n[run]\ndevice = 'cpu'\n", "render.offload.*with run.device = cpu use none"),
    ("[render]\nquantize = 'int4'\n", "render.quantize = 'int4' .*use one of none, int8, fp8"),
    ("[render]\nquantize = 'fp8'\n[run]\ndevice = 'cpu'\n", "render.quantize = 'fp8' .*on the CPU use int8"),
    ("[render]\nstep_cache = 'first_block'\n", "render.step_cache.*threshold between 0 and 1"),
    ("[render]\nstep_cache = 'taylorseer:1'\n", "render.step_cache.*interval of 2 steps or more"),
    ("[render]\nstep_cache = 'mag:0.1'\n", "render.step_cache = 'mag:0.1' .*use none, first_block:<value>"),
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


def test_step_cache_and_quantize_change_the_identity_and_offload_does_not():
    """They change images; offloading only moves weights. Unset, the identity is what it was before they existed."""
    base = load_spec(None).identity()
    assert "render" not in base
    assert load_spec(None, {"render.offload": "model"}).identity() == base
    cached = load_spec(None, {"render.step_cache": "first_block:0.08"}).identity()
    assert cached["render"] == {"step_cache": "first_block:0.08"}
    assert load_spec(None, {"render.step_cache": "first_block:0.1"}).identity() != cached
    assert load_spec(None, {"render.quantize": "int8"}).identity()["render"] == {"quantize": "int8"}


def _from_job_json(data: dict) -> JobSpec:
    """The spec as a resumed or cluster-side driver reads it: job.json's JSON through load_spec."""
    return load_spec("job.json", text=json.dumps(data))


def test_round_trip_through_dict():
    spec = load_spec(None, {"defaults.width": 64, "run.actors": 2})
    assert _from_job_json(spec.to_dict()) == spec
    assert isinstance(spec, JobSpec)




def test_render_section_reaches_the_actor_settings_and_stays_out_of_the_identity(tmp_path):
    from sdbatch.engine.cluster import PoolShape, renderer_settings
    from sdbatch.settings import S3Settings

    path = tmp_path / "job.toml"
    path.write_text("[render]\ncompile = true\nlora_rank = 128\n[run]\nbatch_size = 8\n")
    spec = load_spec(path, {"render.dtype": "float16"})
    settings = renderer_settings(spec, PoolShape(2, 1, 0), S3Settings(), "actor-0")
    assert (settings.fast.compile, settings.fast.lora_rank, settings.fast.dtype) == (True, 128, "float16")
    assert settings.batch_size == 8 and settings.cpu_threads is None  # a GPU actor leaves torch's threads alone
    assert spec.identity() == load_spec(None).identity()
    assert load_spec(None).run.batch_size is None  # unset: what fits the GPU


def test_job_json_from_before_the_render_section_still_resumes():
    data = load_spec(None, {"defaults.steps": 7}).to_dict()
    del data["render"]
    assert _from_job_json(data).defaults.steps == 7


def test_score_section_parses_its_steps_checks_their_models_and_stays_out_of_the_identity():
    spec = load_spec(text='[score]\nsteps = ["phash", "clip"]\nclip_model = "tiny:clip"\n')
    assert spec.score.steps == ("phash", "clip") and spec.score.clip_model == "tiny:clip"
    assert load_spec(overrides={"score.steps": "clip, phash"}).score.steps == ("clip", "phash")
    assert spec.identity() == JobSpec().validate().identity()  # adding a step must not make it another run
    assert load_spec("job.json", text=json.dumps(spec.to_dict())).score == spec.score  # job.json round trip
    with pytest.raises(SpecError, match=r"score.aesthetic_model = None .* aesthetic step needs it: the LAION"):
        load_spec(overrides={"score.steps": "aesthetic"})
    with pytest.raises(SpecError, match=r"unknown score step 'clipp'; use any of clip, aesthetic, safety, phash"):
        load_spec(overrides={"score.steps": "clipp"})
    with pytest.raises(SpecError, match="named twice"):
        load_spec(overrides={"score.steps": "phash,phash"})
    for odd in ("steps = 5", "steps = [1, 2]", 'steps = ["clip", 3]'):  # before: a TypeError's traceback
        with pytest.raises(SpecError, match="give step names as text"):
            load_spec(text=f"[score]\n{odd}\n")
