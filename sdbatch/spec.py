"""Job specs: a JobSpec from a job file (TOML, or JSON as in job.json) and flags, validated; the run identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from sdbatch.a1111.samplers import resolve
from sdbatch.a1111.syntax import SYNTAXES
from sdbatch.errors import SpecError
from sdbatch.scores import STEP_INFO, parse_steps
from sdbatch.settings import (
    ADDED_DEFAULTS,
    HIRES_UPSCALERS,
    LIMITS,
    MAX_CLIP_SKIP,
    OFFLOADS,
    QUANTIZATIONS,
    FastPath,
    OutputSettings,
    RowDefaults,
    RunSettings,
    ScoreSettings,
    step_cache_parts,
)

IMAGE_FORMATS = ("png", "jpeg", "webp")
DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "bfloat16", "float16", "float32")
# [render] settings that change images (part of the run's identity); the rest only change speed or memory.
IMAGE_RENDER_SETTINGS = ("quantize", "step_cache")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class JobSpec:
    """Everything that shapes a run, besides the manifest and the output location."""

    defaults: RowDefaults = field(default_factory=RowDefaults)
    output: OutputSettings = field(default_factory=OutputSettings)
    run: RunSettings = field(default_factory=RunSettings)
    # Part of the run's identity only where it changes images (IMAGE_RENDER_SETTINGS): precision is recorded
    # per image (dtype), like the device.
    render: FastPath = field(default_factory=FastPath)
    # Not part of the run's identity: adding a score step to a finished run scores it, and re-renders nothing.
    score: ScoreSettings = field(default_factory=ScoreSettings)

    def validate(self) -> JobSpec:
        d, o, r = self.defaults, self.output, self.run
        _check(d.steps > 0, "defaults.steps", d.steps, "use a positive number of steps, e.g. 30")
        _check(0 <= d.guidance_scale < math.inf, "defaults.guidance_scale", d.guidance_scale, "use a finite value >= 0")
        for name in ("width", "height"):
            value = getattr(d, name)
            _check(value is None or (value > 0 and value % 8 == 0), f"defaults.{name}", value,
                   "use a positive multiple of 8, e.g. 512")
        if d.scheduler is not None:
            try:
                resolve(d.scheduler)
            except ValueError as exc:
                raise SpecError(f"job setting defaults.scheduler = {d.scheduler!r} is invalid: {exc}") from exc
        _check(d.prompt_syntax in SYNTAXES, "defaults.prompt_syntax", d.prompt_syntax,
               f"use one of {', '.join(SYNTAXES)}")
        for name in ("strength", "hires_strength"):
            _check(0 < getattr(d, name) <= 1, f"defaults.{name}", getattr(d, name), "use a value in (0, 1]")
        _check(d.hires_upscaler in HIRES_UPSCALERS, "defaults.hires_upscaler", d.hires_upscaler,
               f"use one of {', '.join(HIRES_UPSCALERS)}")
        _check(1 <= d.clip_skip <= MAX_CLIP_SKIP, "defaults.clip_skip", d.clip_skip,
               f"use 1 (no skip) to {MAX_CLIP_SKIP}, as A1111 counts")
        _check(0 <= d.seed < 2**63, "defaults.seed", d.seed, "use an integer in [0, 2**63)")
        _check(d.max_steps >= 1, "defaults.max_steps", d.max_steps, "use at least 1")
        _check(d.steps <= d.max_steps, "defaults.steps", d.steps, f"use at most defaults.max_steps ({d.max_steps})")
        _check(d.max_pixels >= 64 * 64, "defaults.max_pixels", d.max_pixels, "use at least 4096 (64 x 64)")
        _check(o.format in IMAGE_FORMATS, "output.format", o.format, f"use one of {', '.join(IMAGE_FORMATS)}")
        _check(1 <= o.quality <= 100, "output.quality", o.quality, "use 1..100")
        _check(o.shard_size >= 1, "output.shard_size", o.shard_size, "use at least 1")
        _check(r.actors is None or r.actors >= 1, "run.actors", r.actors, "use at least 1")
        _check(r.device in DEVICES, "run.device", r.device, f"use one of {', '.join(DEVICES)}")
        _check(r.batch_size is None or r.batch_size >= 1, "run.batch_size", r.batch_size,
               "use at least 1, or leave it unset for what fits the GPU")
        for name in ("shards_in_flight", "max_shard_attempts", "io_threads"):
            _check(getattr(r, name) >= 1, f"run.{name}", getattr(r, name), "use at least 1")
        for name in ("index_seconds", "hung_shard_seconds", "heartbeat_seconds"):
            _check(getattr(r, name) > 0, f"run.{name}", getattr(r, name), "use a positive number of seconds")
        _check(r.start_timeout is None or r.start_timeout > 0, "run.start_timeout", r.start_timeout,
               "use a positive number of seconds, or leave it unset (300 on a private Ray, 1800 on a cluster)")
        _check(r.hung_shard_factor >= 1, "run.hung_shard_factor", r.hung_shard_factor, "use at least 1")
        _check(r.ray_restarts >= 0, "run.ray_restarts", r.ray_restarts, "use 0 or more")
        self._validate_render()
        return dataclasses.replace(self, score=checked_score(self.score))

    def _validate_render(self) -> None:
        f = self.render
        _check(f.dtype in DTYPES, "render.dtype", f.dtype, f"use one of {', '.join(DTYPES)}")
        _check(f.compile_mode in COMPILE_MODES, "render.compile_mode", f.compile_mode,
               f"use one of {', '.join(COMPILE_MODES)}")
        for name in ("lora_rank", "lora_slots"):
            _check(getattr(f, name) >= 1, f"render.{name}", getattr(f, name), "use at least 1")
        _check(f.offload in OFFLOADS, "render.offload", f.offload, f"use one of {', '.join(OFFLOADS)}")
        _check(f.quantize in QUANTIZATIONS, "render.quantize", f.quantize, f"use one of {', '.join(QUANTIZATIONS)}")
        try:
            step_cache_parts(f.step_cache)
        except ValueError as exc:
            _check(False, "render.step_cache", f.step_cache, str(exc))
        on_cpu = self.run.device == "cpu"
        _check(not (on_cpu and f.offload != "none"), "render.offload", f.offload,
               "offloading moves weights between a GPU and host memory; with run.device = cpu use none")
        _check(not (on_cpu and f.quantize == "fp8"), "render.quantize", f.quantize,
               "fp8 needs a GPU that has it (Ada, Hopper or later); on the CPU use int8 or none")

    def identity(self) -> dict[str, Any]:
        """The settings that decide what the output contains; a resume must match them."""
        defaults = {k: v for k, v in dataclasses.asdict(self.defaults).items()
                    if k not in LIMITS and not (k in ADDED_DEFAULTS and v is None)}
        # Only what changes images, and only once set: runs from before these settings keep their identity.
        render = {name: getattr(self.render, name) for name in IMAGE_RENDER_SETTINGS
                  if getattr(self.render, name) != "none"}
        identity = {"defaults": defaults, "output": dataclasses.asdict(self.output)}
        return {**identity, "render": render} if render else identity

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def checked_score(score: ScoreSettings) -> ScoreSettings:
    """The [score] settings with their steps as a tuple (a TOML list, or "clip,phash"), each step's models set."""
    try:
        steps = parse_steps(score.steps)
    except ValueError as exc:
        raise SpecError(f"job setting score.steps = {score.steps!r} is invalid; {exc}") from exc
    for step in steps:
        for name in STEP_INFO[step].needs:
            _check(bool(getattr(score, name)), f"score.{name}", getattr(score, name),
                   f"the {step} step needs it: {SCORE_MODEL_HINTS[name]}")
    _check(score.batch_size >= 1, "score.batch_size", score.batch_size, "use at least 1")
    return dataclasses.replace(score, steps=steps)


