"""Turn a row's LoRA path or ControlNet model reference into local files: local, a store (node cache) or hub cache."""

from __future__ import annotations

import os
import pathlib
import re

from sdbatch.errors import VariantError
from sdbatch.render.models.sources import cache_root, looks_like_path
from sdbatch.render.variants.fetch import Fetcher
from sdbatch.store import is_remote_store

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
HUB_FILE = re.compile(r"^[\w.-]+/[\w.-]+/[^/]+\.safetensors$")  # org/name/file.safetensors


def resolve_lora_file(path: str, fetcher: Fetcher) -> pathlib.Path:
    """The local .safetensors file for a LoRA reference; VariantError saying what is wrong otherwise."""
    if is_remote_store(path):
        return fetcher.download(path, cache_root() / "loras")
    local = pathlib.Path(path).expanduser()
    if local.exists():
        return _weights_in(local)
    if HUB_FILE.match(path):
        org_name, _, filename = path.rpartition("/")
        return _from_hub(path, lambda hub: pathlib.Path(hub.hf_hub_download(org_name, filename)))
    if looks_like_path(path):
        raise VariantError("no such file or folder")
    folder = _from_hub(path, lambda hub: pathlib.Path(
        hub.snapshot_download(path, allow_patterns=["*.safetensors"])))
    return _weights_in(folder)


def _weights_in(local: pathlib.Path) -> pathlib.Path:
    if local.is_file():
        return local
    if (local / LORA_WEIGHT_NAME).is_file():
        return local / LORA_WEIGHT_NAME
    found = sorted(local.glob("*.safetensors"))
    if len(found) != 1:
        raise VariantError(f"the folder holds {len(found)} .safetensors files and no {LORA_WEIGHT_NAME}; "
                           "name the file in the path")
    return found[0]


def resolve_controlnet_dir(reference: str) -> pathlib.Path:
    """The local diffusers ControlNet folder (config.json + weights) for a reference."""
    local = pathlib.Path(reference).expanduser()
    if local.exists() or looks_like_path(reference):
        if not (local / "config.json").is_file():
            raise VariantError(f"{local} is not a diffusers ControlNet folder (no config.json)")
        return local
    return _from_hub(reference, lambda hub: pathlib.Path(
        hub.snapshot_download(reference, allow_patterns=["*.json", "*.safetensors"])))


def _from_hub(reference: str, download):
    import huggingface_hub

    try:
        return download(huggingface_hub)
    except Exception as exc:  # hub errors come in many types; all mean the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = ("HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache" if offline else
                "it could not be downloaded from the Hugging Face hub")
        raise VariantError(f"not a local path, and {hint} ({type(exc).__name__})") from exc
