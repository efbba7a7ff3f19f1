"""Tiny random-weight LoRAs (diffusers and kohya formats) and ControlNets for the tiny SD1.5- and SDXL-style models."""

from __future__ import annotations

import json
import os
import pathlib

import torch

from sdbatch.render.tiny.build import build_pipeline

# The attention projections every SD1.5 LoRA trainer targets, in the UNet and in CLIP.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
RANK = 4
# alpha != rank on purpose: the scale alpha/rank lives only in the file's metadata (or kohya's .alpha
# keys), so a loader that drops it renders a visibly different image and a test catches it.
ALPHA = 8
# Large enough that a LoRA or ControlNet moves 8-bit pixels by far more than float noise.
LORA_B_STD = 0.5
CONTROLNET_STD = 0.2
EMBEDDING_STD = 0.3


def write_tiny_lora(path: str | os.PathLike, seed: int, unet: bool = True, text_encoder: bool = True,
                    family: str = "sd15") -> pathlib.Path:
    """A diffusers-format LoRA .safetensors (with its adapter metadata) for the tiny model of `family`; same
    seed, same tensors. For SDXL the text encoder part covers both text encoders."""
    from peft import LoraConfig

    if not (unet or text_encoder):
        raise ValueError("a LoRA needs unet=True or text_encoder=True")
    target = pathlib.Path(path)
    pipe = build_pipeline(0, family)  # any seed: only the module names and shapes matter
    parts = [("unet", pipe.unet, UNET_TARGETS, unet),
             ("text_encoder", pipe.text_encoder, TEXT_ENCODER_TARGETS, text_encoder),
             ("text_encoder_2", getattr(pipe, "text_encoder_2", None), TEXT_ENCODER_TARGETS, text_encoder)]
    layers, metadata = {}, {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module, targets, wanted in parts:
            if wanted and module is not None:
                config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets)
                layers[f"{name}_lora_layers"] = _lora_layers(module, config)
                metadata[f"{name}_lora_adapter_metadata"] = config.to_dict()
    target.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(target.parent, weight_name=target.name, **layers, **metadata)
    return target


def _lora_layers(module: torch.nn.Module, config) -> dict[str, torch.Tensor]:
    """Inject a LoRA with peft, make lora_B non-zero (peft starts it at zero: no effect), return it diffusers-style."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    # peft's own injection: transformers 5's text_encoder.add_adapter needs peft >= 0.22.
    inject_adapter_in_model(config, module)
    for name, parameter in sorted(module.named_parameters()):  # sorted: draw order fixed across versions
        if "lora_" in name:
            std = LORA_B_STD if "lora_B" in name else 1.0 / RANK
            parameter.data = torch.randn(parameter.shape) * std
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(module))


def convert_lora_to_kohya(src: str | os.PathLike, dst: str | os.PathLike) -> pathlib.Path:
    """Rewrite a diffusers LoRA file in kohya / A1111 form (lora_unet_*, lora_te_*, .alpha), same effect."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_kohya,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state = load_file(src)
    with safe_open(src, framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    # One converter per part: each only recognises its own part's diffusers key style.
    unet = {k: v for k, v in state.items() if k.startswith("unet.")}
    text = {k: v for k, v in state.items() if k.startswith("text_encoder.")}
    peft = {**(convert_unet_state_dict_to_peft(unet) if unet else {}),
            **(convert_state_dict_to_peft(text) if text else {})}
    # A1111 files name CLIP modules from the text_model root, which transformers 5 flattened away.
    peft = {k.replace("text_encoder.", "text_encoder.text_model.", 1): v for k, v in peft.items()}
    kohya = {k.replace("lora_te1_", "lora_te_", 1): v for k, v in convert_state_dict_to_kohya(peft).items()}
    for key, value in kohya.items():
        if key.endswith(".alpha"):  # the converter writes alpha = rank, which would drop the file's scale
            part = "unet" if key.startswith("lora_unet_") else "text_encoder"
            kohya[key] = torch.tensor(float(metadata.get(f"{part}.lora_alpha", value)))
    target = pathlib.Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya, target, metadata={"ss_network_module": "networks.lora"})
    return target


def write_tiny_controlnet(path: str | os.PathLike, seed: int, family: str = "sd15") -> pathlib.Path:
    """A diffusers ControlNet folder for the tiny model of `family` whose zero-initialised convolutions are
    randomised. For SDXL, from_unet carries over the text_time embedding the SDXL ControlNet pipeline feeds."""
    from diffusers import ControlNetModel

    target = pathlib.Path(path)
    pipe = build_pipeline(0, family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32))
        # from_unet zeroes these so training starts as a no-op; random weights make the net matter.
        embedding = net.controlnet_cond_embedding
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, embedding.conv_out]:
            torch.nn.init.normal_(conv.weight, std=CONTROLNET_STD)
            torch.nn.init.normal_(conv.bias, std=CONTROLNET_STD)
        # With default init the control image itself barely matters (black vs white: 2/255); wider
        # weights here make each image's content show, so a row given another row's image is caught.
        for conv in [embedding.conv_in, *embedding.blocks]:
            torch.nn.init.normal_(conv.weight, std=EMBEDDING_STD)
    net.save_pretrained(target, safe_serialization=True)
    return target
