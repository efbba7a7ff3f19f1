"""SD3.5 and FLUX.1 single files: family from tensor names, rendered as their folders, lacking parts from a base."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdbatch.errors import ModelLoadError
from sdbatch.family import FLUX, SD1, SD3, SDXL, checkpoint_for
from sdbatch.render.models.loading import load_model
from tests.support import family_checks as checks

pytestmark = pytest.mark.usefixtures("tiny_cache")
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def flux_width():
    """diffusers' FLUX converter assumes FLUX.1's width; the tiny transformer's goes through it padded."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    from tests.support.dit_checkpoints import at_tiny_flux_width

    entry = SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(entry, "checkpoint_mapping_fn", at_tiny_flux_width(entry["checkpoint_mapping_fn"]))
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_cache):
    from tests.support.dit_checkpoints import write_dit_models

    return write_dit_models(tmp_path_factory.mktemp("dit-files"))


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    r = checks.new_renderer(tmp_path_factory.mktemp("dit-out"))
    yield r
    r.close()


def test_the_family_and_kind_come_from_tensor_names_and_sd1_or_sdxl_files_stay_theirs():
    unet = "model.diffusion_model.input_blocks.0.0.weight"  # SD1.x and SDXL files share the SD3 files' root
    cases = [({unet, "cond_stage_model.transformer.text_model.x"}, SD1, "sd15"),
             ({unet, "conditioner.embedders.1.model.ln_final.weight"}, SDXL, "sdxl"),
             ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "first_stage_model.encoder.x",
               "text_encoders.clip_l.transformer.text_model.x"}, SD3, "sd3-medium"),
             ({"model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight"}, SD3, "sd35-medium"),
             ({"joint_blocks.37.x_block.mlp.fc1.weight", "joint_blocks.0.x_block.mlp.fc1.weight"}, SD3, "sd35-large"),
             ({"double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"}, FLUX, "flux-dev"),
             ({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight"}, FLUX, "flux-schnell"),
             ({"model.diffusion_model.guidance_in.in_layer.bias", "vae.decoder.x"}, FLUX, "flux-dev")]
    for keys, family, kind in cases:
        found = checkpoint_for(keys)
        assert (found[0], found[1].name) == (family, kind), keys


def test_model_class_reads_the_header_alone(models):
    files = [str(models[name]) for name in ("flux.safetensors", "comfy-flux.safetensors", "flux-all.safetensors",
                                            "sd35.safetensors", "sd35-bare.safetensors")]
    script = ("import json, sys; from pathlib import Path; from sdbatch.family import model_class; "
              "print(json.dumps([[model_class(Path(f)) for f in sys.argv[1:]], 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script, *files], capture_output=True, text=True, check=True)
    classes, torch_imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert classes == ["FluxPipeline"] * 3 + ["StableDiffusion3Pipeline"] * 2 and not torch_imported


def test_a_flux_transformer_only_file_renders_as_its_folder_with_the_rest_from_its_base(renderer, models):
    """BFL's layout and ComfyUI's (under model.diffusion_model.): the transformer from the file, VAE and encoders
    from tiny:flux, the model its header names."""
    names = ["flux.safetensors", "comfy-flux.safetensors", "flux"]
    out = checks.render(renderer, *(checks.row(i, str(models[n])) for i, n in enumerate(names)),
                        checks.row(3, "tiny:flux"))
    folder = checks.pixels(out["r2"])
    assert np.abs(checks.pixels(out["r0"]) - folder).max() <= checks.NOISE
    assert np.abs(checks.pixels(out["r1"]) - folder).max() <= checks.NOISE
    assert np.abs(checks.pixels(out["r3"]) - folder).max() > checks.CHANGED  # the file's transformer, not the base's
    assert type(renderer.model(str(models["flux.safetensors"])).pipeline).__name__ == "FluxPipeline"


def test_a_flux_all_in_one_file_gives_every_component_itself(models):
    """ComfyUI's FLUX checkpoints hold the VAE and both text encoders too: none comes from the base model."""
    from diffusers import FluxPipeline

    loaded = load_model(str(models["flux-all.safetensors"]), CPU, torch.float32).pipeline
    folder = FluxPipeline.from_pretrained(str(models["flux-all"]))
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = loaded.components[name].state_dict(), folder.components[name].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


@pytest.mark.parametrize("name", ["sd35", "sd35-bare"])
def test_an_sd35_file_renders_as_its_folder_with_or_without_its_text_encoders(renderer, models, name):
    """With its encoders everything comes from the file (T5 in eval mode, its tied embedding filled); without, the
    three encoders come from tiny:sd3."""
    out = checks.render(renderer, checks.row(0, str(models[f"{name}.safetensors"])), checks.row(1, str(models[name])),
                        checks.row(2, "tiny:sd3"), checks.row(3, str(models[f"{name}.safetensors"])))
    folder = checks.pixels(out["r1"])
    assert np.abs(checks.pixels(out["r0"]) - folder).max() <= checks.NOISE
    assert np.abs(checks.pixels(out["r3"]) - checks.pixels(out["r0"])).max() == 0  # no dropout left on
    assert np.abs(checks.pixels(out["r2"]) - folder).max() > checks.CHANGED
    assert not renderer.model(str(models[f"{name}.safetensors"])).pipeline.text_encoder_3.training


def test_a_file_whose_base_model_is_missing_names_the_file_the_repo_and_the_fix(models, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from tests.support.dit_checkpoints import write_flux_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    bare = write_flux_file(models["flux"], tmp_path / "my-flux.safetensors")  # no header: FLUX.1-dev's repo
    with pytest.raises(ModelLoadError) as info:
        load_model(str(bare), CPU, torch.float32)
    message = str(info.value)
    for needle in ("my-flux.safetensors is a single-file flux-dev checkpoint without its vae, text_encoder, "
                   "text_encoder_2: they come from its base model, the hub repo black-forest-labs/FLUX.1-dev",
                   "hf download black-forest-labs/FLUX.1-dev --include '*.json' '*.txt' 'vae/*' 'text_encoder/*' "
                   "'text_encoder_2/*'", "sdbatch_config", "convert the file to a diffusers folder"):
        assert needle in message, message
    # The repo's configs alone in the cache: never a pipeline of configs-only components.
    _cache_configs_only(tmp_path / "hub", "black-forest-labs/FLUX.1-dev", models["flux"])
    with pytest.raises(ModelLoadError, match=r"has no weights for its vae, text_encoder, text_encoder_2 \(configs "
                                             r"only") as info:
        load_model(str(bare), CPU, torch.float32)
    assert "my-flux.safetensors" in str(info.value) and "hf download black-forest-labs/FLUX.1-dev" in str(info.value)
    named = write_flux_file(models["flux"], tmp_path / "named.safetensors", str(tmp_path / "gone"))
    with pytest.raises(ModelLoadError, match=f"named.safetensors is a single-file flux-dev checkpoint without its "
                                             f"vae, text_encoder, text_encoder_2: they come from the model its "
                                             f"sdbatch_config header names, '{tmp_path / 'gone'}', which is not"):
        load_model(str(named), CPU, torch.float32)


def _cache_configs_only(hub, repo: str, folder) -> None:
    """A Hugging Face cache holding a repo's json and txt files only, as `hf download --include '*.json'` leaves it."""
    revision = "0" * 40
    repo_dir = hub / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    for file in folder.rglob("*"):
        if file.suffix in (".json", ".txt"):
            target = repo_dir / "snapshots" / revision / file.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
