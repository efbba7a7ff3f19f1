"""Scorer: the named score steps loaded once (CLIP shared by the steps that read it), run over images in chunks."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from sdbatch.render.steps import STEPS
from sdbatch.render.steps.clip import Clip, load_clip
from sdbatch.render.steps.protocol import ScoreBatch, ScoreStep, StepContext
from sdbatch.scores import STEP_INFO, parse_steps
from sdbatch.settings import S3Settings, ScoreSettings


class Scorer:
    """Stateful: build once per process, then score batch after batch. Only the steps in `settings.steps` load; CLIP
    loads once, when the first step that needs it does."""

    def __init__(self, settings: ScoreSettings, device: torch.device | str | None = None,
                 s3: S3Settings | None = None):
        self.settings = settings
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.s3 = s3
        self._clip: Clip | None = None
        context = StepContext(settings, self.device, s3, self.clip)
        self.steps: dict[str, ScoreStep] = {name: STEPS[name](context) for name in parse_steps(settings.steps)}

    def clip(self) -> Clip:
        """The shared CLIP, loaded on first call."""
        if self._clip is None:
            self._clip = load_clip(self.settings.clip_model, self.device, self.s3)
        return self._clip

    def batch(self, images: list[Image.Image], prompts: list[str]) -> ScoreBatch:
        """A ScoreBatch wired to the shared CLIP when a step reads its embeddings."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        uses_clip = any(STEP_INFO[name].clip for name in self.steps)
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        return ScoreBatch(rgb, list(prompts), self.clip().embed_images if uses_clip else None)

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, dict[str, list]]:
        """Step -> column -> one value per image, in order; settings.batch_size images per model call."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out = {name: {column: [] for column, _ in STEP_INFO[name].columns} for name in self.steps}
        size = max(1, self.settings.batch_size)
        with torch.inference_mode():
            for start in range(0, len(images), size):
                batch = self.batch(images[start:start + size], prompts[start:start + size])
                for name, step in self.steps.items():
                    for column, values in step.score(batch).items():
                        out[name][column].extend(values)
        return out

    def identity(self) -> dict[str, dict[str, Any]]:
        """Per step, what it used (model reference, hash, class; phash: imagehash's version)."""
        return {name: step.identity() for name, step in self.steps.items()}
