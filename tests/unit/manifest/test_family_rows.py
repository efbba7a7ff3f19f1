"""Rows of SD3, FLUX and Z-Image models checked against their family before any GPU: sizes, columns, schedulers, the
T5 length and true CFG, LoRA files of another family, ControlNet kinds and counts; each family's own guidance where
unset."""

import json

import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from sdbatch.errors import ManifestError, ModelLoadError
from sdbatch.family import FLUX
from sdbatch.manifest.models import family_of
from sdbatch.manifest.normalize import normalize
from sdbatch.manifest.problems import Notes
from sdbatch.settings import RowDefaults
from tests.support.util import run_cli, write_manifest

# A tensor name each kind of LoRA file has: kohya's for an SD1.5 UNet, BFL/kohya's for FLUX, diffusers' for FLUX's
# single-stream blocks, and one that both SD3 and FLUX files share (diffusers' joint blocks), which names neither.
LORA_KEYS = {"sd15": "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
             "flux_kohya": "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
             "flux": "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
             "shared": "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
             "sd3_kohya": "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight",
             "zimage": "transformer.layers.0.attention.to_q.lora_A.weight",
             "zimage_kohya": "lora_unet_layers_0_attention_to_q.lora_down.weight"}


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    for name, key in LORA_KEYS.items():
        save_file({key: torch.zeros(2, 2)}, root / f"{name}.safetensors")
    return {name: str(root / f"{name}.safetensors") for name in LORA_KEYS}


def _table(rows: list[dict]) -> pa.Table:
    names = dict.fromkeys(name for row in rows for name in row)  # from_pylist takes the first row's keys only
    return pa.Table.from_pylist([{"prompt": "a fox", **dict.fromkeys(names), **row} for row in rows])


def _messages(rows: list[dict], defaults=RowDefaults()) -> str:
    with pytest.raises(ManifestError) as info:
        normalize(_table(rows), defaults)
    return " ".join(str(info.value).split())


def test_flux_and_sd3_rows_break_their_familys_rules_each_named_with_its_fix(tmp_path):
    image = tmp_path / "edges.png"
    image.write_bytes(b"png")
    rows = [{"id": "flux-size", "model": "tiny:flux", "width": 72},
            {"id": "flux-skip", "model": "tiny:flux", "clip_skip": 2},
            {"id": "flux-sampler", "model": "tiny:flux", "scheduler": "dpmpp_2m_karras"},
            {"id": "flux-t5", "model": "tiny:flux", "max_sequence_length": 600},
            {"id": "sd3-true-cfg", "model": "tiny:sd3", "true_cfg_scale": 4.0},
            {"id": "sd15-t5", "model": "tiny:sd15", "max_sequence_length": 77},
            {"id": "sd3-cn-img2img", "model": "tiny:sd3", "controlnet": "org/cn", "control_image": str(image),
             "init_image": str(image)},
            {"id": "flux-low-cfg", "model": "tiny:flux", "true_cfg_scale": 0.5},
            {"id": "fine", "model": "tiny:flux", "width": 80, "scheduler": "Euler", "schedule": "Simple",
             "true_cfg_scale": 3.5, "max_sequence_length": 256, "negative_prompt": "blurry"},
            {"id": "sd3-fine", "model": "tiny:sd3", "width": 96, "scheduler": "euler_karras",
             "max_sequence_length": 77}]
    message = _messages(rows)
    assert "manifest has 8 problem(s) in 10 rows" in message
    assert "row id 'flux-size' (row 0): 72 is not a multiple of 16, which FLUX.1 models need; use 64 or 80" in message
    assert ("column 'clip_skip', row id 'flux-skip' (row 1): is set, but FLUX.1 models (model 'tiny:flux') take no "
            "clip_skip") in message
    assert ("row id 'flux-sampler' (row 2): 'dpmpp_2m_karras' does not work with FLUX.1 models; use one of euler, "
            "euler_simple, euler_karras, euler_exponential") in message
    assert "column 'max_sequence_length', row id 'flux-t5' (row 3): 600" in message and "1 to 512" in message
    assert "column 'true_cfg_scale', row id 'sd3-true-cfg' (row 4): is set, but SD3/3.5 models" in message
    assert "column 'max_sequence_length', row id 'sd15-t5' (row 5): is set, but SD1.x/2.x models" in message
    assert ("column 'controlnets', row id 'sd3-cn-img2img' (row 6): diffusers has no img2img pipeline with "
            "ControlNets for SD3/3.5 models") in message
    assert "column 'true_cfg_scale', row id 'flux-low-cfg' (row 7): 0.5 is under 1" in message
    assert "'fine'" not in message and "sd3-fine" not in message


