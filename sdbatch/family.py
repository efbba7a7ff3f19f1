"""Model families as data: the pipeline classes and checkpoint tensor names that claim each, its sizes, columns and
samplers; torch-free, so the driver can check a manifest against its models before any GPU is asked for."""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from sdbatch.a1111.samplers import BY_NAME as SCHEDULERS
from sdbatch.errors import ModelLoadError

# safetensors header key: a model reference whose configs fit the file (written by tests/support/checkpoints.py
# and by users who convert their own checkpoints).
CONFIG_METADATA = "sdbatch_config"
# A safetensors file starts with the length of its JSON header; a larger one is not a file sdbatch can load.
MAX_HEADER_BYTES = 100 << 20
# Seconds the driver waits for the hub's answer about one model_index.json: a slow or unreachable hub must not
# stall validation (set HF_HUB_OFFLINE=1 where it is never reachable).
HUB_TIMEOUT = 5


@dataclass(frozen=True)
class Pipelines:
    """A family's diffusers pipeline classes, one per kind of row (manifest.images.PIPELINES)."""

    txt2img: str  # what a model folder of the family names in model_index.json
    img2img: str | None  # rows with an init_image: built over the same modules by from_pipe; None: diffusers has none
    inpaint: str | None  # rows with an init_image and a mask_image

    def of(self, kind: str) -> str | None:
        return getattr(self, kind)

    def names(self) -> tuple[str, ...]:
        return tuple(name for name in (self.txt2img, self.img2img, self.inpaint) if name)


@dataclass(frozen=True)
class Checkpoint:
    """A kind of single-file checkpoint (original LDM / SGM layout): weights only, configs from elsewhere."""

    name: str  # how messages call it: "a single-file sdxl checkpoint"
    prefixes: tuple[str, ...]  # a tensor name starting with one of these identifies it (its text encoder's layout)
    # The hub repo whose configs (json and txt files) fit the checkpoint, and whose weights give what the file lacks
    # (a FLUX file's VAE and text encoders).
    config_repo: str


@dataclass(frozen=True)
class Family:
    """One model family: what claims a model for it, and what its rows may ask for."""

    name: str  # the registry key; sdbatch/render/families/ has the torch side under the same name
    title: str  # in messages: "SD1.x/2.x"
    pipelines: Pipelines  # the classes that claim a model folder for the family, by kind
    controlnet_pipelines: Pipelines | None  # the same with ControlNets; None: the family takes none
    native_size: int  # the side it is trained at, where the loaded model's config does not say
    size_multiple: int  # widths and heights must be multiples: the VAE's downscaling times any latent packing
    refuses: tuple[str, ...] = ()  # manifest columns its pipelines have no input for: set in a row, a problem
    schedulers: tuple[str, ...] | None = None  # scheduler names (a1111.samplers.BY_NAME) it works with; None: all
    checkpoints: tuple[Checkpoint, ...] = ()  # single-file layouts it loads; the first whose prefixes match wins
    tiny: str | None = None  # its tiny random-weight model (`tiny:NAME`, render/tiny/), for tests and demos
    # Pipeline classes of the family's inpainting-only models (FLUX.1 Fill): they render inpainting rows alone, each
    # by that class itself, and take no ControlNets.
    inpaint_models: tuple[str, ...] = ()
    # guidance_scale is a distilled-guidance input of the denoiser (FLUX.1-dev), not classifier-free guidance;
    # true CFG with the negative prompt is then true_cfg_scale. A1111/Forge `parameters` say which they were.
    distilled_guidance: bool = False
    # The T5 encoder's token count when a row sets no max_sequence_length (diffusers' pipeline default);
    # None: the family has no T5 encoder and refuses the column.
    max_sequence_length: int | None = None
    # The guidance_scale a row gets when neither it nor the job sets one: what the family is used at.
    guidance_scale: float | None = None
    # A hires row with ControlNets may start its second pass from latents (its ControlNet img2img pipeline takes them).
    controlnet_latent_hires: bool = True
    # A1111's attention weights ((word:1.3), [word]) act on its text states; False: the family's pipeline encodes
    # the prompt's words as plain text and weights are noted at validation as not applied.
    prompt_weights: bool = True
    # diffusers converts kohya/A1111-format LoRA files (lora_unet_*, lora_te*_*) for this family's models.
    kohya_loras: bool = True
    # Tensor-name prefixes of LoRA files made for this family's denoiser and no other (trainers' and diffusers'
    # namings); a file with another family's and none of these is refused for the family's rows at validation.
    lora_marks: tuple[str, ...] = ()
    # Whether diffusers has step caching for its denoiser (CacheMixin), which [render] step_cache needs.
    step_cache: bool = False
    # The most ControlNets one row may use at once (Z-Image's pipeline takes one); None: any number.
    controlnet_limit: int | None = None
    # A1111's CFG scale s guides as neg + s * (pos - neg); a pipeline that guides as pos + g * (pos - neg) (Z-Image)
    # has s = g + 1. The `parameters` text writes and reads A1111's scale, rows keep the pipeline's.
    cfg_offset: float = 0.0

    def claims(self, class_name: str) -> bool:
        return class_name in self.class_names()

    def class_names(self) -> tuple[str, ...]:
        nets = self.controlnet_pipelines.names() if self.controlnet_pipelines else ()
        return self.pipelines.names() + nets + self.inpaint_models

    def takes(self, column: str) -> bool:
        needs = {"controlnets": self.controlnet_pipelines is not None,
                 "max_sequence_length": self.max_sequence_length is not None,
                 "true_cfg_scale": self.distilled_guidance}  # true CFG is the separate knob beside distilled
        return column not in self.refuses and needs.get(column, True)


