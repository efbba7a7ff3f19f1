"""Tiny random-weight LoRAs (diffusers and kohya formats) and ControlNets for the tiny models of every family."""

from __future__ import annotations

import json
import os
import pathlib

import torch

from sdbatch.render.tiny.build import build_pipeline

# The attention projections every SD1.5 LoRA trainer targets, in the UNet and in CLIP.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# The same in a FLUX or SD3 transformer, with the text stream's projections (diffusers' trainers' defaults); in
# FLUX's single-stream blocks only to_q, to_k and to_v exist.
TRANSFORMER_TARGETS = [*UNET_TARGETS, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
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
                    family: str = "sd15", single_blocks: bool = True) -> pathlib.Path:
    """A diffusers-format LoRA .safetensors (with its adapter metadata) for the tiny model of `family`; same
    seed, same tensors. `unet` is the denoiser (a transformer for sd3, flux and zimage); the text encoder part covers
    the CLIP encoders the family's pipeline loads LoRAs into: both for SDXL and SD3, CLIP (not T5) for FLUX, none
    for Z-Image.
    single_blocks=False leaves FLUX's single-stream blocks out, as a kohya file of this width must."""
    from peft import LoraConfig

    if not (unet or text_encoder):
        raise ValueError("a LoRA needs unet=True or text_encoder=True")
    target = pathlib.Path(path)
    pipe = build_pipeline(0, family)  # any seed: only the module names and shapes matter
    layers, metadata = {}, {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The pipeline's own list of what its load_lora_weights fills, denoiser first.
        for name in type(pipe)._lora_loadable_modules:
            if not (text_encoder if name.startswith("text_encoder") else unet):
                continue
            targets = {"unet": UNET_TARGETS, "transformer": TRANSFORMER_TARGETS}.get(name, TEXT_ENCODER_TARGETS)
            if family == "zimage":  # one stream: its blocks' attention has no text-side projections
                targets = UNET_TARGETS
            if name == "transformer" and family == "flux" and not single_blocks:
                # fullmatch: single_transformer_blocks.* does not start with transformer_blocks.
                targets = rf"transformer_blocks\.\d+\.attn\.({'|'.join(t.replace('.', '[.]') for t in targets)})"
            config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets)
            # Peft's names (lora_A), as diffusers' SD3 and FLUX trainers save: the old-style renaming would turn
            # to_q into to_q.lora.down but leave add_q_proj, a mix that loaded only in part with FLUX's regex.
            peft_names = family in ("sd3", "flux", "zimage")
            layers[f"{name}_lora_layers"] = _lora_layers(getattr(pipe, name), config, peft_names)
            metadata[f"{name}_lora_adapter_metadata"] = config.to_dict()
    target.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(target.parent, weight_name=target.name, **layers, **metadata)
    return target