def test_a_lora_file_of_another_family_is_refused_by_its_tensor_names(loras):
    rows = [{"id": "flux-sd15", "model": "tiny:flux", "loras": [{"path": loras["sd15"], "weight": 1.0}]},
            {"id": "sd15-flux", "model": "tiny:sd15", "loras": [{"path": loras["flux_kohya"], "weight": 1.0}]},
            {"id": "sd3-flux", "model": "tiny:sd3", "loras": [{"path": loras["flux"], "weight": 0.5}]},
            {"id": "flux-ok", "model": "tiny:flux", "loras": [{"path": loras["flux_kohya"], "weight": 1.0}]},
            {"id": "sd3-shared", "model": "tiny:sd3", "loras": [{"path": loras["shared"], "weight": 1.0}]},
            {"id": "xl-sd15", "model": "tiny:sdxl", "loras": [{"path": loras["sd15"], "weight": 1.0}]},
            {"id": "sd3-kohya", "model": "tiny:sd3", "loras": [{"path": loras["sd3_kohya"], "weight": 1.0}]}]
    message = _messages(rows)
    assert "manifest has 4 problem(s) in 7 rows" in message
    assert ("row id 'sd3-kohya' (row 6): " + repr(loras["sd3_kohya"]) + " is in kohya/A1111 format, which diffusers "
            "does not convert for SD3/3.5 models; use a diffusers/PEFT-format file of this LoRA") in message
    assert (f"row id 'flux-sd15' (row 0): '{loras['sd15']}' is a LoRA for SD1.x/2.x or SDXL models (its tensor "
            "names), but the row's model is FLUX.1; use a LoRA trained for the row's model") in message
    assert "row id 'sd15-flux' (row 1)" in message and "is a LoRA for FLUX.1 models" in message
    assert "row id 'sd3-flux' (row 2)" in message
    # Files whose names fit the row's family, or name no family (the actor's load judges them), pass.
    assert all(f"'{name}'" not in message for name in ("flux-ok", "sd3-shared", "xl-sd15"))


def test_each_family_gets_its_own_guidance_unless_the_row_or_the_job_sets_one():
    rows = [{"id": "flux", "model": "tiny:flux"}, {"id": "sd", "model": "tiny:sd15"},
            {"id": "flux-set", "model": "tiny:flux", "guidance_scale": 2.0}, {"id": "sd3", "model": "tiny:sd3"}]
    table = normalize(_table(rows), RowDefaults())
    assert table.column("guidance_scale").to_pylist() == [3.5, 7.5, 2.0, 7.5]
    assert "true_cfg_scale" not in table.column_names and "max_sequence_length" not in table.column_names
    job = normalize(_table(rows), RowDefaults(guidance_scale=5.0, max_sequence_length=128))
    assert job.column("guidance_scale").to_pylist() == [5.0, 5.0, 2.0, 5.0]
    assert job.column("max_sequence_length").to_pylist() == [128] * 4  # the job's default is no row's own


