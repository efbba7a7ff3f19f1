"""Model loading: a reference to a pipeline of the class the model names (folder or single file); device, dtype."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sdbatch.a1111.samplers import BY_NAME as SCHEDULERS_BY_NAME
from sdbatch.errors import ModelLoadError
from sdbatch.render.models.fastpath import compile_unet, optimize, pick_dtype
from sdbatch.render.models.sources import cache_root, hub_snapshot, resolve_source
from sdbatch.settings import FastPath, S3Settings

# A single-file checkpoint carries weights only: its configs come from the reference model of its family
# (config files only, from the Hugging Face cache), unless the file's metadata names a config model.
FAMILY_CONFIGS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
CONFIG_METADATA = "sdbatch_config"  # safetensors header key: a model reference whose configs fit the file
CONFIG_FILES = ["*.json", "*.txt"]  # configs, tokenizer vocabularies and merges; no weights

@dataclass(frozen=True)
class LoadedModel:
    pipeline: object
    reference: str  # as written in the manifest
    model_hash: str  # cheap content identity of the files that were loaded
    native_size: tuple[int, int]  # (width, height) the model was trained at
    base_scheduler: object  # the model's own scheduler, kept because variants replace pipeline.scheduler


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
    """The pipeline of the class the model itself names (model_index.json, or the single file's family)."""
    source = resolve_source(reference, s3)
    try:
        pipe = _from_single_file(source.path, dtype) if source.single_file else _from_folder(source.path, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:
        where = "" if Path(reference).expanduser() == source.path else f" at {source.path}"  # e.g. an s3 copy
        raise ModelLoadError(f"model {reference!r}{where} failed to load: {exc}") from exc
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    optimize(pipe, fast, device, dtype)
    compile_unet(pipe, fast)
    scale = getattr(pipe, "vae_scale_factor", 8)
    side = int(pipe.unet.config.sample_size) * scale  # SD1.5: 64 * 8 = 512; SDXL: 128 * 8 = 1024
    return LoadedModel(pipe, reference, model_hash(source.path), (side, side), pipe.scheduler)


def pipeline_class(config_folder: Path):
    """The diffusers class model_index.json names: the model decides, not the reference's wording."""
    import diffusers

    name = json.loads((config_folder / "model_index.json").read_text()).get("_class_name", "")
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


def _from_single_file(path: Path, dtype: torch.dtype):
    config = single_file_config(path)
    cls = pipeline_class(config)
    if not hasattr(cls, "from_single_file"):
        raise ModelLoadError(f"{cls.__name__} cannot load single-file checkpoints; convert {path.name} to a "
                             "diffusers folder")
    # torch_dtype: from_single_file does not take dtype= in diffusers 0.42.
    return cls.from_single_file(str(path), config=str(config), torch_dtype=dtype, local_files_only=True,
                                **_options(cls))


def single_file_config(path: Path) -> Path:
    """A folder of configs only (no weights, so nothing is silently taken from it) that fits the checkpoint."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        named = (handle.metadata() or {}).get(CONFIG_METADATA)
        keys = set(handle.keys())
    if named:
        return _configs_only(resolve_source(named).path)
    family = checkpoint_family(keys)
    if family is None:
        raise ModelLoadError(f"{path.name} is not a Stable Diffusion 1.x/2.x or SDXL checkpoint (none of their "
                             "tensor names); convert it to a diffusers folder")
    repo = FAMILY_CONFIGS[family]
    try:
        return hub_snapshot(repo, CONFIG_FILES)
    except ModelLoadError as exc:  # the message would name only the hub repo, not the user's file
        raise ModelLoadError(
            f"{path.name} is a single-file {family} checkpoint; its configs (json and txt files, no weights) "
            f"come from the hub repo {repo}, which is not in this node's Hugging Face cache and could not be "
            f"fetched. Run `hf download {repo} --include '*.json' '*.txt'` where the actors run (or share "
            "HF_HOME), or convert the file to a diffusers folder") from exc


def checkpoint_family(keys: set[str]) -> str | None:
    """sd15, sd2 or sdxl from an original-layout checkpoint's tensor names."""
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):  # OpenCLIP text encoder
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"
    return None


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
    """The model's own scheduler for None, else the named one built from the model's scheduler config."""
    if name is None:
        return model.base_scheduler
    import diffusers

    scheduler = SCHEDULERS_BY_NAME[name]
    return getattr(diffusers, scheduler.diffusers_class).from_config(model.base_scheduler.config,
                                                                     **scheduler.options)