def _lora_layers(module: torch.nn.Module, config, peft_names: bool = False) -> dict[str, torch.Tensor]:
    """Inject a LoRA with peft, make lora_B non-zero (peft starts it at zero: no effect), return it diffusers-style
    (to_q.lora.down, as diffusers' SD1.5/SDXL trainers save) or with peft's names (lora_A, as its SD3/FLUX ones)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    # peft's own injection: transformers 5's text_encoder.add_adapter needs peft >= 0.22.
    inject_adapter_in_model(config, module)
    for name, parameter in sorted(module.named_parameters()):  # sorted: draw order fixed across versions
        if "lora_" in name:
            std = LORA_B_STD if "lora_B" in name else 1.0 / RANK
            parameter.data = torch.randn(parameter.shape) * std
    state = get_peft_model_state_dict(module)
    return state if peft_names else convert_state_dict_to_diffusers(state)


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


# kohya sd-scripts' names for a FLUX double block's attention: q, k and v are one fused Linear there.
KOHYA_FLUX_QKV = {"img_attn_qkv": ("to_q", "to_k", "to_v"), "txt_attn_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}
KOHYA_FLUX_PROJ = {"img_attn_proj": "to_out.0", "txt_attn_proj": "to_add_out"}


def convert_flux_lora_to_kohya(src: str | os.PathLike, dst: str | os.PathLike) -> pathlib.Path:
    """Rewrite a tiny:flux diffusers LoRA file in kohya sd-scripts form (lora_unet_double_blocks_*, lora_te1_*,
    .alpha), same effect: diffusers' FluxLoraLoaderMixin converts it back on load."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state = load_file(src)
    with safe_open(src, framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    if any(k.startswith("transformer.single_transformer_blocks.") for k in state):
        # kohya fuses a single block's q, k, v and MLP into linear1, and diffusers splits it at FLUX.1's widths
        # (3072, 12288) only: a tiny model's linear1 fails its shape check.
        raise ValueError(f"{src} has single-block layers, which kohya form cannot carry at this width; "
                         "write it with single_blocks=False")

    def pair(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        return state[f"{prefix}.lora_A.weight"], state[f"{prefix}.lora_B.weight"]

    kohya = {}

    def put(name: str, down: torch.Tensor, up: torch.Tensor, part: str) -> None:
        # kohya's scale is alpha / (this module's rank); a fused module's rank is its parts' ranks summed.
        scale = metadata[f"{part}.lora_alpha"] / metadata[f"{part}.r"]
        kohya.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                      f"{name}.alpha": torch.tensor(scale * down.shape[0])})

    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("transformer.transformer_blocks.")})
    for i in blocks:
        attn = f"transformer.transformer_blocks.{i}.attn"
        for name, parts in KOHYA_FLUX_QKV.items():
            if f"{attn}.{parts[0]}.lora_A.weight" in state:
                downs, ups = zip(*(pair(f"{attn}.{part}") for part in parts))
                # Block-diagonal up: each of q, k, v sees only its own rows of down, which diffusers'
                # converter detects ("sparse") and splits back exactly.
                put(f"lora_unet_double_blocks_{i}_{name}", torch.cat(downs), torch.block_diag(*ups), "transformer")
        for name, part in KOHYA_FLUX_PROJ.items():
            if f"{attn}.{part}.lora_A.weight" in state:
                put(f"lora_unet_double_blocks_{i}_{name}", *pair(f"{attn}.{part}"), "transformer")
    for key in state:
        if key.startswith("text_encoder.") and key.endswith(".lora_A.weight"):
            prefix = key.removesuffix(".lora_A.weight")
            module = prefix.removeprefix("text_encoder.").removeprefix("text_model.")
            # Real kohya files name CLIP modules from the text_model root; diffusers strips it for transformers 5.
            put(f"lora_te1_text_model_{module.replace('.', '_')}", *pair(prefix), "text_encoder")
    target = pathlib.Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya, target, metadata={"ss_network_module": "networks.lora_flux"})
    return target


