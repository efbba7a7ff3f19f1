"""Pipelines of another kind (img2img, inpaint) over the same loaded modules: built with from_pipe, a few kept."""

from __future__ import annotations

import collections
from typing import Any

import torch

from sdbatch.errors import VariantError

KINDS = ("txt2img", "img2img", "inpaint")


class Kinds:
    """The img2img or inpaint pipeline of a base or ControlNet pipeline, sharing its UNet, VAE, text encoders and
    ControlNets (no second copy of any weight); the last `keep` built are kept."""

    def __init__(self, dtype: torch.dtype, keep: int = 4):
        self.dtype = dtype
        self.keep = keep
        # (id of the source, kind) -> (source, pipeline); the source is held so that its id is not reused.
        self._built: collections.OrderedDict[tuple[int, str], tuple[Any, Any]] = collections.OrderedDict()

    def of(self, source: Any, kind: str) -> Any:
        if kind == "txt2img":
            return source
        key = (id(source), kind)
        if key in self._built:
            self._built.move_to_end(key)
            return self._built[key][1]
        pipeline = self._build(source, kind)
        self._built[key] = (source, pipeline)
        while len(self._built) > self.keep:
            self._built.popitem(last=False)
        return pipeline

    def _build(self, source: Any, kind: str) -> Any:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        cls = {"img2img": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting}[kind]
        try:
            # dtype=: from_pipe otherwise casts every shared module to float32, the source's too.
            pipeline = cls.from_pipe(source, dtype=self.dtype)
        except Exception as exc:
            raise VariantError(f"no {kind} pipeline for {type(source).__name__}: {type(exc).__name__}: {exc}") from exc
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
