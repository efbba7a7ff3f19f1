"""The score steps' small model files (a local path, a store's object, tiny:NAME) and their Linear stacks."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from sdbatch.errors import FetchError, ModelLoadError
from sdbatch.manifest.models import TINY_PREFIX
from sdbatch.render.models.sources import cache_root
from sdbatch.render.tiny.scorers import tiny_scorer_path
from sdbatch.settings import S3Settings
from sdbatch.store import is_remote_store

# .pth/.pt are read with torch.load(weights_only=True): tensors only, no code runs.
SUFFIXES = (".safetensors", ".pth", ".pt")
LAYER_KEY = re.compile(r"^layers\.(\d+)\.(weight|bias)$")

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # (weight [out, in], bias [out]) per Linear, in order


def model_file(setting: str, reference: str | None, s3: S3Settings | None, step: str) -> Path:
    """The local file for a score model reference; `setting` names it in errors (e.g. aesthetic_model), `step` is the
    step that reads it, whose tiny model (tiny:STEP) is the one tiny model it may name."""
    if not reference:
        raise ModelLoadError(f"the {step} score step needs {setting}; set it in the job's [score] section "
                             f"(a {' or '.join(SUFFIXES)} file)")
    if reference.startswith(TINY_PREFIX):
        if reference != TINY_PREFIX + step:
            raise ModelLoadError(f"{setting} {reference!r} is not a tiny {step} model; use {TINY_PREFIX}{step}")
        return tiny_scorer_path(step)
    if not reference.lower().endswith(SUFFIXES):
        raise ModelLoadError(f"{setting} {reference!r} is not a weights file; name a {' or '.join(SUFFIXES)} file")
    if is_remote_store(reference):
        return _downloaded(setting, reference, s3)
    path = Path(reference).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{setting} {reference!r} does not exist; fix the path")
    return path


def _downloaded(setting: str, uri: str, s3: S3Settings | None) -> Path:
    from sdbatch.render.variants.fetch import Fetcher

    try:
        return Fetcher(s3).download(uri, cache_root() / "scorers")
    except FetchError as exc:
        raise ModelLoadError(f"{setting} {uri!r} could not be downloaded: {exc}") from exc


def file_hash(path: Path) -> str:
    """sha256 of the whole file: these files are megabytes, and the hash names the exact weights used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state(setting: str, reference: str, path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from .safetensors or .pth; ModelLoadError for anything else."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, a pickled module: each loader raises its own types
        raise ModelLoadError(f"{setting} {reference!r} could not be read as a state dict "
                             f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelLoadError(f"{setting} {reference!r} is not a state dict of tensors; save model.state_dict()")
    return state


def linear_layers(state: dict[str, torch.Tensor], where: str, expected: str) -> tuple[list[int], Layers]:
    """The `layers.{i}.weight/bias` pairs in numeric index order, their widths chained, one output at the end.
    `where` and `expected` (the layout) go into every error."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = LAYER_KEY.match(key)
        if not match:
            raise ModelLoadError(f"{where} has an unexpected tensor {key!r}; expected {expected}")
        found.setdefault(int(match.group(1)), {})[match.group(2)] = value.float()
    indices = sorted(found)
    layers = [(found[i].get("weight"), found[i].get("bias")) for i in indices]
    width = None
    for index, (weight, bias) in zip(indices, layers):
        if weight is None or bias is None or weight.dim() != 2 or bias.shape != weight.shape[:1]:
            raise ModelLoadError(f"{where}: layers.{index} is not a Linear layer (weight [out, in], bias [out]); "
                                 f"expected {expected}")
        if width is not None and weight.shape[1] != width:
            raise ModelLoadError(f"{where}: layers.{index} takes {weight.shape[1]} inputs but the layer before gives "
                                 f"{width}; expected {expected}")
        width = weight.shape[0]
    if not layers or width != 1:
        raise ModelLoadError(f"{where} does not end in one output; expected {expected}")
    return indices, layers


def check_input(where: str, layers: Layers, clip, expected: str) -> None:
    """Refuse a head trained on another CLIP: its input width must be the CLIP's embedding width."""
    width = layers[0][0].shape[1]
    if width != clip.embed_dim:
        raise ModelLoadError(f"{where} takes {width}-d embeddings but clip_model {clip.reference!r} gives "
                             f"{clip.embed_dim}-d; expected {expected}; use the head trained on that CLIP or set "
                             "clip_model to the CLIP it was trained on")


def run_layers(layers: Layers, x: torch.Tensor, activation=None) -> torch.Tensor:
    """x through the Linear stack, `activation` between consecutive layers (none after the last)."""
    for position, (weight, bias) in enumerate(layers):
        if position and activation is not None:
            x = activation(x)
        x = torch.nn.functional.linear(x, weight, bias)
    return x


class EmbeddingHead:
    """A step that is a Linear stack over the shared CLIP image embedding (aesthetic, safety): its layers on CLIP's
    device, and what it used. Subclasses name the step, its setting, its model class, and read its layers."""

    name: str
    setting: str  # the ScoreSettings field naming its weights file
    kind: str  # the model's class, as recorded

    def __init__(self, context) -> None:
        reference = getattr(context.settings, self.setting)
        path = model_file(self.setting, reference, context.s3, self.name)
        self.reference, self.model_hash, self.clip = reference, file_hash(path), context.clip()
        where = f"{self.setting} {reference!r} ({path.name})"
        layers = self.layers_of(load_state(self.setting, reference, path), where, self.clip)
        self.layers = [(w.to(self.clip.device), b.to(self.clip.device)) for w, b in layers]

    def layers_of(self, state: dict, where: str, clip) -> Layers:
        raise NotImplementedError

    def identity(self) -> dict:
        return {"model": self.reference, "model_hash": self.model_hash, "class": self.kind,
                "clip_model": self.clip.reference, "clip_model_hash": self.clip.model_hash}
