"""The render family protocol: everything torch-side that varies by model family, and the parts every family shares."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch

from sdbatch.errors import VariantError
from sdbatch.family import Family
from sdbatch.logs import quieted
from sdbatch.settings import FastPath


@dataclass(frozen=True)
class ClipText:
    """A pipeline's text side as the shared CLIP machinery (render/text/encode.py) takes it."""

    # (tokenizer, text encoder) per encoder slot of the family, None where this model lacks one (SDXL's refiner has
    # only the second); their states are concatenated in slot order, and embedding files are read by slot.
    encoders: tuple[tuple[Any, Any] | None, ...]
    penultimate: bool  # states from the penultimate layer, unnormalized (what SDXL is trained on); else the last
    pooled: bool  # the last encoder's pooled projection conditions the denoiser too
    zero_negative: bool  # A1111 zeroes an empty negative prompt's states and pooled vector (as the family's own does)


class RenderFamily(abc.ABC):
    """One model family's torch side. A family module subclasses this (or a family it extends) and sets
    `descriptor`, the torch-free entry in sdbatch.family that claims its pipeline classes."""

    descriptor: Family
    # The denoiser's part of a LoRA file: its keys start with this and a dot (diffusers' naming per family).
    denoiser_lora_prefix: str

    @abc.abstractmethod
    def denoiser(self, pipe) -> torch.nn.Module:
        """The network the sampler steps (a UNet, a transformer): LoRAs, attention, memory layout and compile
        apply to it."""

    @abc.abstractmethod
    def native_size(self, pipe) -> tuple[int, int]:
        """(width, height) the loaded model renders at when a row sets no size."""

    @abc.abstractmethod
    def optimize(self, pipe, fast: FastPath, device: torch.device, dtype: torch.dtype) -> None:
        """The fast path on a loaded pipeline, in place (LoRA methods keep seeing the same modules)."""

    @abc.abstractmethod
    def compile(self, pipe, fast: FastPath) -> None:
        """Compile the denoiser in place when the job asks for it."""

    def prepare_vae(self, vae, dtype: torch.dtype) -> None:  # noqa: B027 (most families need nothing)
        """A VAE (the model's own or a row's) made ready for this family at `dtype`."""

    @abc.abstractmethod
    def claims_config(self, config: dict) -> bool:
        """Whether a denoiser (or ControlNet) config is of this family."""

    @abc.abstractmethod
    def words_for_config(self, config: dict) -> str:
        """A config of this family in words for messages (the version where the config tells it)."""

    def words(self, pipe) -> str:
        """The loaded model's family in words for messages."""
        return self.words_for_config(dict(self.denoiser(pipe).config))

    @abc.abstractmethod
    def text(self, pipe) -> ClipText | None:
        """The pipeline's CLIP text encoders and how their states become conditioning (A1111's weighting and
        chunks); None for a family whose prompts its pipeline encodes itself (encode_prompts)."""

    def encode_prompts(self, pipe, prompts: list[str], negatives: list[str] | None,
                       max_sequence_length: int) -> tuple:
        """Prompts as plain text through the pipeline's own encoder, batched: (embeds, pooled, negative embeds,
        negative pooled), the negatives None when not asked for, pooled None for a family without; embeds either one
        padded tensor or a list of each prompt's own (Z-Image). Only for families whose text() is None."""
        raise NotImplementedError(f"{self.descriptor.title} prompts go through ClipText")

    def call_arguments(self, pipe, row: dict[str, Any]) -> dict[str, Any]:
        """What the family's pipeline call takes from a row beyond the shared arguments (true CFG, T5 length)."""
        return {}

    def recorded(self, row: dict[str, Any]) -> dict[str, Any]:
        """Settings the family resolved for a row, recorded in its result row: the family, and the T5 length
        used where the family has a T5 encoder."""
        length = self.descriptor.max_sequence_length
        return {"family": self.descriptor.name,
                "max_sequence_length": None if length is None else int(row.get("max_sequence_length") or length)}

    def size_arguments(self, kind: str, size: tuple[int, int]) -> dict[str, Any]:
        """The output size as the family's pipeline of `kind` takes it: SD's img2img takes its init image's."""
        return {} if kind == "img2img" else {"width": size[0], "height": size[1]}

    def control_arguments(self, kind: str, images: list[list], scales: list[float]) -> dict[str, Any]:
        """Control images (per row, one per ControlNet) and scales as the family's ControlNet pipeline of `kind`
        takes them. SD's txt2img pipeline calls them `image` and its other kinds `control_image`; several
        ControlNets take, per row, one image per ControlNet: row-major on purpose, since diffusers 0.42 transposes
        a nested list itself, and a list per ControlNet would pass its checks whenever rows == ControlNets and
        silently give each row another row's image."""
        name = "image" if kind == "txt2img" else "control_image"
        if len(scales) == 1:
            return {name: [x[0] for x in images], "controlnet_conditioning_scale": scales[0]}
        return {name: [list(x) for x in images], "controlnet_conditioning_scale": list(scales)}

    def scheduler(self, base, named):
        """The scheduler a row names (a1111.samplers.Scheduler) built from the model's own scheduler config."""
        import diffusers

        return getattr(diffusers, named.diffusers_class).from_config(base.config, **named.options)

    def lora_state_dict(self, pipeline_class, tensors: dict) -> tuple[dict, dict | None]:
        """A LoRA file's tensors in diffusers' layout (kohya and other trainers' files converted where diffusers
        converts them) and kohya's per-module alphas."""
        return pipeline_class.lora_state_dict(tensors)

    @abc.abstractmethod
    def text_arguments(self, states: list) -> dict[str, Any]:
        """Rows' encoded prompts (text.encode.Conditioning) as the family's pipelines take them."""

    @abc.abstractmethod
    def resize_latents(self, pipe, latents: torch.Tensor, first: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
        """A first pass's latents (of an image of size `first`) scaled to an image of `size`, as the family's
        img2img pipeline takes them (A1111's "Latent" hires upscaler)."""

    @abc.abstractmethod
    def load_denoiser_lora(self, pipe, state_dict: dict, **options) -> None:
        """A LoRA's denoiser part into the denoiser (diffusers' per-family loader; options as it takes them)."""

    @abc.abstractmethod
    def lora_text_encoders(self, pipe) -> list[str]:
        """The pipeline attributes of the text encoders a LoRA loads into; also their keys' prefix in LoRA files."""

    @abc.abstractmethod
    def load_controlnet(self, folder, dtype: torch.dtype) -> torch.nn.Module:
        """A ControlNet folder as the model class this family's ControlNet pipelines take."""

    @abc.abstractmethod
    def fits_controlnet(self, config: dict, pipe) -> bool:
        """Whether a ControlNet (its config) was made for this loaded model: the call would otherwise fail deep in
        the denoiser with a shape error that names neither."""

    def derive(self, source, kind: str, dtype: torch.dtype, **components):
        """The family's pipeline of `kind` over `source`'s modules (its ControlNets kept, or `components` added),
        without a second copy of any weight."""
        controlnets = "controlnet" in components or getattr(source, "controlnet", None) is not None
        classes = self.descriptor.controlnet_pipelines if controlnets else self.descriptor.pipelines
        if classes is None:
            raise VariantError(f"{self.descriptor.title} models take no ControlNets; remove the row's controlnets")
        if classes.of(kind) is None:
            raise VariantError(f"diffusers has no {kind} pipeline with ControlNets for {self.descriptor.title} "
                               "models; render these rows without ControlNets, or as txt2img")
        return from_pipe(classes.of(kind), source, dtype, **components)

    def with_controlnets(self, base, models: list[torch.nn.Module], dtype: torch.dtype):
        """The ControlNet pipeline over `base`'s modules; a list of models becomes a MultiControlNetModel."""
        return self.derive(base, "txt2img", dtype, controlnet=models[0] if len(models) == 1 else models)


def from_pipe(class_name: str, source, dtype: torch.dtype, **components):
    """A pipeline of the named diffusers class over `source`'s modules. dtype=: from_pipe casts every module to it
    (float32 when not given, the source's too); a module kept at another precision (a VAE kept in float32 under
    fp16) is put back, losslessly, as it was loaded in `dtype` in the first place."""
    import diffusers

    kept = {id(m): m.dtype for m in source.components.values()
            if isinstance(m, torch.nn.Module) and hasattr(m, "dtype")}
    # The cast warns about float32 modules of every model it touches, even when it names none: noise per pipeline.
    with quieted("diffusers.models.modeling_utils"):
        pipe = getattr(diffusers, class_name).from_pipe(source, dtype=dtype, **components)
    for module in pipe.components.values():
        if id(module) in kept and module.dtype != kept[id(module)]:
            module.to(kept[id(module)])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pair(pipe, tokenizer: str, encoder: str) -> tuple[Any, Any] | None:
    """A (tokenizer, text encoder) pair by attribute names, None where the pipeline lacks either."""
    found = getattr(pipe, tokenizer, None), getattr(pipe, encoder, None)
    return None if any(x is None for x in found) else found
