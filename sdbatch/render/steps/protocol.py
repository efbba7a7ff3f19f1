"""What a score step is: its protocol, the batch of images it scores, and what it is built from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from sdbatch.settings import S3Settings, ScoreSettings


@dataclass
class ScoreBatch:
    """Images with their prompts; the CLIP image embedding is computed on first use and shared by every step that
    reads it, so clip, aesthetic and safety run CLIP's vision tower once per image."""

    images: list[Image.Image]  # RGB
    prompts: list[str]
    embed: Callable[[list[Image.Image]], torch.Tensor] | None = None  # the shared CLIP's image embedding
    _embeds: torch.Tensor | None = field(default=None, init=False, repr=False)

    def image_embeds(self) -> torch.Tensor:
        """L2-normalized CLIP image embeddings, float32, one row per image."""
        if self._embeds is None:
            if self.embed is None:
                raise RuntimeError("this score batch has no CLIP; a step that reads embeddings needs StepInfo.clip")
            self._embeds = self.embed(self.images)
        return self._embeds


class ScoreStep(Protocol):
    """One post-render step: its result columns are sdbatch.scores.STEP_INFO[name].columns."""

    name: str

    def identity(self) -> dict[str, Any]:
        """What the step used (model reference, hash, class, versions): JSON values, recorded with its scores."""
        ...

    def score(self, batch: ScoreBatch) -> dict[str, list]:
        """Column -> one value per image of the batch, in order."""
        ...


@dataclass(frozen=True)
class StepContext:
    """What a step's factory builds it from; `clip()` loads the shared CLIP on first call (steps that need it)."""

    settings: ScoreSettings
    device: torch.device
    s3: S3Settings | None
    clip: Callable[[], Any]  # -> steps.clip.Clip


StepFactory = Callable[[StepContext], ScoreStep]
