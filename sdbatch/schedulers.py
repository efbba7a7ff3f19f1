"""The schedulers a manifest may name: diffusers class, the options that make the name true, A1111's name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scheduler:
    name: str  # as a manifest or job file writes it
    diffusers_class: str
    options: dict[str, Any] = field(default_factory=dict)  # passed to from_config with the model's config
    a1111: str = ""  # the sampler name in A1111 `parameters`


BY_NAME = {s.name: s for s in (
    Scheduler("ddim", "DDIMScheduler", a1111="DDIM"),
    Scheduler("pndm", "PNDMScheduler", a1111="PLMS"),
    Scheduler("euler", "EulerDiscreteScheduler", a1111="Euler"),
    Scheduler("euler_a", "EulerAncestralDiscreteScheduler", a1111="Euler a"),
    Scheduler("heun", "HeunDiscreteScheduler", a1111="Heun"),
    Scheduler("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "DPM++ 2M"),
    Scheduler("dpmpp_2m_karras", "DPMSolverMultistepScheduler",
              {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}, "DPM++ 2M Karras"),
    Scheduler("unipc", "UniPCMultistepScheduler", a1111="UniPC"),
)}
SCHEDULERS = tuple(BY_NAME)
# A model's own scheduler (scheduler = null) by class, so its sampler is named all the same: the first
# entry of a class names it (DPMSolverMultistepScheduler without Karras sigmas is "DPM++ 2M").
A1111_BY_CLASS = {s.diffusers_class: s.a1111 for s in reversed(BY_NAME.values())}
