"""`sdbatch export` as a user runs it: a dataset and a short summary; --where refused while no compiler exists."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from sdbatch.cli import export_cmd
from sdbatch.errors import UsageError
from tests.support.image_runs import image_run


def _app() -> typer.Typer:
    app = typer.Typer()
    export_cmd.register(app)
    app.command("noop")(lambda: None)  # two commands: typer then takes the command's name as it will in sdbatch
    return app


def test_export_writes_the_dataset_and_says_what_it_left_out(tmp_path):
    image_run(tmp_path / "run", "files", shards=2)
    result = CliRunner().invoke(_app(), ["export", str(tmp_path / "run"), str(tmp_path / "dest"),
                                         "--format", "webdataset", "--rows-per-file", "3"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "7 images exported as webdataset" in text and "(3 data files," in text
    assert "of 8 committed rows: 1 failed" in text
    assert (tmp_path / "dest" / "data" / "train-00002-of-00003.tar").is_file()


def test_an_unknown_format_is_refused_before_anything_is_read(tmp_path):
    result = CliRunner().invoke(_app(), ["export", str(tmp_path / "none"), str(tmp_path / "dest"), "--format", "zip"])
    assert isinstance(result.exception, UsageError) and "use one of parquet, imagefolder, webdataset" in str(
        result.exception)


def test_where_is_refused_clearly_without_its_compiler(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, export_cmd.WHERE_MODULE, None)  # as if the module were not there
    image_run(tmp_path / "run", "files", shards=1)
    result = CliRunner().invoke(_app(), ["export", str(tmp_path / "run"), str(tmp_path / "dest"), "--format",
                                         "parquet", "--where", "label = 'cat1'"])
    assert isinstance(result.exception, UsageError)
    assert "--where is not supported" in str(result.exception) and not (tmp_path / "dest").exists()


def test_where_goes_through_the_compiler_with_the_results_schema(tmp_path, monkeypatch):
    import types

    import pyarrow.compute as pc

    seen = {}

    def where_expression(text, schema):
        seen.update(text=text, columns=schema.names)
        return pc.field("label") == "cat1"

    monkeypatch.setitem(sys.modules, export_cmd.WHERE_MODULE,
                        types.SimpleNamespace(where_expression=where_expression))
    image_run(tmp_path / "run", "files", shards=1)
    result = CliRunner().invoke(_app(), ["export", str(tmp_path / "run"), str(tmp_path / "dest"), "--format",
                                         "parquet", "--where", "label = 'cat1'"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert seen["text"] == "label = 'cat1'" and {"label", "aesthetic", "status"} <= set(seen["columns"])
    assert "2 images exported" in text and "2 left out by --where" in text


def test_the_command_module_loads_nothing_heavy():
    code = "import sys, sdbatch.cli.export_cmd; print(' '.join({m.split('.')[0] for m in sys.modules}))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert loaded & {"torch", "diffusers", "transformers", "ray", "datasets"} == set()


def test_the_format_help_names_every_registered_format():
    from sdbatch.output.export import FORMATS

    result = CliRunner().invoke(_app(), ["export", "--help"])
    assert all(name in " ".join(result.output.split()) for name in FORMATS)
