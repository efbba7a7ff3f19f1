"""What a generator's metadata says of an image: a manifest row that renders it again, and what it does not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sdbatch.a1111.samplers import resolve
from sdbatch.metadata.image import ImageTexts


@dataclass
class Reading:
    """A row (manifest columns) and the fields of the image's metadata that the row does not render as written,
    by name (counted per image, reported, refused with --strict)."""

    generator: str
    row: dict[str, Any]
    unrendered: list[str] = field(default_factory=list)


class Generator(Protocol):
    """One generator's metadata: whether an image carries it, and the row it describes."""

    name: str

    def claims(self, image: ImageTexts) -> bool: ...
    def read(self, image: ImageTexts) -> Reading: ...


# Sampler and schedule names as ComfyUI (and Fooocus, NovelAI, InvokeAI after their prefixes) write them, as
# sdbatch names them; what is not here is reported, not replaced by a look-alike.
SAMPLER_ALIASES = {
    "euler": "euler", "euler_ancestral": "euler_a", "euler_a": "euler_a", "heun": "heun", "dpm_2": "dpm2",
    "dpm_2_ancestral": "dpm2_a", "kdpm_2": "dpm2", "kdpm_2_a": "dpm2_a", "dpm_2_a": "dpm2_a", "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_sde": "dpmpp_2m_sde", "dpmpp_3m_sde": "dpmpp_3m_sde", "ddim": "ddim", "uni_pc": "unipc",
    "unipc": "unipc", "lcm": "lcm", "ddpm": "ddpm", "deis": "deis", "pndm": "pndm", "plms": "pndm",
}
SCHEDULE_ALIASES = {"": "", "normal": "", "automatic": "", "native": "", "karras": "karras",
                    "exponential": "exponential", "sgm_uniform": "sgm_uniform", "simple": "simple"}


def scheduler_of(sampler: str | None, schedule: str | None, field_name: str, unrendered: list[str]) -> str | None:
    """sdbatch's scheduler for a sampler and schedule named in another tool's words; None (the model's own) and
    the field reported when sdbatch has no such sampler."""
    if not sampler:
        return None
    name = SAMPLER_ALIASES.get(str(sampler).lower())  # str: a damaged graph may hold a list or a number here
    kind = SCHEDULE_ALIASES.get(str(schedule or "").lower())
    try:
        if name is None or kind is None:
            raise ValueError(sampler)
        return resolve(name, kind or None)
    except ValueError:
        unrendered.append(f"{field_name} ({sampler}{f' {schedule}' if schedule else ''})")
        return None


def number(value: Any, kind: type = float) -> Any:
    """A number from metadata, or None where it holds none."""
    try:
        return kind(str(value).strip()) if value is not None else None
    except ValueError:
        return None
