"""Pipelines of another kind (img2img, inpaint) over the same loaded modules, kept as long as their source."""

from __future__ import annotations

import weakref
from typing import Any

import torch

from sdbatch.errors import VariantError
from sdbatch.render.families import for_model
from sdbatch.render.families.protocol import RenderFamily

KINDS = ("txt2img", "img2img", "inpaint")


class Kinds:
    """The img2img or inpaint pipeline of a base or ControlNet pipeline, sharing its denoiser, VAE, text encoders and
    ControlNets (no second copy of any weight). Each is kept while its source pipeline lives: the model and
    ControlNet caches decide that, and a ControlNet they drop is not held here."""

    def __init__(self, dtype: torch.dtype, family: RenderFamily | None = None):
        self.dtype = dtype
        self.family = family  # None: each source's own, by its class
        self._built: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()

    def of(self, source: Any, kind: str) -> Any:
        if kind == "txt2img":
            return source
        built = self._built.setdefault(source, {})
        if kind not in built:
            built[kind] = self._build(source, kind)
        return built[kind]

    def _build(self, source: Any, kind: str) -> Any:
        family = self.family or for_model(source)
        try:
            return family.derive(source, kind, self.dtype)
        except Exception as exc:
            raise VariantError(f"no {kind} pipeline for {type(source).__name__}: {type(exc).__name__}: {exc}") from exc
