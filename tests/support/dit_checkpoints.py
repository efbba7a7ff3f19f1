"""Single-file SD3.5 and FLUX.1 checkpoints (Stability's and BFL's layouts) written from diffusers folders."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re

import torch

from tests.support.checkpoints import vae_to_original

# diffusers has no writer for these layouts either: this inverts the renames of its single-file loaders
# (convert_flux_transformer_checkpoint_to_diffusers, convert_sd3_transformer_checkpoint_to_diffusers), with the
# block counts and widths read from the model so the tiny ones convert too.
FLUX_NAMES = [
    (r"time_text_embed\.timestep_embedder\.linear_1", "time_in.in_layer"),
    (r"time_text_embed\.timestep_embedder\.linear_2", "time_in.out_layer"),
    (r"time_text_embed\.text_embedder\.linear_1", "vector_in.in_layer"),
    (r"time_text_embed\.text_embedder\.linear_2", "vector_in.out_layer"),
    (r"time_text_embed\.guidance_embedder\.linear_1", "guidance_in.in_layer"),
    (r"time_text_embed\.guidance_embedder\.linear_2", "guidance_in.out_layer"),
    (r"context_embedder", "txt_in"), (r"x_embedder", "img_in"), (r"proj_out", "final_layer.linear"),
    (r"transformer_blocks\.(\d+)\.norm1\.linear", r"double_blocks.\1.img_mod.lin"),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear", r"double_blocks.\1.txt_mod.lin"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_q\.weight", r"double_blocks.\1.img_attn.norm.query_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_k\.weight", r"double_blocks.\1.img_attn.norm.key_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight", r"double_blocks.\1.txt_attn.norm.query_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight", r"double_blocks.\1.txt_attn.norm.key_norm.scale"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj", r"double_blocks.\1.img_mlp.0"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2", r"double_blocks.\1.img_mlp.2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj", r"double_blocks.\1.txt_mlp.0"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2", r"double_blocks.\1.txt_mlp.2"),
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0", r"double_blocks.\1.img_attn.proj"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out", r"double_blocks.\1.txt_attn.proj"),
    (r"single_transformer_blocks\.(\d+)\.norm\.linear", r"single_blocks.\1.modulation.lin"),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_q\.weight", r"single_blocks.\1.norm.query_norm.scale"),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_k\.weight", r"single_blocks.\1.norm.key_norm.scale"),
    (r"single_transformer_blocks\.(\d+)\.proj_out", r"single_blocks.\1.linear2"),
]
SD3_NAMES = [
    (r"pos_embed\.pos_embed", "pos_embed"), (r"pos_embed\.proj", "x_embedder.proj"),
    (r"time_text_embed\.timestep_embedder\.linear_1", "t_embedder.mlp.0"),
    (r"time_text_embed\.timestep_embedder\.linear_2", "t_embedder.mlp.2"),
    (r"time_text_embed\.text_embedder\.linear_1", "y_embedder.mlp.0"),
    (r"time_text_embed\.text_embedder\.linear_2", "y_embedder.mlp.2"), (r"proj_out", "final_layer.linear"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_q", r"joint_blocks.\1.x_block.attn.ln_q"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_k", r"joint_blocks.\1.x_block.attn.ln_k"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_q", r"joint_blocks.\1.context_block.attn.ln_q"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_k", r"joint_blocks.\1.context_block.attn.ln_k"),
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0", r"joint_blocks.\1.x_block.attn.proj"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out", r"joint_blocks.\1.context_block.attn.proj"),
    (r"transformer_blocks\.(\d+)\.norm1\.linear", r"joint_blocks.\1.x_block.adaLN_modulation.1"),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear", r"joint_blocks.\1.context_block.adaLN_modulation.1"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj", r"joint_blocks.\1.x_block.mlp.fc1"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2", r"joint_blocks.\1.x_block.mlp.fc2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj", r"joint_blocks.\1.context_block.mlp.fc1"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2", r"joint_blocks.\1.context_block.mlp.fc2"),
]


def write_flux_file(folder: str | os.PathLike, path: str | os.PathLike, config: str | None = None,
                    prefix: str = "", everything: bool = False) -> pathlib.Path:
    """The FLUX transformer of a diffusers folder as a transformer-only file in BFL's layout; `prefix`
    "model.diffusion_model." as ComfyUI and Forge save it; everything=True adds the VAE and text encoders as
    ComfyUI's all-in-one files hold them. `config`: the header's sdbatch_config."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    root = pathlib.Path(folder)
    state = {prefix + k: v for k, v in flux_to_original(FluxTransformer2DModel.from_pretrained(
        root / "transformer")).items()}
    if everything:
        state.update({f"vae.{k}": v for k, v in vae_to_original(AutoencoderKL.from_pretrained(root / "vae")).items()})
        state.update(text_encoders(root, {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"}))
    return _save(state, path, config)


def write_sd3_file(folder: str | os.PathLike, path: str | os.PathLike, config: str | None = None,
                   encoders: bool = True) -> pathlib.Path:
    """The SD3 model of a diffusers folder as one file in Stability's SD3.5 layout: transformer and VAE, with
    its three text encoders (`text_encoders.clip_l.`, `clip_g.`, `t5xxl.`) unless encoders=False."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    root = pathlib.Path(folder)
    transformer = SD3Transformer2DModel.from_pretrained(root / "transformer")
    state = {f"model.diffusion_model.{k}": v for k, v in sd3_to_original(transformer).items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae_to_original(AutoencoderKL.from_pretrained(
        root / "vae")).items()})
    if encoders:
        state.update(text_encoders(root, {"text_encoder": "clip_l", "text_encoder_2": "clip_g",
                                          "text_encoder_3": "t5xxl"}))
    return _save(state, path, config)


def text_encoders(root: pathlib.Path, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """A folder's text encoders (component: name) as Stability's and ComfyUI's files hold them: transformers' own
    names, CLIP's below text_model, under text_encoders.NAME.transformer.; CLIP-L without its projection (diffusers'
    loader makes it the identity) and T5 without the embedding tied to `shared` (as ComfyUI saves it)."""
    index = json.loads((root / "model_index.json").read_text())
    state = {}
    for component, name in names.items():
        library, class_name = index[component]
        model = getattr(importlib.import_module(library), class_name).from_pretrained(root / component)
        for key, value in model.state_dict().items():
            if key in ("encoder.embed_tokens.weight", "text_projection.weight" if name == "clip_l" else ""):
                continue
            if name != "t5xxl" and not key.startswith(("text_model.", "text_projection.")):
                key = f"text_model.{key}"  # transformers 5's plain CLIPTextModel names its weights from below it
            state[f"text_encoders.{name}.transformer.{key}"] = value
    return state


def flux_to_original(transformer) -> dict[str, torch.Tensor]:
    state = dict(transformer.state_dict())
    out = {}
    for i in range(len(transformer.transformer_blocks)):
        block = f"transformer_blocks.{i}.attn."
        _fuse(state, out, f"double_blocks.{i}.img_attn.qkv", [f"{block}to_{x}" for x in "qkv"])
        _fuse(state, out, f"double_blocks.{i}.txt_attn.qkv", [f"{block}add_{x}_proj" for x in "qkv"])
    for i in range(len(transformer.single_transformer_blocks)):
        block = f"single_transformer_blocks.{i}."
        parts = [f"{block}attn.to_q", f"{block}attn.to_k", f"{block}attn.to_v", f"{block}proj_mlp"]
        _fuse(state, out, f"single_blocks.{i}.linear1", parts)  # q, k, v and the MLP's input in one
    for kind in ("weight", "bias"):  # BFL's final norm gives shift then scale; diffusers' scale then shift
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(state.pop(f"norm_out.linear.{kind}"))
    out.update({_rename(k, FLUX_NAMES): v for k, v in state.items()})
    return out


def sd3_to_original(transformer) -> dict[str, torch.Tensor]:
    state = dict(transformer.state_dict())
    out = {}
    last = len(transformer.transformer_blocks) - 1
    for i in range(last + 1):
        block, joint = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        _fuse(state, out, f"{joint}x_block.attn.qkv", [f"{block}attn.to_{x}" for x in "qkv"])
        _fuse(state, out, f"{joint}context_block.attn.qkv", [f"{block}attn.add_{x}_proj" for x in "qkv"])
        if f"{block}attn2.to_q.weight" in state:  # SD3.5 Medium's second image attention (MMDiT-X)
            _fuse(state, out, f"{joint}x_block.attn2.qkv", [f"{block}attn2.to_{x}" for x in "qkv"])
            for name, original in (("to_out.0", "proj"), ("norm_q", "ln_q"), ("norm_k", "ln_k")):
                for key in [k for k in state if k.startswith(f"{block}attn2.{name}.")]:
                    out[f"{joint}x_block.attn2.{original}.{key.rsplit('.', 1)[1]}"] = state.pop(key)
    for kind in ("weight", "bias"):  # the context-only last block's norm and the final one: shift, scale swapped
        out[f"joint_blocks.{last}.context_block.adaLN_modulation.1.{kind}"] = _swap_halves(
            state.pop(f"transformer_blocks.{last}.norm1_context.linear.{kind}"))
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(state.pop(f"norm_out.linear.{kind}"))
    out.update({_rename(k, SD3_NAMES): v for k, v in state.items()})
    return out


def _fuse(state: dict, out: dict, name: str, parts: list[str]) -> None:
    for kind in ("weight", "bias"):
        out[f"{name}.{kind}"] = torch.cat([state.pop(f"{part}.{kind}") for part in parts])


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first])


def _rename(key: str, names: list[tuple[str, str]]) -> str:
    for pattern, original in names:
        new, count = re.subn(f"^{pattern}(?=\\.|$)", original, key)
        if count:
            return new
    return key


def _save(state: dict[str, torch.Tensor], path: str | os.PathLike, config: str | None) -> pathlib.Path:
    from safetensors.torch import save_file

    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target),
              metadata={"sdbatch_config": config} if config else {})
    return target


def at_tiny_flux_width(convert):
    """diffusers' FLUX converter for a FLUX transformer of any width: it splits the single blocks' fused projection
    at FLUX.1's width (3072, hard-coded in diffusers 0.42), so each part is padded to that width for it and cut back
    after. Monkeypatched into SINGLE_FILE_LOADABLE_CLASSES by tests of the tiny model."""
    def run(checkpoint, config, **kwargs):
        inner = config["num_attention_heads"] * config["attention_head_dim"]
        sizes, full = (inner, inner, inner, 4 * inner), (3072, 3072, 3072, 12288)  # q, k, v, MLP (ratio 4)
        for key in [k for k in checkpoint if re.search(r"single_blocks\.\d+\.linear1\.", k)]:
            parts = checkpoint[key].split(sizes)
            checkpoint[key] = torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.ndim - 1) + (0, n - len(p)))
                                         for p, n in zip(parts, full, strict=True)])
        converted = convert(checkpoint, config=config, **kwargs)
        for key in [k for k in converted if k.startswith("single_transformer_blocks.")]:
            if re.search(r"\.(attn\.to_[qkv]|proj_mlp)\.", key):
                converted[key] = converted[key][:4 * inner if ".proj_mlp." in key else inner]
        return converted
    return run


def write_dit_models(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tiny SD3 and FLUX folders and the single files written from them, each file's header naming the tiny model
    of its family (configs, and the parts it lacks). Seed 1 for what a file holds, so not the base's weights:
    flux, its transformer alone (bare and under model.diffusion_model.); flux-all, everything (ComfyUI's all-in-one);
    sd35, everything, CLIP-L's projection the identity as diffusers' loader makes it; sd35-bare, the transformer
    and VAE."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from sdbatch.render.models.sources import tiny_model_path
    from sdbatch.render.tiny.build import build_pipeline

    flux, sd3 = build_pipeline(1, "flux"), build_pipeline(1, "sd3")
    flux.save_pretrained(root / "flux-all")
    FluxPipeline.from_pretrained(tiny_model_path("flux"), transformer=flux.transformer).save_pretrained(root / "flux")
    with torch.no_grad():
        sd3.text_encoder.text_projection.weight.copy_(torch.eye(sd3.text_encoder.config.projection_dim))
    sd3.save_pretrained(root / "sd35")
    StableDiffusion3Pipeline.from_pretrained(tiny_model_path("sd3"), transformer=sd3.transformer,
                                             vae=sd3.vae).save_pretrained(root / "sd35-bare")
    return {"flux": root / "flux", "flux-all": root / "flux-all", "sd35": root / "sd35", "sd35-bare": root / "sd35-bare",
            "flux-all.safetensors": write_flux_file(root / "flux-all", root / "flux-all.safetensors", "tiny:flux",
                                                    prefix="model.diffusion_model.", everything=True),
            "flux.safetensors": write_flux_file(root / "flux", root / "flux.safetensors", "tiny:flux"),
            "comfy-flux.safetensors": write_flux_file(root / "flux", root / "comfy-flux.safetensors", "tiny:flux",
                                                      prefix="model.diffusion_model."),
            "sd35.safetensors": write_sd3_file(root / "sd35", root / "sd35.safetensors", "tiny:sd3"),
            "sd35-bare.safetensors": write_sd3_file(root / "sd35-bare", root / "sd35-bare.safetensors", "tiny:sd3",
                                                    encoders=False)}
