"""The phash step: the 64-bit perceptual hash (imagehash.phash) datasets dedupe by, as 16 hex characters."""

from __future__ import annotations

from typing import Any

from sdbatch.render.steps.protocol import ScoreBatch, StepContext


class PhashStep:
    name = "phash"

    def __init__(self) -> None:
        # Imported by the step, not the package: an actor that does not hash must not need imagehash and scipy.
        import imagehash

        self.imagehash = imagehash

    def identity(self) -> dict[str, Any]:
        return {"class": "imagehash.phash", "version": self.imagehash.__version__, "hash_size": 8}

    def score(self, batch: ScoreBatch) -> dict[str, list]:
        return {"phash": [str(self.imagehash.phash(image.convert("RGB"))) for image in batch.images]}


def make(context: StepContext) -> PhashStep:
    return PhashStep()
