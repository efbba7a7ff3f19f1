"""Tiny random-weight models by family (SD1.5, SDXL, SD3, FLUX.1, Z-Image), offline: in memory or as a folder."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import shutil
import uuid

# diffusers and transformers are imported inside functions: they take seconds to import, and
# is_tiny_model_dir must stay cheap for callers that only check a folder.

# Written last, inside the temp folder, so its presence means every other file is complete.
MARKER = "sdbatch_tiny.json"
# Each family's builder, as module and function: imported on first use.
BUILDERS = {
    "sd15": ("sdbatch.render.tiny.sd15", "build_sd15_pipeline"),
    "sdxl": ("sdbatch.render.tiny.sdxl", "build_sdxl_pipeline"),
    "sd3": ("sdbatch.render.tiny.sd3", "build_sd3_pipeline"),
    "flux": ("sdbatch.render.tiny.flux", "build_flux_pipeline"),
    "zimage": ("sdbatch.render.tiny.zimage", "build_zimage_pipeline"),
}
FAMILIES = tuple(BUILDERS)
# Part of the node copy's folder name: a change to how tiny models are built gets a new folder, never a stale copy.
TINY_VERSION = 2


def build_pipeline(seed: int, family: str = "sd15"):
    """Build the pipeline of `family` in memory, its weights drawn from a private RNG stream seeded with `seed`."""
    if family not in BUILDERS:
        raise ValueError(f"tiny family {family!r} is not known; use one of {', '.join(FAMILIES)}")
    module, function = BUILDERS[family]
    return getattr(importlib.import_module(module), function)(seed)


def list_files(root: pathlib.Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def is_tiny_model_dir(directory: str | os.PathLike) -> bool:
    """True if `directory` holds a complete model written by write_tiny_model."""
    root = pathlib.Path(directory)
    try:
        files = json.loads((root / MARKER).read_text())["files"]
        return "model_index.json" in files and all(
            (root / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def write_tiny_model(directory: str | os.PathLike, seed: int = 0, family: str = "sd15") -> pathlib.Path:
    """Write a tiny random-weight diffusers model folder of `family` (no hub) and return its path.

    A folder that already holds a complete tiny model is returned as is, whatever seed wrote it.
    """
    target = pathlib.Path(directory)
    if is_tiny_model_dir(target):
        return target
    refuse_to_clobber(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling on the same filesystem, so the final rename is atomic. Plain mkdir (not
    # mkdtemp, which forces mode 0700) so the published folder gets the usual umask permissions.
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    try:
        build_pipeline(seed, family).save_pretrained(staging, safe_serialization=True)
        marker = {"seed": seed, "family": family, "files": list_files(staging)}
        (staging / MARKER).write_text(json.dumps(marker, indent=1))
        publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def refuse_to_clobber(target: pathlib.Path) -> None:
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not a tiny model; refusing to overwrite it")


def publish(staging: pathlib.Path, target: pathlib.Path) -> None:
    """Rename the finished folder into place; lose a race to another writer gracefully."""
    try:
        # POSIX rename replaces a missing or empty directory atomically and fails on a non-empty one.
        os.replace(staging, target)
    except OSError:
        if not is_tiny_model_dir(target):
            refuse_to_clobber(target)
            raise
