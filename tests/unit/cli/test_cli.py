"""The CLI as a user runs it: bad input exits 2 naming column, row and fix, and writes nothing."""

import socket

import pyarrow.parquet as pq
import pytest

from tests.support.odd_manifests import REFUSED, write_damaged_page, write_refused, write_repeated_column
from tests.support.util import run_cli, tiny_rows, write_manifest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_MANIFESTS = {
    "missing_prompt": ([{"id": "a", "text": "x"}], ["column 'prompt'", "add a string column 'prompt'"]),
    "duplicate_ids": ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}],
                      ["column 'id'", "row id 'a'", "unique"]),
    "slash_id": ([{"id": "x/y", "prompt": "x"}], ["column 'id'", "row id 'x/y'", "rename it"]),
    "dotdot_id": ([{"id": "..", "prompt": "x"}], ["column 'id'", "row id '..'", "rename it"]),
    "width": ([{"id": "w", "prompt": "x", "width": 100}], ["column 'width'", "row id 'w'", "use 96 or 104"]),
    "steps": ([{"id": "s", "prompt": "x", "steps": 0}], ["column 'steps'", "row id 's'", "use 1 to 1000 steps"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_exits_2_and_writes_nothing(tmp_path, case):
    rows, needles = BAD_MANIFESTS[case]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    result = run_cli("submit", str(manifest), "--output", str(out), "--model", "tiny:sd15")
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    for needle in needles:
        assert needle in message
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_not_parquet_and_missing_paths_exit_2(tmp_path):
    csv = tmp_path / "m.parquet"
    csv.write_text("id,prompt\na,x\n")
    for path, needle in ((csv, "not a Parquet file"), (tmp_path / "absent.parquet", "does not exist")):
        result = run_cli("submit", str(path), "--output", str(tmp_path / "out"))
        assert result.returncode == 2 and needle in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()


def test_a_bad_render_option_flag_exits_2_naming_it_and_writes_nothing(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", tiny_rows(2))
    out = tmp_path / "out"
    result = run_cli("submit", str(manifest), "--output", str(out), "--model", "tiny:sd15",
                     "--step-cache", "first_block:3")
    assert result.returncode == 2 and "render.step_cache = 'first_block:3'" in result.stderr
    assert "threshold between 0 and 1" in " ".join(result.stderr.split()) and not out.exists()
    # A valid step cache, but rows of a family diffusers has none for: refused before any actor starts.
    result = run_cli("submit", str(manifest), "--output", str(out), "--model", "tiny:sd15",
                     "--step-cache", "taylorseer:4")
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "column 'model'" in message and "no step caching" in message
    assert "Ray" not in result.stderr + result.stdout and not out.exists()


def test_unreachable_s3_endpoint_is_reported_before_rendering(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", tiny_rows(2))
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result = run_cli("submit", str(manifest), "--output", "s3://bucket/run", "--s3-endpoint", endpoint,
                     "--model", "tiny:sd15", env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
                     timeout=60)
    assert result.returncode == 2
    assert endpoint in " ".join(result.stderr.split())
    assert "Ray" not in result.stderr + result.stdout  # no cluster was started


def test_manifest_new_validate_show(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na cat\n\na dog\n")
    out = tmp_path / "m.parquet"
    assert run_cli("manifest", "new", str(prompts), "-o", str(out), "--seeds", "3").returncode == 0
    table = pq.read_table(out)
    assert table.num_rows == 6 and table.column("prompt").to_pylist().count("a dog") == 3
    assert len(set(table.column("id").to_pylist())) == 6
    validated = run_cli("manifest", "validate", str(out), "--job", "jobs/demo.toml")
    assert validated.returncode == 0 and "6 rows" in validated.stdout
    shown = run_cli("manifest", "show", str(out))
    assert shown.returncode == 0 and "6 rows" in shown.stdout and "variants" in shown.stdout


def test_validate_takes_the_prompt_flags_a_manifest_from_images_needs(tmp_path):
    """Rows pinned to embeddings (ti_hashes, as from-images writes them) validate only with an embedding folder,
    which `manifest validate` takes as submit does; its clip skip default is checked as submit's is."""
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "x EasyNegative",
                                                        "ti_hashes": "EasyNegative: c74b4e810b03"}])
    without = run_cli("manifest", "validate", str(manifest))
    assert without.returncode == 2 and "pass --embedding-dir" in " ".join(without.stderr.split())
    (tmp_path / "embeddings").mkdir()
    assert run_cli("manifest", "validate", str(manifest), "--embedding-dir", str(tmp_path / "embeddings"),
                   "--clip-skip", "2").returncode == 0
    too_deep = run_cli("manifest", "show", str(manifest), "--embedding-dir", str(tmp_path / "embeddings"),
                       "--clip-skip", "0")
    assert too_deep.returncode == 2 and "clip_skip" in too_deep.stderr


def test_bad_job_setting_exits_2(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", tiny_rows(1))
    result = run_cli("submit", str(manifest), "--output", str(tmp_path / "o"), "--format", "gif")
    assert result.returncode == 2 and "output.format" in result.stderr


def test_models_tiny_writes_a_loadable_model(tmp_path):
    result = run_cli("models", "tiny", str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tiny" / "model_index.json").is_file()
    assert (tmp_path / "tiny" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_the_summary_prints_errors_as_they_are_and_groups_shards_not_done_by_reason():
    """Errors carry brackets (shapes, paths, library messages) that the console must not read as styles;
    a model that cannot load gives up many shards for one reason, said once."""
    import io

    from rich.console import Console

    from sdbatch.cli.run_cmd import print_summary
    from sdbatch.run.driver import RunSummary

    counts = {"rows_total": 9, "rows_ok": 2, "rows_failed": 1, "rows_pending": 6, "shards_done": 1,
              "shards_total": 8}
    stats = {"rows_rendered": 3, "rows_adopted": 0, "shards_skipped": 0, "model_loads": 1, "lora_loads": 0,
             "controlnet_loads": 0, "actors": 1, "images_per_second": 1.0, "wall_seconds": 3.0}
    broken = "ModelLoadError: model 'x' failed to load: [red]size mismatch[/red] torch.Size([4, 8])."
    gave_up = {f"00000{n}": broken for n in range(1, 7)} | {"000007": "OSError: disk [full]"}
    out = io.StringIO()
    print_summary(Console(file=out, width=400), RunSummary("o", counts, [{"id": "r1", "error": "[bold]x"}],
                                                           gave_up, stats))
    said = out.getvalue()
    assert "failed r1: [bold]x" in said
    assert ("6 shards (000001, 000002, 000003, 000004, 000005 and 1 more) not done: ModelLoadError: model 'x' "
            "failed to load: [red]size mismatch[/red] torch.Size([4, 8]); rerun the same command to retry") in said
    assert "shard 000007 not done: OSError: disk [full]; rerun" in said


def _odd_files(folder) -> dict:
    files = {name: write_refused(name, folder) for name in REFUSED}
    return {**files, "repeated": write_repeated_column(folder), "damaged": write_damaged_page(folder)}


def test_no_odd_manifest_gets_a_traceback_from_validate(tmp_path, capsys):
    """In this process, through the one error handler, as `main` runs it: a subprocess each would cost seconds."""
    from sdbatch.cli.app import app
    from sdbatch.cli.handler import run_with_errors

    for name, path in _odd_files(tmp_path).items():
        code = run_with_errors(lambda **kwargs: app(args=["manifest", "validate", str(path)], **kwargs))  # noqa: B023
        stderr = capsys.readouterr().err
        assert code == 2, (name, stderr)
        assert stderr.startswith("error: manifest") and "\x1b[31mred" not in stderr, (name, stderr)


@pytest.mark.parametrize("name", ["not_utf8", "damaged", "repeated", "long_path_component", "loras_not_a_list",
                                  "terminal_controls"])
def test_a_refused_submit_writes_nothing(tmp_path, name):
    """Text that is not UTF-8 once passed validation and left an output that could never finish."""
    path = _odd_files(tmp_path)[name]
    out = tmp_path / "out"
    result = run_cli("submit", str(path), "--output", str(out), "--model", "tiny:sd15")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


def test_unbalanced_brackets_are_a_warning_and_a1111_strict_refuses_them(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a (fox"}, {"id": "b", "prompt": "x)"}])
    result = run_cli("manifest", "validate", str(manifest))
    assert result.returncode == 0, result.stderr
    assert "warning: 2 prompt(s) have unbalanced brackets" in " ".join(result.stderr.split())
    result = run_cli("manifest", "validate", str(manifest), "--prompt-syntax", "a1111-strict")
    assert result.returncode == 2 and "row id 'a'" in result.stderr and "never closed" in result.stderr


def test_an_unknown_option_is_a_usage_error_not_a_traceback(tmp_path):
    result = run_cli("manifest", "validate", str(tmp_path / "m.parquet"), "--no-such-flag")
    assert result.returncode == 2 and "No such option" in result.stderr and "Traceback" not in result.stderr


def test_paths_no_machine_can_hold_are_usage_errors_in_flags_too(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "x"}])
    for flags, needle in ((["--embedding-dir", "~nosuchuser/e"], "a user this machine does not have"),
                          (["--job", str(tmp_path / ("j" * 300 + ".toml"))], "cannot be read (OSError)"),
                          (["--job", str(tmp_path)], "cannot be read (IsADirectoryError)")):
        result = run_cli("manifest", "validate", str(manifest), *flags)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert needle in " ".join(result.stderr.split())


def test_demo_family_takes_a_family_or_its_tiny_models_name_and_refuses_others():
    import typer

    from sdbatch.cli.run_cmd import _family_model

    assert _family_model("flux") == {"defaults.model": "tiny:flux", "defaults.guidance_scale": 3.5}
    assert _family_model("sd15") == _family_model("sd1") == {"defaults.model": "tiny:sd15",
                                                             "defaults.guidance_scale": None}
    with pytest.raises(typer.BadParameter, match="'sd9' is not a family with a tiny model; use one of sd1, sdxl"):
        _family_model("sd9")


def test_score_flags_are_checked_before_anything_starts(tmp_path):
    """A step without its model, a model file that is not there, an unknown step: exit 2, nothing written."""
    manifest = write_manifest(tmp_path / "m.parquet", tiny_rows(2))
    out = tmp_path / "out"
    cases = [(["--score", "clip,aesthetic"], "score.aesthetic_model = None"),
             (["--score", "safety", "--safety-model", str(tmp_path / "nsfw.pth")], "names no file or folder here"),
             (["--score", "clip,sharpness"], "unknown score step 'sharpness'")]
    for flags, needle in cases:
        result = run_cli("submit", str(manifest), "--output", str(out), "--model", "tiny:sd15", *flags)
        assert result.returncode == 2 and needle in " ".join(result.stderr.split()), result.stderr
        assert not out.exists()
    job = tmp_path / "job.toml"
    job.write_text('[score]\nsteps = ["aesthetic"]\naesthetic_model = "/tmp/a\\u0000b.pth"\n')  # a NUL: no path
    result = run_cli("submit", str(manifest), "--output", str(out), "--model", "tiny:sd15", "--job", str(job))
    assert result.returncode == 2 and "NUL character" in " ".join(result.stderr.split()), result.stderr
    scored = run_cli("score", str(out), "--steps", "phash")
    assert scored.returncode == 2 and "holds no sdbatch run" in " ".join(scored.stderr.split()), scored.stderr
