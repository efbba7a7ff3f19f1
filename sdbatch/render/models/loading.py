"""Model loading: a reference to a pipeline of the class the model names (folder or single file); device, dtype."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sdbatch.a1111.samplers import BY_NAME as SCHEDULERS_BY_NAME
from sdbatch.errors import ModelLoadError
from sdbatch.family import (
    CONFIG_METADATA,
    Checkpoint,
    checkpoint_for,
    folder_class,
    read_header,
    unknown_checkpoint,
)
from sdbatch.render.families import RenderFamily, for_pipeline_class
from sdbatch.render.models import options
from sdbatch.render.models.fastpath import pick_dtype
from sdbatch.render.models.sources import cache_root, hub_snapshot, resolve_source
from sdbatch.settings import FastPath, S3Settings

# A single-file checkpoint carries weights only: its configs come from the reference repo of its kind
# (sdbatch.family's checkpoints; config files only, from the Hugging Face cache), unless its metadata names one.
CONFIG_FILES = ["*.json", "*.txt"]  # configs, tokenizer vocabularies and merges; no weights
# Where diffusers' from_single_file finds a VAE or a text encoder in a file: the tensor-name prefixes it looks for
# (single_file_utils' LDM_VAE_KEYS and CHECKPOINT_KEY_NAMES), by component class. It takes a component the file lacks
# from `config` only where that holds diffusers-named weights, never transformers' text encoders (model.safetensors),
# so sdbatch loads such components itself from the base model's weights: SD3 files without their text encoders,
# FLUX files of the transformer alone.
CLIP_IN_FILE = ("cond_stage_model.", "conditioner.embedders.", "text_encoders.clip_l.", "text_encoders.clip_g.")
IN_FILE = {"AutoencoderKL": ("first_stage_model.", "vae."), "CLIPTextModel": CLIP_IN_FILE,
           "CLIPTextModelWithProjection": CLIP_IN_FILE, "T5EncoderModel": ("text_encoders.t5xxl.",)}


@dataclass(frozen=True)
class LoadedModel:
    pipeline: object
    reference: str  # as written in the manifest
    model_hash: str  # cheap content identity of the files that were loaded
    native_size: tuple[int, int]  # (width, height) the model was trained at
    base_scheduler: object  # the model's own scheduler, kept because variants replace pipeline.scheduler
    family: RenderFamily  # what varies by model family: callers ask it rather than the pipeline


def pick_device(requested: str | None = None, dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA when present, else CPU; the precision from FastPath.dtype (see fastpath.pick_dtype)."""
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device, pick_dtype(device, dtype)


