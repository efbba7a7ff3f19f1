"""Model sources: a model reference (tiny:, local folder or file, hub id, a store's) made local files on this node."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from sdbatch.errors import ModelLoadError, StoreError, reading
from sdbatch.manifest.models import (
    TINY_PREFIX,
    UNSAFE_SUFFIXES,
    is_single_file,
    local_problem,
    looks_like_path,
)
from sdbatch.settings import S3Settings
from sdbatch.store import is_remote_store, open_store
from sdbatch.store.base import Store, check_key

# Importing torch or diffusers here would make every light caller (the s3 download race among processes)
# pay seconds: they are imported inside the functions that need them.

DONE = "sdbatch_download.json"  # written last into a downloaded folder: its presence means complete


@dataclass(frozen=True)
class ModelSource:
    reference: str  # as written in the manifest
    path: Path  # a diffusers folder, or a single-file checkpoint
    downloaded: bool = False  # this call fetched it (s3://); False when it came from the node's cache

    @property
    def single_file(self) -> bool:
        return self.path.is_file()


def cache_root() -> Path:
    """Where sdbatch keeps models it builds or downloads on this node."""
    return Path(os.environ.get("SDBATCH_CACHE", Path.home() / ".cache" / "sdbatch"))


def resolve_source(reference: str, s3: S3Settings | None = None, marker: str = "model_index.json",
                   hub_patterns: list[str] | None = None) -> ModelSource:
    """Local files for a reference: tiny models built, local paths checked, s3:// fetched once per node, hub ids
    from the Hugging Face cache (or downloaded unless HF_HUB_OFFLINE). `marker`: the file a folder must hold;
    `hub_patterns`: the files of a hub repo to fetch (None: what a pipeline needs)."""
    if reference.startswith(TINY_PREFIX):
        return ModelSource(reference, tiny_model_path(reference[len(TINY_PREFIX):]))
    if is_remote_store(reference):
        path, downloaded = fetch_copy(reference, s3)
        return ModelSource(reference, _checked(reference, path, marker), downloaded)
    path = Path(reference).expanduser()
    if path.exists() or looks_like_path(reference):
        problem = local_problem(str(path)) if path.exists() else local_problem(reference)
        if problem:
            raise ModelLoadError(f"model {problem}")
        return ModelSource(reference, _checked(reference, path, marker))
    return ModelSource(reference, _checked(reference, hub_snapshot(reference, hub_patterns), marker))


def tiny_model_path(name: str) -> Path:
    """The node's copy of a tiny model (`tiny:sd15`, `tiny:sdxl`), written once on first use."""
    from filelock import FileLock

    from sdbatch.render.tiny.build import FAMILIES, TINY_VERSION, is_tiny_model_dir, write_tiny_model

    if name not in FAMILIES:
        raise ModelLoadError(f"tiny model {name!r} is not known; use one of "
                             f"{', '.join(TINY_PREFIX + n for n in FAMILIES)}")
    target = cache_root() / "models" / f"tiny-{name}-v{TINY_VERSION}"
    if is_tiny_model_dir(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # several actors on one node build it once
        return Path(write_tiny_model(target, family=name))


def _checked(reference: str, path: Path, marker: str) -> Path:
    if path.is_dir() and not (path / marker).is_file():
        raise ModelLoadError(f"model {reference!r}: {path} has no {marker}; pass a folder saved with "
                             "save_pretrained or a single .safetensors file")
    return path


def hub_snapshot(reference: str, patterns: list[str] | None = None) -> Path:
    """A hub repo from the local Hugging Face cache, or downloaded; HF_HUB_OFFLINE makes a miss an error.
    patterns None: the files a pipeline needs (diffusers picks them); else only files matching them."""
    try:
        if patterns is None:
            from diffusers import DiffusionPipeline

            return Path(DiffusionPipeline.download(reference))
        import huggingface_hub

        return Path(huggingface_hub.snapshot_download(reference, allow_patterns=patterns))
    except Exception as exc:  # hub errors come in many types; all mean the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline else
                "it is not in the local Hugging Face cache and could not be downloaded")
        raise ModelLoadError(f"model {reference!r} is not a local path and {hint} ({type(exc).__name__}); "
                             f"download it first (hf download {reference}) or pass a local path") from exc