# What to give each score model setting, for the messages that ask for one.
SCORE_MODEL_HINTS = {
    "clip_model": "a CLIP folder, hub id or s3:// prefix (ViT-L/14 for the aesthetic and safety steps)",
    "aesthetic_model": "the LAION improved aesthetic predictor's weights (sac+logos+ava1-l14-linearMSE.pth or "
                       ".safetensors), a path or s3:// URI (--aesthetic-model)",
    "safety_model": "a safety classifier's weights over CLIP image embeddings (.pth or .safetensors), a path or "
                    "s3:// URI (--safety-model)",
}


def _check(ok: bool, name: str, value: Any, fix: str) -> None:
    if not ok:
        raise SpecError(f"job setting {name} = {value!r} is invalid; {fix}")


_SECTIONS = {"defaults": RowDefaults, "output": OutputSettings, "run": RunSettings, "render": FastPath,
             "score": ScoreSettings}


def load_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
              text: str | None = None) -> JobSpec:
    """Read a job file (TOML, or JSON as written to job.json) or its text, apply `section.name`
    overrides that are not None, and validate."""
    raw: dict[str, Any] = {}
    if path is not None and text is None:
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, ValueError) as exc:  # missing, a folder, a name too long, not text
            missing = isinstance(exc, FileNotFoundError)
            what = "does not exist" if missing else f"cannot be read ({exc.__class__.__name__})"
            raise SpecError(f"job file {path} {what}; pass an existing TOML file to --job") from exc
    if text is not None:
        raw = _parse_job_text(text, str(path))
    sections = {name: dict(raw.pop(name, {}) or {}) for name in _SECTIONS}
    if raw:
        raise SpecError(f"job file {path}: unknown section(s) {sorted(raw)}; use {sorted(_SECTIONS)}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, name = dotted.split(".", 1)
            sections[section][name] = value
    built = {name: _build(cls, sections[name], name) for name, cls in _SECTIONS.items()}
    return JobSpec(**built).validate()


def _parse_job_text(text: str, where: str) -> dict[str, Any]:
    if where.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"job file {where} is not valid JSON: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"job file {where} is not valid TOML: {exc}") from exc


def _build(cls: type, values: dict[str, Any], section: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SpecError(f"unknown setting(s) {', '.join(f'{section}.{u}' for u in unknown)}; "
                        f"known: {', '.join(known)}")
    for name, value in values.items():
        _check_type(section, name, value, known[name].type)
    return cls(**values)


def _check_type(section: str, name: str, value: Any, annotation: str) -> None:
    wanted = {"int": int, "float": (int, float), "str": str, "bool": bool}
    base = annotation.replace(" | None", "")
    if value is None and "None" in annotation:
        return
    kind = wanted.get(base)
    if kind is not None and (not isinstance(value, kind) or (isinstance(value, bool) and base != "bool")):
        raise SpecError(f"job setting {section}.{name} = {value!r} should be of type {base}")


def fingerprint(obj: Any) -> str:
    """A stable sha256 of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