def model_hash(path: Path) -> str:
    """Identity of a model folder or file from its configs and each weight file's size and first MiB (fast for GBs)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and ".cache" not in p.relative_to(path).parts)
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        digest.update(str(file.stat().st_size).encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def load_model(reference: str, device: torch.device, dtype: torch.dtype, fast: FastPath = FastPath(),
               s3: S3Settings | None = None) -> LoadedModel:
    """The pipeline of the class the model itself names (model_index.json, or the single file's family); a class no
    family claims is refused before any weight is read."""
    source = resolve_source(reference, s3)
    try:
        single = single_file_sources(source.path) if source.single_file else None
        config = single.config if single else source.path
        family = for_pipeline_class(folder_class(config) or "", f"model {reference!r}")
        pipe = _from_single_file(source.path, single, dtype) if single else _from_folder(config, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:
        where = "" if Path(reference).expanduser() == source.path else f" at {source.path}"  # e.g. an s3 copy
        raise ModelLoadError(f"model {reference!r}{where} failed to load: {exc}") from exc
    # Quantized while still in host memory, so the device never holds the full-precision denoiser.
    options.quantize(family.denoiser(pipe), device, fast)
    pipe = options.place(pipe, device, fast)
    pipe.set_progress_bar_config(disable=True)
    family.optimize(pipe, fast, device, dtype)
    options.enable_step_cache(family.denoiser(pipe), fast)
    family.compile(pipe, fast)
    return LoadedModel(pipe, reference, _identity(source.path, single), family.native_size(pipe), pipe.scheduler,
                       family)


@dataclass(frozen=True)
class SingleFile:
    """Where a single-file checkpoint's configs, and the components it lacks, come from."""

    config: Path  # configs only (no weights, so nothing is silently taken from it), or its base model's folder
    from_base: tuple[str, ...] = ()  # components the file lacks: from the weights in `config`


def pipeline_class(config_folder: Path):
    """The diffusers class model_index.json names: the model decides, not the reference's wording."""
    import diffusers

    name = folder_class(config_folder) or ""
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelLoadError(f"{config_folder}: model_index.json names {name!r}, which this diffusers "
                             f"{diffusers.__version__} does not have; upgrade diffusers or use another model")
    return cls


def _options(cls) -> dict:
    # Only what the class takes: others are ignored with a warning per load. No safety checker and no
    # watermark: both alter or drop images of a dataset, and the watermark needs an extra package.
    params = inspect.signature(cls.__init__).parameters
    options = {"safety_checker": None, "requires_safety_checker": False, "add_watermarker": False}
    return {k: v for k, v in options.items() if k in params}


def _from_folder(path: Path, dtype: torch.dtype):
    cls = pipeline_class(path)
    return cls.from_pretrained(str(path), dtype=dtype, **_options(cls))


def _from_single_file(path: Path, single: SingleFile, dtype: torch.dtype):
    cls = pipeline_class(single.config)
    if not hasattr(cls, "from_single_file"):
        raise ModelLoadError(f"{cls.__name__} cannot load single-file checkpoints; convert {path.name} to a "
                             "diffusers folder")
    parts = {name: _base_part(single.config, name, dtype) for name in single.from_base}
    # torch_dtype: what from_single_file hands on to every component (dtype= is only its newer alias).
    pipe = cls.from_single_file(str(path), config=str(single.config), torch_dtype=dtype, local_files_only=True,
                                **parts, **_options(cls))
    _settle(pipe, path)
    return pipe


def _base_part(folder: Path, name: str, dtype: torch.dtype):
    """One component of a diffusers folder, of the class its model_index.json names."""
    library, class_name = json.loads((folder / "model_index.json").read_text())[name]
    return getattr(importlib.import_module(library), class_name).from_pretrained(str(folder), subfolder=name,
                                                                                 dtype=dtype)


def _settle(pipe, path: Path) -> None:
    """Components as from_pretrained leaves them. diffusers leaves an SD3 file's T5 in training mode (its dropout
    makes each render of a prompt differ) and, where the file holds only `shared`, the embedding tied to it on the
    meta device; any weight the file lacks stays there unnoticed until the move to the GPU fails."""
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        module.eval()
        if hasattr(module, "tie_weights") and _empty(module):
            module.tie_weights()
        if _empty(module):
            raise ModelLoadError(f"{path.name} lacks weights of its {name} ({', '.join(_empty(module)[:3])}, ...): "
                                 "it is incomplete or not the layout its tensor names suggest; convert it to a "
                                 "diffusers folder")


def _empty(module: torch.nn.Module) -> list[str]:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, tensor in tensors if tensor.is_meta]


def single_file_sources(path: Path) -> SingleFile:
    """The configs that fit a single file, or its base model where it lacks components (an SD3 file its text
    encoders, a FLUX file all but its transformer)."""
    header = read_header(path)
    keys = set(header) - {"__metadata__"}
    named = (header.get("__metadata__") or {}).get(CONFIG_METADATA)
    found = checkpoint_for(keys)
    if found is None and not named:
        raise unknown_checkpoint(path.name)
    lacking = _lacking(found[0].pipelines.txt2img, keys) if found else ()
    if lacking:
        return SingleFile(_base_model(path, named, found[1], lacking), lacking)
    return SingleFile(_configs_only(resolve_source(named).path) if named else _hub_configs(path, found[1]))