def fetch_copy(uri: str, s3: S3Settings | None) -> tuple[Path, bool]:
    """The node-local copy of a folder or file in a store (s3://) as the store holds it now: (path, whether this call
    downloaded it).

    The copy is keyed by the objects' ETags and sizes, so a model overwritten in place is fetched again,
    not served stale. One process per node downloads (an flock); the others wait and find it complete.
    Files stream to disk in a temp folder that is renamed into place, so a crash leaves no half model.
    """
    bucket_prefix = uri.rstrip("/")
    name = bucket_prefix.rsplit("/", 1)[-1]
    # The endpoint is part of the identity: the same bucket/key on two S3 services is two models.
    endpoint = (s3.endpoint_url if s3 else None) or ""
    home = cache_root() / "s3"
    uri_id = hashlib.sha256(f"{endpoint}|{bucket_prefix}".encode()).hexdigest()[:16]
    files = _objects(bucket_prefix, s3)
    folder = home / f"{uri_id}-{_version(files)}"
    target = folder / name if is_single_file(uri) else folder
    if (folder / DONE).is_file():
        return target, False
    home.mkdir(parents=True, exist_ok=True)
    with _flock(home / f"{uri_id}.lock"):
        if (folder / DONE).is_file():  # another process finished while this one waited
            return target, False
        staging = home / f".{folder.name}.{uuid.uuid4().hex}.tmp"
        try:
            _download(bucket_prefix, files, staging)
            if _version(_objects(bucket_prefix, s3)) != _version(files):
                raise ModelLoadError(f"model {uri!r} changed while it was downloaded; rerun once its upload is "
                                     "complete (or upload each version under a new prefix)")
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier copy (no DONE marker)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _drop_other_copies(home, uri_id, keep=folder)
    return target, True


def _objects(uri: str, s3: S3Settings | None) -> dict[str, tuple[Store, str, str]]:
    """The model's objects: {path relative to the copy: (store, key, tag)}; pickled twins left out."""
    parent, _, name = uri.rpartition("/")
    with _model_store(uri, "listed"):
        if is_single_file(uri):
            store = open_store(parent, s3)
            found = {key: tag for key, tag in store.tags(name).items() if key == name}
        else:
            store = open_store(uri, s3)
            tags = store.tags()
            found = {key: tags[key] for key in _weights_once(list(tags))}
    if not found:
        raise ModelLoadError(f"model {uri!r}: no objects under that prefix; upload the diffusers folder "
                             "(model_index.json and its subfolders) or name a .safetensors object")
    return {check_key(key): (store, key, tag) for key, tag in found.items()}


def _model_store(uri: str, doing: str):
    """Store failures as ModelLoadError, except those that may pass (InputUnavailable: its shards are
    retried, not given up)."""
    return reading(ModelLoadError, f"model {uri!r} could not be {doing}", catch=(StoreError,))


def _version(files: dict[str, tuple[Store, str, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted((k, v[2]) for k, v in files.items())).encode()).hexdigest()[:12]


def _download(uri: str, files: dict[str, tuple[Store, str, str]], staging: Path) -> None:
    with _model_store(uri, "downloaded"):
        for relative, (store, key, _tag) in files.items():
            local = staging / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            store.download(key, str(local))
    (staging / DONE).write_text(json.dumps({"uri": uri, "files": {k: v[2] for k, v in sorted(files.items())}}))


def _drop_other_copies(home: Path, uri_id: str, keep: Path) -> None:
    """Other versions of the model, staging left by a killed downloader (the lock is ours), and the
    unversioned copy (home/uri_id) that earlier sdbatch versions kept: GBs each on a rented node's disk."""
    for stale in [home / uri_id, *home.glob(f"{uri_id}-*"), *home.glob(f".{uri_id}-*.tmp")]:
        if stale != keep and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _weights_once(keys: list[str]) -> list[str]:
    """The folder's keys without pickled twins of .safetensors weights: never loaded, often gigabytes."""
    safe_dirs = {key.rpartition("/")[0] for key in keys if key.endswith(".safetensors")}
    return [k for k in keys if not (k.endswith(UNSAFE_SUFFIXES) and k.rpartition("/")[0] in safe_dirs)]


@contextlib.contextmanager
def _flock(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, also if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
