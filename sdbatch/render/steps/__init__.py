"""Post-render score steps behind one protocol (protocol.py); STEPS: each step's factory, by sdbatch.scores name."""

from sdbatch.render.steps import aesthetic, clip, phash, safety
from sdbatch.render.steps.protocol import ScoreBatch, ScoreStep, StepContext, StepFactory

STEPS: dict[str, StepFactory] = {"clip": clip.make, "aesthetic": aesthetic.make, "safety": safety.make,
                                 "phash": phash.make}

__all__ = ["STEPS", "ScoreBatch", "ScoreStep", "StepContext", "StepFactory"]
