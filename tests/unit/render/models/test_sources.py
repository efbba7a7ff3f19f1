"""Model sources and VAE overrides: single-file checkpoints, per-row VAEs, local references checked early."""


import numpy as np
import pytest
import torch

from sdbatch.render.models.loading import load_model
from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore
from tests.support.model_files import model_row, write_models

pytestmark = pytest.mark.usefixtures("tiny_cache")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny SD1.5-style folder (seed 1, so not tiny:sd15's weights), the same as a single file, a tiny VAE."""
    return write_models(tmp_path_factory.mktemp("models"))


def _render(pipe) -> np.ndarray:
    out = pipe(prompt=["a red cube"], num_inference_steps=2, output_type="np",
               generator=[torch.Generator().manual_seed(0)])
    return out.images


def test_single_file_checkpoint_renders_as_its_folder(models):
    folder = load_model(str(models["folder"]), CPU, torch.float32)
    single = load_model(str(models["single"]), CPU, torch.float32)
    assert type(single.pipeline).__name__ == "StableDiffusionPipeline" and single.native_size == (64, 64)
    image = _render(single.pipeline)
    assert np.abs(image - _render(folder.pipeline)).max() < 1e-5
    assert np.abs(image - _render(load_model("tiny:sd15", CPU, torch.float32).pipeline)).max() > 0.05


def test_vae_override_changes_the_image_and_rows_without_it_keep_the_models_own(models, tmp_path):
    r = Renderer(LocalStore(str(tmp_path)), RendererSettings(cpu_threads=2, io_threads=1))
    try:
        rows = [model_row(0), model_row(1, vae=str(models["vae"])), model_row(2),
                model_row(3, vae=str(tmp_path / "no-vae"))]
        out = {o.row["id"]: o for o in r.render_rows(rows)}
        px = {k: np.asarray(o.image, np.int16) for k, o in out.items() if o.error is None}
        assert np.abs(px["r1"] - px["r0"]).max() > 8
        assert np.abs(px["r2"] - px["r0"]).max() <= 1  # the model's own VAE is back
        assert "VAE" in out["r3"].error and "does not exist" in out["r3"].error
        assert r.resident()["vaes"] == [str(models["vae"])]
        assert out["r1"].vae_hash and out["r0"].vae_hash is None  # recorded per image as results' vae_hash
    finally:
        r.close()


def test_local_references_are_checked_before_any_actor_starts(models, tmp_path):
    import pyarrow as pa

    from sdbatch.errors import ManifestError
    from sdbatch.manifest.models import check_local_references

    (tmp_path / "old.ckpt").write_bytes(b"pickle")
    ok = pa.table({"model": [str(models["single"]), str(models["folder"]), "tiny:sdxl", "org/name"],
                   "vae": [str(models["vae"]), None, None, None]})
    check_local_references(ok)
    for column, value, message in (("model", str(tmp_path / "gone.safetensors"), "does not exist"),
                                   ("model", str(tmp_path / "old.ckpt"), "convert it to .safetensors"),
                                   ("vae", str(tmp_path / "no-vae"), "does not exist"),
                                   ("model", str(tmp_path), "not a diffusers folder")):
        with pytest.raises(ManifestError, match=message) as info:
            check_local_references(pa.table({column: [value]}))
        assert f"column '{column}'" in str(info.value)


def test_submit_takes_a_single_file_model_and_refuses_a_missing_one_before_ray(models, tmp_path):
    from sdbatch.errors import ManifestError
    from sdbatch.run.driver import SubmitRequest, prepare
    from sdbatch.spec import load_spec
    from tests.support.util import write_manifest

    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a cube"}])
    single = load_spec(None, {"defaults.model": str(models["single"]), "defaults.vae": str(models["vae"])})
    with prepare(SubmitRequest(str(manifest), str(tmp_path / "out"), single)) as prepared:
        assert prepared.plan.rows_total == 1
    missing = load_spec(None, {"defaults.model": str(tmp_path / "gone.safetensors")})
    with pytest.raises(ManifestError, match="does not exist"):
        prepare(SubmitRequest(str(manifest), str(tmp_path / "out2"), missing))
    assert not (tmp_path / "out2").exists()
