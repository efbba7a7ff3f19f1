"""The family descriptors, pure: which family claims a class or a checkpoint, a local model's class read without torch."""

import dataclasses
import json

import pytest

from sdbatch import family as families
from sdbatch.errors import ModelLoadError
from sdbatch.family import (
    SD1,
    SDXL,
    check_registry,
    checkpoint_family,
    checkpoint_for,
    family_for_class,
    model_class,
    tiny_family,
)


def write_header(path, tensors, metadata=None):
    """A .safetensors file as its format has it: 8 bytes of header length, the JSON header, then the data."""
    header = {name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * n, 4 * n + 4]} for n, name in enumerate(tensors)}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(4 * len(tensors)))
    return path


def write_index(folder, class_name):
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


def test_every_kind_of_pipeline_class_is_claimed_by_its_family():
    for name in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
                 "StableDiffusionControlNetPipeline", "StableDiffusionControlNetInpaintPipeline"):
        assert family_for_class(name) is SD1
    for name in ("StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline",
                 "StableDiffusionXLControlNetImg2ImgPipeline"):
        assert family_for_class(name) is SDXL
    assert SD1.pipelines.of("inpaint") == "StableDiffusionInpaintPipeline"
    assert SDXL.controlnet_pipelines.of("img2img") == "StableDiffusionXLControlNetImg2ImgPipeline"


def test_a_class_no_family_claims_is_refused_naming_it_and_the_supported_families_and_classes():
    with pytest.raises(ModelLoadError) as info:
        family_for_class("PixArtSigmaPipeline", "model '/m/pixart'")
    message = str(info.value)
    assert message.startswith("model '/m/pixart' is a PixArtSigmaPipeline, which sdbatch does not render")
    for needle in ("SD1.x/2.x (StableDiffusionPipeline,", "SDXL (StableDiffusionXLPipeline,",
                   "SD3/3.5 (StableDiffusion3Pipeline,", "FLUX.1 (FluxPipeline,",
                   "StableDiffusionXLControlNetInpaintPipeline", "Use a model of one of them"):
        assert needle in message


def test_checkpoint_tensor_names_give_the_kind_and_the_reference_repo_of_its_configs():
    cases = {"cond_stage_model.transformer.text_model.x": ("sd15", SD1, "stable-diffusion-v1-5/stable-diffusion-v1-5"),
             "cond_stage_model.model.ln_final.weight": ("sd2", SD1, "stabilityai/stable-diffusion-2-1"),
             "conditioner.embedders.1.model.ln_final.weight": ("sdxl", SDXL, "stabilityai/stable-diffusion-xl-base-1.0")}
    for key, (name, family, repo) in cases.items():
        keys = {key, "model.diffusion_model.input_blocks.0.0.weight"}
        found_family, checkpoint = checkpoint_for(keys)
        assert (checkpoint_family(keys), found_family, checkpoint.config_repo) == (name, family, repo)
    assert checkpoint_for({"transformer.x"}) is None and checkpoint_family({"transformer.x"}) is None


def test_a_local_models_class_is_read_from_its_index_or_its_header_without_torch(tmp_path):
    assert model_class(write_index(tmp_path / "xl", "StableDiffusionXLPipeline")) == "StableDiffusionXLPipeline"
    (tmp_path / "vae").mkdir()
    assert model_class(tmp_path / "vae") is None  # a lone component: no pipeline class
    sd2 = write_header(tmp_path / "sd2.safetensors", ["cond_stage_model.model.ln_final.weight"])
    assert model_class(sd2) == "StableDiffusionPipeline"
    # Configs named in the header as a local folder decide, whatever the tensors say.
    flux = write_index(tmp_path / "flux", "FluxPipeline")
    assert model_class(write_header(tmp_path / "named.safetensors", ["cond_stage_model.model.x"],
                                    {"sdbatch_config": str(flux)})) == "FluxPipeline"
    # Configs on the hub and tensors of no family: only the actor can tell.
    assert model_class(write_header(tmp_path / "hub.safetensors", ["transformer.x"], {"sdbatch_config": "org/m"})) is None


def test_a_single_file_of_no_family_or_not_safetensors_at_all_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ModelLoadError, match="other.safetensors is not a single-file SD1.x/2.x, SDXL, SD3/3.5 or FLUX.1 checkpoint "
                                             r"\(none of their tensor names\); convert it to a diffusers folder"):
        model_class(write_header(tmp_path / "other.safetensors", ["transformer.x"]))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="junk.safetensors is not a safetensors file"):
        model_class(tmp_path / "junk.safetensors")


def test_tiny_models_map_to_their_family_by_name():
    assert (tiny_family("sd15"), tiny_family("sdxl"), tiny_family("sd99")) == (SD1, SDXL, None)


def test_what_a_family_takes_follows_its_entry():
    assert all(SD1.takes(c) and SDXL.takes(c) for c in ("clip_skip", "negative_prompt", "controlnets", "loras"))
    picky = dataclasses.replace(SDXL, refuses=("clip_skip",), controlnet_pipelines=None)
    assert not picky.takes("clip_skip") and not picky.takes("controlnets") and picky.takes("loras")


def test_the_registry_is_sound_and_the_check_sees_what_would_break_it(monkeypatch):
    assert check_registry() == []
    twin = dataclasses.replace(SD1, name="twin", schedulers=("euler", "no_such_sampler"), size_multiple=24)
    monkeypatch.setattr(families, "FAMILIES", (SD1, SDXL, twin))
    problems = check_registry()
    assert "StableDiffusionPipeline is claimed by sd1 and twin" in problems
    assert "twin: scheduler 'no_such_sampler' is not in a1111.samplers" in problems
    assert "twin: native size 512 is not a multiple of 24" in problems


def test_the_hub_is_asked_for_one_config_and_not_waited_for_past_the_timeout(tmp_path, monkeypatch):
    import threading

    import huggingface_hub

    from sdbatch import family as families

    asked, release = [], threading.Event()
    index = tmp_path / "model_index.json"
    index.write_text('{"_class_name": "FluxPipeline"}')

    def download(repo, filename):
        asked.append((repo, filename))
        if repo == "org/slow":
            release.wait()  # a hub that does not answer (retrying an unreachable host)
        return str(index)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(families, "HUB_TIMEOUT", 0.2)
    families.hub_model_class.cache_clear()
    try:
        assert families.hub_model_class("org/fast") == "FluxPipeline"
        assert families.hub_model_class("org/slow") is None  # left to the actor's warm-up
        assert families.hub_model_class("org/fast") == "FluxPipeline" and asked.count(("org/fast", "model_index.json")) == 1
    finally:
        release.set()
        families.hub_model_class.cache_clear()
