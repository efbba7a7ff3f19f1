"""Model loading: a reference to a pipeline of the class the model names (folder or single file); device, dtype."""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sdbatch.a1111.samplers import BY_NAME as SCHEDULERS_BY_NAME
from sdbatch.errors import ModelLoadError
from sdbatch.family import CONFIG_METADATA, checkpoint_for, folder_class, read_header, unknown_checkpoint
from sdbatch.render.families import RenderFamily, for_pipeline_class
from sdbatch.render.models.fastpath import pick_dtype
from sdbatch.render.models.sources import cache_root, hub_snapshot, resolve_source
from sdbatch.settings import FastPath, S3Settings

# A single-file checkpoint carries weights only: its configs come from the reference repo of its kind
# (sdbatch.family's checkpoints; config files only, from the Hugging Face cache), unless its metadata names one.
CONFIG_FILES = ["*.json", "*.txt"]  # configs, tokenizer vocabularies and merges; no weights


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
        config = single_file_config(source.path) if source.single_file else source.path
        family = for_pipeline_class(folder_class(config) or "", f"model {reference!r}")
        pipe = _from_single_file(source.path, config, dtype) if source.single_file else _from_folder(config, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:
        where = "" if Path(reference).expanduser() == source.path else f" at {source.path}"  # e.g. an s3 copy
        raise ModelLoadError(f"model {reference!r}{where} failed to load: {exc}") from exc
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    family.optimize(pipe, fast, device, dtype)
    family.compile(pipe, fast)
    return LoadedModel(pipe, reference, model_hash(source.path), family.native_size(pipe), pipe.scheduler, family)


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


def _from_single_file(path: Path, config: Path, dtype: torch.dtype):
    cls = pipeline_class(config)
    if not hasattr(cls, "from_single_file"):
        raise ModelLoadError(f"{cls.__name__} cannot load single-file checkpoints; convert {path.name} to a "
                             "diffusers folder")
    # torch_dtype: from_single_file does not take dtype= in diffusers 0.42.
    return cls.from_single_file(str(path), config=str(config), torch_dtype=dtype, local_files_only=True,
                                **_options(cls))


def single_file_config(path: Path) -> Path:
    """A folder of configs only (no weights, so nothing is silently taken from it) that fits the checkpoint."""
    header = read_header(path)
    named = (header.get("__metadata__") or {}).get(CONFIG_METADATA)
    if named:
        return _configs_only(resolve_source(named).path)
    found = checkpoint_for(set(header) - {"__metadata__"})
    if found is None:
        raise unknown_checkpoint(path.name)
    kind, repo = found[1].name, found[1].config_repo
    try:
        return hub_snapshot(repo, CONFIG_FILES)
    except ModelLoadError as exc:  # the message would name only the hub repo, not the user's file
        raise ModelLoadError(
            f"{path.name} is a single-file {kind} checkpoint; its configs (json and txt files, no weights) "
            f"come from the hub repo {repo}, which is not in this node's Hugging Face cache and could not be "
            f"fetched. Run `hf download {repo} --include '*.json' '*.txt'` where the actors run (or share "
            "HF_HOME), or convert the file to a diffusers folder") from exc


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