def test_validate_and_submit_refuse_a_bad_flux_row_with_exit_2_and_write_nothing(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", _table([{"id": "a", "model": "tiny:flux", "width": 72}]))
    for args in (("manifest", "validate", str(manifest)),
                 ("submit", str(manifest), "--output", str(tmp_path / "out"))):
        result = run_cli(*args)
        message = " ".join(result.stderr.split())
        assert result.returncode == 2 and "not a multiple of 16, which FLUX.1 models need" in message, args
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_weights_in_a_flux_prompt_are_noted_as_not_applied_and_the_row_is_kept():
    notes = Notes()
    rows = [{"id": "w", "model": "tiny:flux", "prompt": "a (red:1.3) fox"},
            {"id": "p", "model": "tiny:flux", "prompt": "a (red) fox", "prompt_syntax": "plain"},
            {"id": "sd", "model": "tiny:sd15", "prompt": "a (red:1.3) fox"},
            {"id": "neg", "model": "tiny:sd3", "prompt": "a fox", "negative_prompt": "[blurry]"}]
    table = normalize(_table(rows), RowDefaults(), notes=notes)
    assert table.num_rows == 4
    [note] = notes.lines()
    assert note.startswith("2 prompt(s) of models whose pipeline encodes plain text (SD3, FLUX) carry A1111 weights")
    assert "row id 'w' (row 0) (FLUX.1)" in note and "row id 'neg' (row 3) (SD3/3.5)" in note and "'sd'" not in note


def _cached_hub_model(cache, repo: str, class_name: str) -> None:
    """A hub model's model_index.json in a Hugging Face cache, laid out as huggingface_hub writes it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    (folder / "snapshots" / "abc123" / "model_index.json").write_text(json.dumps({"_class_name": class_name}))


def test_a_hub_models_family_comes_from_its_cached_configs_before_any_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _cached_hub_model(tmp_path, "org/flux-dev", "FluxPipeline")
    _cached_hub_model(tmp_path, "org/pixart", "PixArtSigmaPipeline")
    assert family_of("org/flux-dev") is FLUX
    assert family_of("org/not-cached") is None  # offline and not cached: the actor's warm-up tells
    message = _messages([{"id": "a", "model": "org/flux-dev", "width": 72, "clip_skip": 2}])
    assert "72 is not a multiple of 16, which FLUX.1 models need" in message and "take no clip_skip" in message
    with pytest.raises(ModelLoadError, match="model 'org/pixart' is a PixArtSigmaPipeline, which sdbatch does not"):
        normalize(_table([{"id": "a", "model": "org/pixart"}]), RowDefaults())


def test_controlnet_rows_a_familys_pipelines_cannot_take_are_refused(tmp_path):
    image = tmp_path / "edges.png"
    image.write_bytes(b"png")
    control = {"controlnet": "org/cn", "control_image": str(image)}
    hires = {"hires_scale": 1.5, "width": 64, "height": 64}
    rows = [{"id": "flux-latent", "model": "tiny:flux", **control, **hires},
            {"id": "flux-image", "model": "tiny:flux", **control, **hires, "hires_upscaler": "image"},
            {"id": "flux-cfg-img2img", "model": "tiny:flux", **control, "init_image": str(image),
             "true_cfg_scale": 3.0},
            {"id": "flux-cfg", "model": "tiny:flux", **control, "true_cfg_scale": 3.0},
            {"id": "sd3-hires", "model": "tiny:sd3", **control, **hires, "hires_upscaler": "image"}]
    message = _messages(rows)
    assert "manifest has 3 problem(s) in 5 rows" in message
    assert ("column 'hires_upscaler', row id 'flux-latent' (row 0): is latent, but FLUX.1's ControlNet img2img "
            "pipeline takes images") in message
    assert "column 'true_cfg_scale', row id 'flux-cfg-img2img' (row 2): is above 1" in message
    assert ("column 'controlnets', row id 'sd3-hires' (row 4): diffusers has no img2img pipeline with ControlNets "
            "for SD3/3.5 models (a hires pass is one)") in message


def test_zimage_rows_break_their_familys_rules_and_other_families_loras_are_refused_both_ways(tmp_path, loras):
    image = str(tmp_path / "edges.png")
    (tmp_path / "edges.png").write_bytes(b"png")
    net = {"model": "org/cn", "image": image, "scale": 1.0}
    rows = [{"id": "z-size", "model": "tiny:zimage", "height": 40},
            {"id": "z-skip", "model": "tiny:zimage", "clip_skip": 2},
            {"id": "z-true-cfg", "model": "tiny:zimage", "true_cfg_scale": 3.0},
            {"id": "z-sampler", "model": "tiny:zimage", "scheduler": "dpmpp_2m"},
            {"id": "z-two-nets", "model": "tiny:zimage", "controlnets": [net, net]},
            {"id": "z-net-img2img", "model": "tiny:zimage", "controlnets": [net], "init_image": image},
            {"id": "z-flux-lora", "model": "tiny:zimage", "loras": [{"path": loras["flux"], "weight": 1.0}]},
            {"id": "flux-z-lora", "model": "tiny:flux", "loras": [{"path": loras["zimage"], "weight": 1.0}]},
            {"id": "z-fine", "model": "tiny:zimage", "width": 80, "scheduler": "euler_karras", "controlnets": [net],
             "max_sequence_length": 256, "loras": [{"path": loras["zimage"], "weight": 1.0},
                                                   {"path": loras["zimage_kohya"], "weight": 0.5}]}]
    message = _messages(rows)
    assert "manifest has 8 problem(s) in 9 rows" in message
    assert "row id 'z-size' (row 0): 40 is not a multiple of 16, which Z-Image models need; use 32 or 48" in message
    assert "column 'clip_skip', row id 'z-skip' (row 1): is set, but Z-Image models" in message
    assert "column 'true_cfg_scale', row id 'z-true-cfg' (row 2): is set, but Z-Image models" in message
    assert "row id 'z-sampler' (row 3): 'dpmpp_2m' does not work with Z-Image models" in message
    assert ("column 'controlnets', row id 'z-two-nets' (row 4): lists 2 ControlNets, but diffusers' Z-Image "
            "ControlNet pipeline takes 1; keep one per row") in message
    assert ("column 'controlnets', row id 'z-net-img2img' (row 5): diffusers has no img2img pipeline with "
            "ControlNets for Z-Image models") in message
    assert ("row id 'z-flux-lora' (row 6): " + repr(loras["flux"]) + " is a LoRA for FLUX.1 models (its tensor "
            "names), but the row's model is Z-Image") in message
    assert ("row id 'flux-z-lora' (row 7): " + repr(loras["zimage"]) + " is a LoRA for Z-Image models (its tensor "
            "names), but the row's model is FLUX.1") in message
    assert "z-fine" not in message  # kohya files too: diffusers converts them for Z-Image


def test_zimage_rows_get_turbos_guidance_unless_the_row_or_the_job_sets_one():
    rows = [{"id": "z", "model": "tiny:zimage"}, {"id": "z-set", "model": "tiny:zimage", "guidance_scale": 4.0}]
    assert normalize(_table(rows), RowDefaults()).column("guidance_scale").to_pylist() == [0.0, 4.0]
    assert normalize(_table(rows), RowDefaults(guidance_scale=3.0)).column("guidance_scale").to_pylist() == [3.0, 4.0]
