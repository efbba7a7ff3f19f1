"""Single-file checkpoints: a diffusers SD1.x- or SDXL-style folder written in the original (LDM / SGM) key layout."""

from __future__ import annotations

import os
import pathlib
import re

import torch

# diffusers has no writer for the original layout; this is the inverse of the renames its single-file
# loader applies (diffusers' own scripts/convert_diffusers_to_original_stable_diffusion.py, generalised
# to any block count and layers_per_block so the tiny models convert too).
RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
UNET_TOP = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
            ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
            ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
VAE_ATTENTION = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
# OpenCLIP's names for a CLIP text tower (SDXL's second encoder), below text_model.
OPEN_CLIP = [("embeddings.token_embedding.weight", "token_embedding.weight"),
             ("embeddings.position_embedding.weight", "positional_embedding"), ("final_layer_norm.", "ln_final.")]
OPEN_CLIP_LAYER = [("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
                   ("mlp.fc2.", "mlp.c_proj."), ("self_attn.out_proj.", "attn.out_proj.")]


def write_single_file(folder: str | os.PathLike, path: str | os.PathLike, config: str | None = None) -> pathlib.Path:
    """Write the SD1.x- or SDXL-style diffusers model in `folder` as one original-layout .safetensors file.
    `config`: a model reference stored in the header (sdbatch.family.CONFIG_METADATA) naming a model whose configs fit."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root = pathlib.Path(folder)
    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    vae = AutoencoderKL.from_pretrained(root / "vae")
    text = CLIPTextModel.from_pretrained(root / "text_encoder")
    state = {f"model.diffusion_model.{k}": v for k, v in unet_to_original(unet).items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae_to_original(vae).items()})
    # transformers 5 names CLIP's weights from below its text_model root; the original layout includes it.
    text_state = {f"text_model.{k}": v for k, v in text.state_dict().items()}
    if (root / "text_encoder_2").is_dir():  # SDXL: CLIP-L as is, then OpenCLIP's layout for the second
        state.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in text_state.items()})
        text_2 = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2")
        state.update({f"conditioner.embedders.1.model.{k}": v for k, v in open_clip_text(text_2).items()})
    else:
        state.update({f"cond_stage_model.transformer.{k}": v for k, v in text_state.items()})
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"sdbatch_config": config} if config else {}
    save_file({k: v.contiguous() for k, v in state.items()}, str(target), metadata=metadata)
    return target


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    per_block = unet.config.layers_per_block + 1  # LDM counts a downsampler (or upsampler) as a layer
    up_has_attention = [hasattr(block, "attentions") for block in unet.up_blocks]
    out = {}
    for key, value in unet.state_dict().items():
        new = _replace_prefix(key, UNET_TOP)
        new = re.sub(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.", lambda m: (
            f"input_blocks.{per_block * int(m[1]) + int(m[3]) + 1}.{0 if m[2] == 'resnets' else 1}."), new)
        new = re.sub(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.",
                     lambda m: f"input_blocks.{per_block * (int(m[1]) + 1)}.0.op.", new)
        new = re.sub(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.", lambda m: (
            f"output_blocks.{per_block * int(m[1]) + int(m[3])}.{0 if m[2] == 'resnets' else 1}."), new)
        new = re.sub(r"^up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: (
            f"output_blocks.{per_block * int(m[1]) + per_block - 1}.{2 if up_has_attention[int(m[1])] else 1}."), new)
        new = re.sub(r"^mid_block\.attentions\.0\.", "middle_block.1.", new)
        new = re.sub(r"^mid_block\.resnets\.(\d+)\.", lambda m: f"middle_block.{2 * int(m[1])}.", new)
        if ".resnets." in key:  # a resnet's own layers are leaves: rename the last module name
            prefix, name, param = new.rsplit(".", 2)
            new = f"{prefix}.{dict(RESNET).get(name, name)}.{param}"
        out[new] = value
    return out


def open_clip_text(model) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection in OpenCLIP's layout: q, k and v in one in_proj, the projection as x @ P."""
    state = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    out = {"text_projection": state.pop("text_projection.weight").T.contiguous()}
    layers = model.config.num_hidden_layers
    for i in range(layers):
        head = f"encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{head}{proj}_proj.{kind}") for proj in "qkv"])
    for key, value in state.items():
        layer = re.match(r"^encoder\.layers\.(\d+)\.(.*)$", key)
        if layer:
            out[f"transformer.resblocks.{layer[1]}.{_replace_prefix(layer[2], OPEN_CLIP_LAYER)}"] = value
        else:
            out[_replace_prefix(key, OPEN_CLIP)] = value
    return out


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    blocks = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", key)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                     lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
                     lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.", new)
        new = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1.", new)
        new = new.replace("conv_shortcut.", "nin_shortcut.").replace("conv_norm_out.", "norm_out.")
        if ".mid.attn_1." in new:
            head, tail = new.split(".mid.attn_1.")
            new = f"{head}.mid.attn_1.{_replace_prefix(tail, VAE_ATTENTION)}"
            if value.ndim == 2:  # the original attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out[new] = value
    return out


def _replace_prefix(key: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return key