def convert_zimage_lora_to_kohya(src: str | os.PathLike, dst: str | os.PathLike) -> pathlib.Path:
    """Rewrite a tiny:zimage diffusers LoRA file in kohya form (lora_unet_layers_0_attention_to_q.lora_down, .alpha),
    same effect: diffusers' ZImageLoraLoaderMixin converts it back on load, scaling by the alphas."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(src, framework="pt") as handle:
        alpha = json.loads((handle.metadata() or {})["lora_adapter_metadata"])["transformer.lora_alpha"]
    kohya = {}
    for key, tensor in load_file(src).items():
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor
        kohya[f"{name}.alpha"] = torch.tensor(float(alpha))
    target = pathlib.Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya, target, metadata={"ss_network_module": "networks.lora"})
    return target


def write_tiny_controlnet(path: str | os.PathLike, seed: int, family: str = "sd15") -> pathlib.Path:
    """A diffusers ControlNet folder for the tiny model of `family` whose zero-initialised layers are randomised.
    For SDXL, from_unet carries over the text_time embedding the SDXL ControlNet pipeline feeds; for SD3 and FLUX
    the net is the transformer's first blocks (one of each kind), their outputs added to the transformer's; for
    Z-Image, control blocks beside the transformer's first layer."""
    target = pathlib.Path(path)
    pipe = build_pipeline(0, family)
    build = {"sd3": _sd3_controlnet, "flux": _flux_controlnet, "zimage": _zimage_controlnet}.get(family,
                                                                                                _unet_controlnet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build(pipe)
    net.save_pretrained(target, safe_serialization=True)
    return target


def _unet_controlnet(pipe):
    from diffusers import ControlNetModel

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
    return net


def _flux_controlnet(pipe):
    from diffusers import FluxControlNetModel

    config = pipe.transformer.config
    net = FluxControlNetModel.from_transformer(
        pipe.transformer, num_layers=1, num_single_layers=1, attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads)
    # Zeroed so training starts as a no-op: the blocks' outputs, and the control latents' embedding.
    _randomise([*net.controlnet_blocks, *net.controlnet_single_blocks], net.controlnet_x_embedder)
    return net


def _sd3_controlnet(pipe):
    from diffusers import SD3ControlNetModel

    # No extra channels: the control latents alone, as InstantX's SD3 ControlNets take them.
    net = SD3ControlNetModel.from_transformer(pipe.transformer, num_layers=1, num_extra_conditioning_channels=0)
    _randomise(list(net.controlnet_blocks), net.pos_embed_input.proj)
    return net


def _zimage_controlnet(pipe):
    from diffusers import ZImageControlNetModel

    # As Alibaba's Z-Image-Turbo-Fun-Controlnet-Union: control blocks beside the transformer's first layer, their
    # own refiner for the control latents; the embedders and the transformer's refiners are shared at load time.
    config = pipe.transformer.config
    net = ZImageControlNetModel(control_layers_places=[0], control_refiner_layers_places=[0],
                                control_in_dim=config.in_channels, add_control_noise_refiner=None,
                                all_patch_size=config.all_patch_size, all_f_patch_size=config.all_f_patch_size,
                                dim=config.dim, n_refiner_layers=config.n_refiner_layers, n_heads=config.n_heads,
                                n_kv_heads=config.n_kv_heads, qk_norm=config.qk_norm)
    blocks = list(net.control_layers)
    _randomise([*(b.after_proj for b in blocks), *(b.before_proj for b in blocks if hasattr(b, "before_proj"))],
               next(iter(net.control_all_x_embedder.values())))
    return net


def _randomise(outputs: list[torch.nn.Module], embedding: torch.nn.Module) -> None:
    for layer in outputs:
        torch.nn.init.normal_(layer.weight, std=CONTROLNET_STD)
        torch.nn.init.normal_(layer.bias, std=CONTROLNET_STD)
    # Wider, so the control image's content shows and not only that there is one.
    torch.nn.init.normal_(embedding.weight, std=EMBEDDING_STD)
    torch.nn.init.normal_(embedding.bias, std=CONTROLNET_STD)


def write_tiny_flux_fill(path: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """A FLUX.1 Fill-style folder (model_index.json names FluxFillPipeline): the tiny FLUX model with a transformer
    that reads the masked image's packed latents and the packed mask beside the noise."""
    from diffusers import FluxFillPipeline, FluxTransformer2DModel

    base = build_pipeline(0, "flux")
    config = {k: v for k, v in base.transformer.config.items() if not k.startswith("_")}
    latent = base.transformer.config.in_channels  # 2x2-packed latents
    mask = base.vae_scale_factor ** 2 * 4  # one channel per pixel of a packed latent's patch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**{**config, "in_channels": 2 * latent + mask, "out_channels": latent})
    parts = {k: v for k, v in base.components.items() if k in FluxFillPipeline._get_signature_keys(FluxFillPipeline)[0]}
    target = pathlib.Path(path)
    FluxFillPipeline(**{**parts, "transformer": transformer}).save_pretrained(target, safe_serialization=True)
    return target
