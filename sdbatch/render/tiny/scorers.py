"""Tiny random-weight score models (`tiny:clip`, `tiny:aesthetic`, `tiny:safety`), offline, written once per node."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from sdbatch.errors import ModelLoadError
from sdbatch.render.models.sources import cache_root
from sdbatch.render.tiny.build import MARKER, list_files
from sdbatch.render.tiny.sd15 import MAX_TOKENS, make_tokenizer

# Part of the node copy's folder name: a change to how these are built gets a new folder, never a stale copy.
SCORER_VERSION = 1
PROJECTION = 16  # tiny CLIP's embedding width, so the tiny MLPs' input width
IMAGE_SIZE = 32
# What each tiny scorer is on disk: a transformers CLIP folder, or one weights file in its folder.
FILES = {"clip": None, "aesthetic": "aesthetic.safetensors", "safety": "safety.safetensors"}
NAMES = tuple(FILES)
# LAION's improved aesthetic predictor: Linear layers at these indices of its nn.Sequential (Dropout between).
AESTHETIC_INDICES = (0, 2, 4, 6, 7)
AESTHETIC_WIDTHS = (1024, 128, 64, 16, 1)
SAFETY_WIDTHS = (32, 16, 1)


def clip_config(tokenizer):
    from transformers import CLIPConfig

    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=IMAGE_SIZE, patch_size=8)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION)


def processor_config(size: int = IMAGE_SIZE) -> dict:
    """CLIP's preprocessing (bicubic resize of the short side, center crop, OpenAI's mean and std) at `size` px;
    written as JSON so no image-processor class (torchvision-backed or not) is chosen here."""
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": size, "width": size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}


def build_clip(seed: int = 0):
    """(CLIPModel, tokenizer) in memory, weights from a private RNG stream seeded with `seed`."""
    from transformers import CLIPModel

    tokenizer = make_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(clip_config(tokenizer))
    return model.eval(), tokenizer


def save_clip(model, tokenizer, folder: Path, image_size: int = IMAGE_SIZE) -> Path:
    """A transformers CLIP folder: config, weights, tokenizer, preprocessor config."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor_config(image_size), indent=1))
    return folder


def linear_state(widths: tuple[int, ...], indices: tuple[int, ...], seed: int, dim: int = PROJECTION) -> dict:
    """`layers.{i}.weight/bias` of Linear layers dim -> widths[0] -> ... at `indices`, as nn.Linear initializes."""
    state, width_in = {}, dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index, width in zip(indices, widths):
            layer = torch.nn.Linear(width_in, width)
            state[f"layers.{index}.weight"], state[f"layers.{index}.bias"] = layer.weight.data, layer.bias.data
            width_in = width
    return state


def aesthetic_state(seed: int = 0, dim: int = PROJECTION) -> dict:
    return linear_state(AESTHETIC_WIDTHS, AESTHETIC_INDICES, seed, dim)


def safety_state(seed: int = 0, dim: int = PROJECTION) -> dict:
    return linear_state(SAFETY_WIDTHS, tuple(range(len(SAFETY_WIDTHS))), seed, dim)


def tiny_scorer_path(name: str) -> Path:
    """The node's copy of `tiny:NAME` (a CLIP folder, or the weights file in its folder), written once on first use."""
    from filelock import FileLock

    if name not in FILES:
        raise ModelLoadError(f"tiny score model {name!r} is not known; use one of "
                             f"{', '.join('tiny:' + n for n in NAMES)}")
    target = cache_root() / "models" / f"tiny-{name}-v{SCORER_VERSION}"
    if not is_complete(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):  # several actors on one node build it once
            write_tiny_scorer(target, name)
    return target / FILES[name] if FILES[name] else target


def is_complete(directory: Path) -> bool:
    """True if `directory` holds every file its marker lists, at the listed sizes."""
    try:
        files = json.loads((directory / MARKER).read_text())["files"]
        return bool(files) and all((directory / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def write_tiny_scorer(target: Path, name: str, seed: int = 0) -> Path:
    """Write tiny:NAME into `target` through a staging folder renamed into place (a crash leaves no half model)."""
    if is_complete(target):
        return target
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(parents=True)
    try:
        _write(staging, name, seed)
        (staging / MARKER).write_text(json.dumps({"seed": seed, "scorer": name, "files": list_files(staging)}))
        try:
            os.replace(staging, target)  # atomic; fails on a non-empty target
        except OSError:
            if not is_complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write(folder: Path, name: str, seed: int) -> None:
    from safetensors.torch import save_file

    if name == "clip":
        save_clip(*build_clip(seed), folder)
    else:
        state = aesthetic_state(seed) if name == "aesthetic" else safety_state(seed)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / FILES[name]))
