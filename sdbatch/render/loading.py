"""Model loading: resolve a model reference (tiny:, local folder, hub id), pick device and dtype, build the pipeline."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from sdbatch.render.fastpath import FastPath, compile_unet, optimize, pick_dtype

TINY_PREFIX = "tiny:"
TINY_MODELS = ("sd15",)

# Scheduler names of the manifest -> diffusers class and the options that make the name true.
SCHEDULER_CLASSES = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                         "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


class ModelLoadError(RuntimeError):
    """A model reference cannot be turned into a pipeline; the message says what to do."""


@dataclass(frozen=True)
class LoadedModel:
    pipeline: object
    reference: str  # as written in the manifest
    model_hash: str  # cheap content identity of the files that were loaded
    native_size: tuple[int, int]  # (width, height) the model was trained at
    base_scheduler: object  # the model's own scheduler, kept because variants replace pipeline.scheduler


def cache_root() -> Path:
    """Where sdbatch keeps models it builds or downloads on this node."""
    return Path(os.environ.get("SDBATCH_CACHE", Path.home() / ".cache" / "sdbatch"))


def pick_device(requested: str | None = None, dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA when present, else CPU; the precision from FastPath.dtype (see fastpath.pick_dtype)."""
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device, pick_dtype(device, dtype)


def resolve_model_path(reference: str) -> Path:
    """A local folder for the reference: build tiny models, check local paths, fetch hub ids (cache first)."""
    if reference.startswith(TINY_PREFIX):
        return _tiny_model(reference[len(TINY_PREFIX):])
    path = Path(reference).expanduser()
    if path.exists() or looks_like_path(reference):
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"model {reference!r}: {path} is not a diffusers model folder "
                                 "(no model_index.json); pass a folder saved with save_pretrained")
        return path
    return _hub_snapshot(reference)


def looks_like_path(reference: str) -> bool:
    """True for references that can only mean a local path (absolute, relative, or deeper than org/name)."""
    # A missing local path would otherwise fall through to a confusing hub lookup.
    return reference.startswith(("/", "./", "../", "~")) or reference.count("/") > 1


def _tiny_model(name: str) -> Path:
    from filelock import FileLock

    from sdbatch.render.tiny import is_tiny_model_dir, write_tiny_model

    if name not in TINY_MODELS:
        raise ModelLoadError(f"tiny model {name!r} is not known; use one of "
                             f"{', '.join(TINY_PREFIX + n for n in TINY_MODELS)}")
    target = cache_root() / "models" / f"tiny-{name}"
    if is_tiny_model_dir(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # several actors on one node build it once
        return Path(write_tiny_model(target))


def _hub_snapshot(reference: str) -> Path:
    from diffusers import DiffusionPipeline

    try:
        return Path(DiffusionPipeline.download(reference))
    except Exception as exc:  # hub errors come in many types; all mean the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline else
                "it is not in the local Hugging Face cache and could not be downloaded")
        raise ModelLoadError(f"model {reference!r} is not a local folder and {hint} ({type(exc).__name__}); "
                             "download it first (huggingface-cli download) or pass a local path") from exc


def model_hash(path: Path) -> str:
    """Identity of a model folder from its configs and each weight file's size and first MiB (fast for GBs)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.relative_to(path).parts):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(str(file.stat().st_size).encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def load_model(reference: str, device: torch.device, dtype: torch.dtype, fast: FastPath = FastPath()) -> LoadedModel:
    from diffusers import DiffusionPipeline

    path = resolve_model_path(reference)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), dtype=dtype, safety_checker=None,
                                                 requires_safety_checker=False)
    except Exception as exc:
        raise ModelLoadError(f"model {reference!r} at {path} failed to load: {exc}") from exc
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    optimize(pipe, fast, device, dtype)
    compile_unet(pipe, fast)
    scale = getattr(pipe, "vae_scale_factor", 8)
    side = int(pipe.unet.config.sample_size) * scale
    return LoadedModel(pipe, reference, model_hash(path), (side, side), pipe.scheduler)


def make_scheduler(model: LoadedModel, name: str | None):
    """The model's own scheduler for None, else the named one built from the model's scheduler config."""
    if name is None:
        return model.base_scheduler
    import diffusers

    class_name, options = SCHEDULER_CLASSES[name]
    return getattr(diffusers, class_name).from_config(model.base_scheduler.config, **options)
