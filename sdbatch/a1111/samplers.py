"""The samplers and schedule types a manifest may name, as sdbatch and A1111 write them, and their diffusers classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Schedule:
    name: str  # as sdbatch writes it, the suffix of a scheduler name: dpmpp_2m_karras
    a1111: str  # A1111's "Schedule type"
    options: dict[str, Any]  # what makes diffusers use it


@dataclass(frozen=True)
class Sampler:
    name: str
    a1111: str  # A1111's "Sampler"
    diffusers_class: str
    options: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = ()  # the schedule types its diffusers class takes, besides its own


@dataclass(frozen=True)
class Scheduler:
    """A sampler with a schedule type: what a row's `scheduler` names once normalized."""

    name: str
    diffusers_class: str
    options: dict[str, Any] = field(default_factory=dict)  # passed to from_config with the model's config
    a1111: str = ""  # the sampler name in A1111 `parameters`
    schedule: str = ""  # its "Schedule type" there; "" for the sampler's own (A1111's "Automatic")


SCHEDULES = {s.name: s for s in (
    Schedule("karras", "Karras", {"use_karras_sigmas": True}),
    Schedule("exponential", "Exponential", {"use_exponential_sigmas": True}),
    # diffusers' own mapping of A1111's "SGM Uniform": timesteps spaced from the end of the schedule.
    Schedule("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}),
    # Forge/ComfyUI's "Simple": every (train steps / steps)-th sigma counted from the end, which is diffusers'
    # trailing spacing; on a flow-matching model, the flow-match Euler's own schedule (what Forge writes for FLUX).
    Schedule("simple", "Simple", {"timestep_spacing": "trailing"}),
)}
SIGMAS = ("karras", "exponential", "sgm_uniform")  # for classes that take custom sigmas
SPACING = ("sgm_uniform",)  # for classes that only space their timesteps
SAMPLERS = {s.name: s for s in (
    Sampler("euler", "Euler", "EulerDiscreteScheduler", schedules=(*SIGMAS, "simple")),
    Sampler("euler_a", "Euler a", "EulerAncestralDiscreteScheduler", schedules=SPACING),
    Sampler("heun", "Heun", "HeunDiscreteScheduler", schedules=SIGMAS),
    Sampler("dpm2", "DPM2", "KDPM2DiscreteScheduler", schedules=SIGMAS),
    Sampler("dpm2_a", "DPM2 a", "KDPM2AncestralDiscreteScheduler", schedules=SIGMAS),
    Sampler("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, SIGMAS),
    Sampler("dpmpp_2m_sde", "DPM++ 2M SDE", "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++"}, SIGMAS),
    Sampler("dpmpp_3m_sde", "DPM++ 3M SDE", "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, SIGMAS),
    Sampler("ddim", "DDIM", "DDIMScheduler", schedules=SPACING),
    Sampler("pndm", "PLMS", "PNDMScheduler", schedules=SPACING),
    Sampler("unipc", "UniPC", "UniPCMultistepScheduler", schedules=SIGMAS),
    Sampler("deis", "DEIS", "DEISMultistepScheduler", schedules=SIGMAS),
    Sampler("ddpm", "DDPM", "DDPMScheduler", schedules=SPACING),
    Sampler("lcm", "LCM", "LCMScheduler", schedules=SPACING),
)}
# What A1111 offers that diffusers has no scheduler for, with why: refused, never replaced by a look-alike.
NOT_AVAILABLE = {
    "DPM++ 2S a": "diffusers has no ancestral single-step DPM++ scheduler",
    "DPM++ SDE": "diffusers' DPMSolverSDEScheduler needs the torchsde package, which sdbatch does not install",
    "DPM fast": "diffusers has no DPM fast", "DPM adaptive": "diffusers has no DPM adaptive",
    "Restart": "diffusers has no Restart sampler",
    "LMS": "diffusers' LMSDiscreteScheduler needs the scipy package, which sdbatch does not install",
    "DPM++ 2M SDE Heun": "diffusers has no Heun-corrected DPM++ SDE",
}
# Beta: diffusers' beta sigmas need scipy, which sdbatch does not install.
SCHEDULE_NOT_AVAILABLE = ("Uniform", "Polyexponential", "KL Optimal", "Align Your Steps", "Normal",
                          "DDIM", "Beta")
AUTOMATIC = ("", "automatic")  # A1111's "Automatic": the sampler's own schedule


def _product() -> dict[str, Scheduler]:
    out = {}
    for sampler in SAMPLERS.values():
        out[sampler.name] = Scheduler(sampler.name, sampler.diffusers_class, sampler.options, sampler.a1111)
        for name in sampler.schedules:
            schedule = SCHEDULES[name]
            out[f"{sampler.name}_{name}"] = Scheduler(f"{sampler.name}_{name}", sampler.diffusers_class,
                                                      {**sampler.options, **schedule.options}, sampler.a1111,
                                                      schedule.a1111)
    return out


BY_NAME = _product()
SCHEDULERS = tuple(BY_NAME)
# A model's own scheduler (scheduler = null) by class, so its sampler is named all the same: the first
# sampler of a class names it (DPMSolverMultistepScheduler without other options is "DPM++ 2M").
A1111_BY_CLASS = {s.diffusers_class: s.a1111 for s in reversed(SAMPLERS.values())}
A1111_BY_CLASS["FlowMatchEulerDiscreteScheduler"] = "Euler"  # SD3's and FLUX's own: Euler on flow matching
# The schedule type of a model's own scheduler where it is not the sampler's "Automatic": Forge calls the flow-match
# Euler's own spacing "Simple".
A1111_SCHEDULE_BY_CLASS = {"FlowMatchEulerDiscreteScheduler": "Simple"}
_BY_A1111 = {s.a1111.lower(): s for s in SAMPLERS.values()}
_SCHEDULE_BY_A1111 = {s.a1111.lower(): s for s in SCHEDULES.values()}


def resolve(scheduler: str, schedule: str | None = None) -> str:
    """The scheduler name a sampler and schedule type come to, from sdbatch's names (dpmpp_2m_karras) or
    A1111's, with the schedule apart ("DPM++ 2M" and "Karras", as A1111 1.10 writes them) or in one ("DPM++ 2M
    Karras", as earlier versions did). ValueError with the choices if diffusers has no such scheduler."""
    sampler, kind = _sampler_and_schedule(scheduler.strip(), (schedule or "").strip())
    if kind and kind not in sampler.schedules:
        takes = ", ".join(SCHEDULES[s].a1111 for s in sampler.schedules) or "only its own"
        raise ValueError(f"sampler {sampler.a1111!r} takes no {SCHEDULES[kind].a1111!r} schedule in diffusers "
                         f"(it takes: Automatic, {takes})")
    return f"{sampler.name}_{kind}" if kind else sampler.name


def _sampler_and_schedule(text: str, schedule: str) -> tuple[Sampler, str]:
    if text in BY_NAME and not schedule:
        named = BY_NAME[text]
        return SAMPLERS[named.name.removesuffix("_" + _suffix(named))], _suffix(named)
    kind = _schedule(schedule)
    sampler = SAMPLERS.get(text) or _BY_A1111.get(text.lower())
    if sampler is None and not schedule:  # "DPM++ 2M Karras": the schedule inside the name
        for suffix, found in _SCHEDULE_BY_A1111.items():
            if text.lower().endswith(" " + suffix):
                sampler, kind = _BY_A1111.get(text.lower()[:-len(suffix) - 1]), found.name
                break
    if sampler is None:
        why = next((reason for name, reason in NOT_AVAILABLE.items() if text.lower().startswith(name.lower())), "")
        known = ", ".join(f"{s.a1111} ({s.name})" for s in SAMPLERS.values())
        raise ValueError(f"{text!r} is not a sampler sdbatch knows{f' ({why})' if why else ''}; use one of: {known}")
    return sampler, kind


def _schedule(text: str) -> str:
    if text.lower() in AUTOMATIC:
        return ""
    found = SCHEDULES.get(text) or _SCHEDULE_BY_A1111.get(text.lower())
    if found is None:
        known = ", ".join(["Automatic", *(s.a1111 for s in SCHEDULES.values())])
        unsupported = " (diffusers has no such schedule)" if text in SCHEDULE_NOT_AVAILABLE else ""
        raise ValueError(f"schedule type {text!r} is not known{unsupported}; use one of: {known}")
    return found.name


def _suffix(named: Scheduler) -> str:
    return next((s.name for s in SCHEDULES.values() if s.a1111 == named.schedule), "")