KOHYA_LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
# kohya/A1111 and diffusers names of UNet blocks: SD1.x/2.x and SDXL LoRAs (told apart only by their shapes).
UNET_LORA_MARKS = ("lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_", "lora_unet_input_blocks_",
                   "lora_unet_output_blocks_", "lora_unet_middle_block_", "unet.")
SD1 = Family(
    name="sd1", title="SD1.x/2.x",
    pipelines=Pipelines("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    controlnet_pipelines=Pipelines("StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline",
                                   "StableDiffusionControlNetInpaintPipeline"),
    native_size=512, size_multiple=8,
    checkpoints=(Checkpoint("sd2", ("cond_stage_model.model.",), "stabilityai/stable-diffusion-2-1"),  # OpenCLIP
                 Checkpoint("sd15", ("cond_stage_model.transformer.",), "stable-diffusion-v1-5/stable-diffusion-v1-5")),
    tiny="sd15", lora_marks=UNET_LORA_MARKS,
)
SDXL = Family(
    name="sdxl", title="SDXL",
    pipelines=Pipelines("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                        "StableDiffusionXLInpaintPipeline"),
    controlnet_pipelines=Pipelines("StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
                                   "StableDiffusionXLControlNetInpaintPipeline"),
    native_size=1024, size_multiple=8,
    checkpoints=(Checkpoint("sdxl", ("conditioner.embedders.1.",), "stabilityai/stable-diffusion-xl-base-1.0"),),
    tiny="sdxl", lora_marks=UNET_LORA_MARKS,
)
# Flow-matching families step with diffusers' flow-match Euler; these are its A1111/Forge names (Forge writes
# "Euler" with "Simple" for FLUX), the sigma schedules it takes, and null for the model's own.
FLOW_SCHEDULERS = ("euler", "euler_simple", "euler_karras", "euler_exponential")
# Columns a family without CLIP-only conditioning has no input for: clip skip is a CLIP-stack setting.
DIT_REFUSES = ("clip_skip",)
SD3 = Family(
    name="sd3", title="SD3/3.5",
    pipelines=Pipelines("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                        "StableDiffusion3InpaintPipeline"),
    # diffusers has SD3 ControlNets for txt2img only (its inpainting one is an inpainting ControlNet, not this).
    controlnet_pipelines=Pipelines("StableDiffusion3ControlNetPipeline", None, None),
    native_size=1024, size_multiple=16,  # VAE 8x, transformer patches of 2
    refuses=DIT_REFUSES, schedulers=FLOW_SCHEDULERS,
    # Stability's files keep the MMDiT under model.diffusion_model. (transformer-only ones bare). First match wins:
    # 3.5 Large by its 38th block, 3.5 Medium by its second image attention (MMDiT-X), else SD3 Medium.
    checkpoints=(Checkpoint("sd35-large", ("model.diffusion_model.joint_blocks.37.", "joint_blocks.37."),
                            "stabilityai/stable-diffusion-3.5-large"),
                 Checkpoint("sd35-medium", ("model.diffusion_model.joint_blocks.0.x_block.attn2.",
                                            "joint_blocks.0.x_block.attn2."),
                            "stabilityai/stable-diffusion-3.5-medium"),
                 Checkpoint("sd3-medium", ("model.diffusion_model.joint_blocks.", "joint_blocks."),
                            "stabilityai/stable-diffusion-3-medium-diffusers")),
    tiny="sd3", max_sequence_length=256, prompt_weights=False, kohya_loras=False,
    lora_marks=("lora_unet_joint_blocks_", "diffusion_model.joint_blocks.", "lora_transformer_joint_blocks_"),
)
FLUX = Family(
    name="flux", title="FLUX.1",
    pipelines=Pipelines("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    controlnet_pipelines=Pipelines("FluxControlNetPipeline", "FluxControlNetImg2ImgPipeline",
                                   "FluxControlNetInpaintPipeline"),
    native_size=1024, size_multiple=16,  # VAE 8x, latents packed 2x2
    refuses=DIT_REFUSES, schedulers=FLOW_SCHEDULERS, step_cache=True,
    # BFL's files are bare, ComfyUI's and Forge's under model.diffusion_model. First match wins: dev by its guidance
    # embedder, which schnell lacks (their configs differ in it and in the scheduler's shift).
    checkpoints=(Checkpoint("flux-dev", ("guidance_in.", "model.diffusion_model.guidance_in."),
                            "black-forest-labs/FLUX.1-dev"),
                 Checkpoint("flux-schnell", ("double_blocks.", "model.diffusion_model.double_blocks."),
                            "black-forest-labs/FLUX.1-schnell")),
    tiny="flux", distilled_guidance=True, max_sequence_length=512, guidance_scale=3.5, prompt_weights=False,
    controlnet_latent_hires=False, inpaint_models=("FluxFillPipeline",),
    # Single-stream blocks are FLUX's alone, in BFL's, kohya's and diffusers' namings.
    lora_marks=("lora_unet_double_blocks_", "lora_unet_single_blocks_", "diffusion_model.double_blocks.",
                "diffusion_model.single_blocks.", "transformer.single_transformer_blocks.",
                "lora_transformer_single_transformer_blocks_"),
)
ZIMAGE = Family(
    name="zimage", title="Z-Image",
    pipelines=Pipelines("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
    # diffusers' ZImageControlNetInpaintPipeline inpaints through a ControlNet trained for it (its control image is
    # the masked image and the mask), with no strength: not sdbatch's inpainting rows. One ControlNet per call.
    controlnet_pipelines=Pipelines("ZImageControlNetPipeline", None, None), controlnet_limit=1,
    native_size=1024, size_multiple=16,  # VAE 8x, transformer patches of 2
    refuses=DIT_REFUSES, schedulers=FLOW_SCHEDULERS,
    # Z-Image-Turbo is used unguided (its distillation replaces CFG): its pipeline guides only above 0, and then as
    # pos + scale * (pos - neg), A1111's CFG scale minus 1. The base Z-Image wants a row's own (about 3 to 5).
    tiny="zimage", max_sequence_length=512, guidance_scale=0.0, cfg_offset=1.0, prompt_weights=False,
    # Its single-stream blocks (layers, noise_refiner, context_refiner) in diffusers', kohya's and ComfyUI's namings;
    # diffusers converts the kohya and ComfyUI files.
    lora_marks=("transformer.layers.", "transformer.noise_refiner.", "transformer.context_refiner.",
                "diffusion_model.layers.", "diffusion_model.noise_refiner.", "diffusion_model.context_refiner.",
                "lora_unet_layers_", "lora_unet_noise_refiner_", "lora_unet_context_refiner_"),
)
# The registry: adding a family is an entry here and a module in sdbatch/render/families/.
FAMILIES: tuple[Family, ...] = (SD1, SDXL, SD3, FLUX, ZIMAGE)


def by_name(name: str) -> Family:
    return next(family for family in FAMILIES if family.name == name)


def supported() -> str:
    """The families and the classes that claim each, for messages."""
    return "; ".join(f"{f.title} ({', '.join(f.class_names())})" for f in FAMILIES)


def family_for_class(class_name: str, what: str = "the model") -> Family:
    """The family that claims a diffusers pipeline class; ModelLoadError naming it and the supported ones if none."""
    for family in FAMILIES:
        if family.claims(class_name):
            return family
    raise ModelLoadError(f"{what} is a {class_name or 'pipeline of no class'}, which sdbatch does not render; it "
                         f"renders these model families (pipeline classes): {supported()}. Use a model of one of them")


def tiny_family(name: str) -> Family | None:
    """The family of `tiny:NAME`, without building it; None for a name no family has (the actor refuses it)."""
    return next((family for family in FAMILIES if family.tiny == name), None)


def checkpoint_for(keys: set[str]) -> tuple[Family, Checkpoint] | None:
    """The family and checkpoint kind a single file's tensor names identify: the first kind, in registry order, with
    a tensor name starting with one of its prefixes (SD1.x/SDXL files by their text encoders, whose
    model.diffusion_model.input_blocks never start an SD3 or FLUX prefix)."""
    for family in FAMILIES:
        for checkpoint in family.checkpoints:
            if any(key.startswith(checkpoint.prefixes) for key in keys):
                return family, checkpoint
    return None


def checkpoint_family(keys: set[str]) -> str | None:
    """The checkpoint kind's name (sd15, sdxl, sd35-medium, flux-dev, ...) from a single file's tensor names."""
    found = checkpoint_for(keys)
    return found[1].name if found else None


def is_kohya_lora(keys: set[str]) -> bool:
    """A LoRA file in kohya/A1111's naming (what Civitai serves), which only some families' loaders convert."""
    return any(key.startswith(KOHYA_LORA_PREFIXES) for key in keys)


def lora_families(keys: set[str]) -> tuple[Family, ...]:
    """The families whose LoRA tensor names a file's keys carry; empty when they name none (as diffusers' own SD3
    and FLUX files that target only the blocks both families have)."""
    return tuple(f for f in FAMILIES if f.lora_marks and any(key.startswith(f.lora_marks) for key in keys))


def unknown_checkpoint(file_name: str) -> ModelLoadError:
    named = [f.title for f in FAMILIES if f.checkpoints]
    titles = f"{', '.join(named[:-1])} or {named[-1]}" if len(named) > 1 else named[0]
    return ModelLoadError(f"{file_name} is not a single-file {titles} checkpoint (none of their tensor names); "
                          "convert it to a diffusers folder")


def read_header(path: Path) -> dict:
    """A .safetensors file's JSON header (tensor names and `__metadata__`) without reading its tensors."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if not 0 < size <= MAX_HEADER_BYTES:
            raise ModelLoadError(f"{path.name} is not a safetensors file (its header length is {size} bytes); "
                                 "pass a .safetensors checkpoint or a diffusers folder")
        try:
            return json.loads(handle.read(size))
        except ValueError as exc:
            raise ModelLoadError(f"{path.name} is not a safetensors file (its header is not JSON: {exc})") from exc


def folder_class(folder: Path) -> str | None:
    """The pipeline class a diffusers folder's model_index.json names; None without one (a lone component)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    try:
        return str(json.loads(index.read_text()).get("_class_name") or "")
    except ValueError as exc:
        raise ModelLoadError(f"{index} is not JSON ({exc}); save the model again with save_pretrained") from exc


@functools.lru_cache(maxsize=1024)  # asked once per plan chunk: the hub is asked once per process
def hub_model_class(repo: str) -> str | None:
    """The pipeline class a hub model names, from its model_index.json alone: the Hugging Face cache, else the hub
    (that one file, waited for HUB_TIMEOUT seconds) unless HF_HUB_OFFLINE is set. None when neither answers: the
    actor's warm-up then tells."""
    import huggingface_hub  # here: a check of local models never needs it

    found = huggingface_hub.try_to_load_from_cache(repo, "model_index.json")
    if not isinstance(found, str) and not huggingface_hub.constants.HF_HUB_OFFLINE:
        found = _within(HUB_TIMEOUT, lambda: huggingface_hub.hf_hub_download(repo, "model_index.json"))
    return folder_class(Path(found).parent) if isinstance(found, str) else None


def _within(seconds: float, call):
    """call()'s value, or None if it raises or has not returned in time: huggingface_hub retries an unreachable
    hub for about half a minute, which validation does not wait for (the thread is left to finish alone)."""
    box: list = []

    def run() -> None:
        try:
            box.append(call())
        except Exception:  # noqa: BLE001 - unreachable, gated, no such repo: all leave the check to the actor
            box.append(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    return box[0] if box else None


def model_class(path: Path) -> str | None:
    """The pipeline class of a local model, torch-free: a folder's model_index.json; a single file's configs named in
    its header when they are a local folder, else the txt2img class of the family its tensor names identify. None
    when only the actor can tell (a file whose configs are a hub id or s3:// and whose tensors name no family)."""
    if path.is_dir():
        return folder_class(path)
    header = read_header(path)
    named = (header.get("__metadata__") or {}).get(CONFIG_METADATA)
    if named and Path(named).expanduser().is_dir():
        return folder_class(Path(named).expanduser())
    found = checkpoint_for(set(header) - {"__metadata__"})
    if found:
        return found[0].pipelines.txt2img
    if named:
        return None
    raise unknown_checkpoint(path.name)


def check_registry() -> list[str]:
    """What makes the registry inconsistent (a class claimed twice, a sampler that does not exist, a size multiple
    that does not divide the native size); empty when it is sound."""
    problems, claimed = [], {}
    for family in FAMILIES:
        for name in family.class_names():
            if name in claimed:
                problems.append(f"{name} is claimed by {claimed[name]} and {family.name}")
            claimed[name] = family.name
        problems += [f"{family.name}: scheduler {s!r} is not in a1111.samplers" for s in family.schedulers or ()
                     if s not in SCHEDULERS]
        if family.native_size % family.size_multiple:
            problems.append(f"{family.name}: native size {family.native_size} is not a multiple of "
                            f"{family.size_multiple}")
    return problems
