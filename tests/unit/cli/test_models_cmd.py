"""`sdbatch models tiny`, in process: each family's folder, its message, and an unknown family refused."""

import json

from typer.testing import CliRunner

from sdbatch.cli.app import app
from sdbatch.render.tiny.build import FAMILIES, is_tiny_model_dir


def test_models_tiny_writes_the_family_asked_for(tmp_path):
    result = CliRunner().invoke(app, ["models", "tiny", str(tmp_path / "flux"), "--family", "flux"])
    assert result.exit_code == 0, result.output
    assert "tiny flux model in" in result.output
    assert json.loads((tmp_path / "flux" / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    assert is_tiny_model_dir(tmp_path / "flux")


def test_models_tiny_offers_every_family_and_refuses_others(tmp_path):
    result = CliRunner().invoke(app, ["models", "tiny", str(tmp_path / "m"), "--family", "sd4"])
    assert result.exit_code == 2
    assert all(family in result.output for family in FAMILIES)
    assert not (tmp_path / "m").exists()
