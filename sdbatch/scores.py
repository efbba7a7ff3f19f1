"""Post-render score steps as data: each step's result columns and the settings it needs; torch-free, so the
driver checks a job's steps and the output schema knows their columns before any GPU is asked for."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class StepInfo:
    """What the output and the driver know of a step; its implementation is render.steps.STEPS[name]."""

    name: str
    columns: tuple[tuple[str, pa.DataType], ...]  # per image, in the score file and in read_results
    needs: tuple[str, ...] = ()  # ScoreSettings fields that must be set for this step
    clip: bool = False  # reads the CLIP image embedding, computed once per image for every step that does


STEP_INFO = {
    "clip": StepInfo("clip", (("clip_score", pa.float32()),), ("clip_model",), clip=True),
    "aesthetic": StepInfo("aesthetic", (("aesthetic", pa.float32()),), ("clip_model", "aesthetic_model"), clip=True),
    "safety": StepInfo("safety", (("punsafe", pa.float32()),), ("clip_model", "safety_model"), clip=True),
    "phash": StepInfo("phash", (("phash", pa.string()),)),
}
STEP_NAMES = tuple(STEP_INFO)
# Where each numeric score falls, for the morning report's histograms: a cosine; LAION's 1-10 rating scale
# (random or odd models can leave it: the end bins take those); a probability.
SCORE_RANGES = {"clip_score": (-1.0, 1.0), "aesthetic": (0.0, 10.0), "punsafe": (0.0, 1.0)}


def score_columns(steps: tuple[str, ...] = STEP_NAMES) -> list[tuple[str, pa.DataType]]:
    """The result columns the steps add, in step order."""
    return [column for name in steps for column in STEP_INFO[name].columns]


def parse_steps(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """("clip", "phash") from "clip,phash" or a list; ValueError naming the known steps otherwise."""
    parts = text.split(",") if isinstance(text, str) else text
    if not isinstance(parts, (list, tuple)) or not all(isinstance(part, str) for part in parts):
        raise ValueError('give step names as text, e.g. ["clip", "phash"] or "clip,phash"')
    names = [part.strip() for part in parts]
    names = [name for name in names if name]
    unknown = [name for name in names if name not in STEP_INFO]
    if unknown:
        raise ValueError(f"unknown score step {unknown[0]!r}; use any of {', '.join(STEP_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError("a score step is named twice")
    return tuple(names)