def _lacking(pipeline: str, keys: set[str]) -> tuple[str, ...]:
    """The components of the pipeline class that diffusers would not find in a file of these tensor names."""
    import diffusers

    params = inspect.signature(getattr(diffusers, pipeline).__init__).parameters
    return tuple(name for name, param in params.items() if (prefixes := IN_FILE.get(
        getattr(param.annotation, "__name__", ""))) and not any(key.startswith(prefixes) for key in keys))


def _hub_configs(path: Path, checkpoint: Checkpoint) -> Path:
    kind, repo = checkpoint.name, checkpoint.config_repo
    try:
        return hub_snapshot(repo, CONFIG_FILES)
    except ModelLoadError as exc:  # the message would name only the hub repo, not the user's file
        raise ModelLoadError(
            f"{path.name} is a single-file {kind} checkpoint; its configs (json and txt files, no weights) "
            f"come from the hub repo {repo}, which is not in this node's Hugging Face cache and could not be "
            f"fetched. Run `hf download {repo} --include '*.json' '*.txt'` where the actors run (or share "
            "HF_HOME), or convert the file to a diffusers folder") from exc


def _base_model(path: Path, named: str | None, checkpoint: Checkpoint, lacking: tuple[str, ...]) -> Path:
    """The folder of the model whose weights give the components a file lacks: the one its header names, else its
    kind's repo (those components' files only, from the Hugging Face cache or the hub); never configs alone."""
    patterns = CONFIG_FILES + [f"{name}/*" for name in lacking]
    try:
        folder = resolve_source(named or checkpoint.config_repo, hub_patterns=patterns).path
    except ModelLoadError as exc:
        raise _no_base(path, checkpoint, lacking, named, f"is not at hand ({exc})") from exc
    without = [name for name in lacking if not any(
        file.is_file() for suffix in ("*.safetensors", "*.bin") for file in (folder / name).glob(suffix))]
    if without:
        raise _no_base(path, checkpoint, lacking, named, f"has no weights for its {', '.join(without)} (configs "
                       f"only, at {folder})")
    return folder


def _no_base(path: Path, checkpoint: Checkpoint, lacking: tuple[str, ...], named: str | None,
             why: str) -> ModelLoadError:
    repo = checkpoint.config_repo
    base = (f"the model its {CONFIG_METADATA} header names, {named!r}," if named else
            f"its base model, the hub repo {repo},")
    include = " ".join(f"'{p}'" for p in CONFIG_FILES + [f"{name}/*" for name in lacking])
    fix = (f"make {named!r} a diffusers model that has them, or name one in the header" if named else
           f"run `hf download {repo} --include {include}` where the actors run (or share HF_HOME), or name a "
           f"diffusers model that has them in the file's {CONFIG_METADATA} header")
    return ModelLoadError(f"{path.name} is a single-file {checkpoint.name} checkpoint without its "
                          f"{', '.join(lacking)}: they come from {base} which {why}. To fix: {fix}, or convert the "
                          "file to a diffusers folder")


def _identity(path: Path, single: SingleFile | None) -> str:
    """model_hash of the file, and of its base model when that gives components: both make the images."""
    if single is None or not single.from_base:
        return model_hash(path)
    return hashlib.sha256(f"{model_hash(path)}|{model_hash(single.config)}".encode()).hexdigest()[:16]


def _configs_only(folder: Path) -> Path:
    """A copy of a diffusers folder's configs and tokenizer files, made once per node."""
    target = cache_root() / "configs" / model_hash(folder)
    if (target / "model_index.json").is_file():
        return target
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for file in folder.rglob("*"):
        if file.is_file() and file.suffix in (".json", ".txt") and file.name != "sdbatch_tiny.json":
            (staging / file.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, staging / file.relative_to(folder))
    try:
        os.replace(staging, target)  # model_index.json is copied last-in-place: the rename publishes all
    except OSError:  # another process published it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def make_scheduler(model: LoadedModel, name: str | None):
    """The model's own scheduler for None, else the named one as the model's family builds it from the model's
    scheduler config (a flow-matching family's Euler is the flow-match Euler)."""
    if name is None:
        return model.base_scheduler
    return model.family.scheduler(model.base_scheduler, SCHEDULERS_BY_NAME[name])
