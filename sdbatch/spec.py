"""Job settings: frozen dataclasses, loading from jobs/*.toml, CLI overrides and the run fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

IMAGE_FORMATS = ("png", "jpeg", "webp")
LAYOUTS = ("files", "webdataset")
DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "bfloat16", "float16", "float32")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Names a manifest may use; the renderer maps each to a diffusers scheduler class and options.
SCHEDULERS = (
    "ddim",
    "pndm",
    "euler",
    "euler_a",
    "heun",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "unipc",
)


class SpecError(ValueError):
    """A job setting is invalid; the message names the setting and the fix."""


@dataclass(frozen=True)
class RowDefaults:
    """Values a manifest row gets when its own column is missing or null."""

    # The reference model most datasets are built on; override per job or per row.
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    # 30 steps is where SD1.5 samplers stop improving visibly at a reasonable cost.
    steps: int = 30
    # The value SD1.5 was tuned with; higher follows the prompt more and varies less.
    guidance_scale: float = 7.5
    # None keeps the model's own native size (512 for SD1.5), read from the loaded model.
    width: int | None = None
    height: int | None = None
    # None keeps the scheduler shipped with the model, so results match its model card.
    scheduler: str | None = None
    # Empty: no negative prompt unless the row or the job asks for one.
    negative_prompt: str = ""
    # Job seed: rows without a seed get one derived from (seed, id), so reruns are identical.
    seed: int = 0
    # Where bare LoRA names (`style` in a loras entry or <lora:style:0.8>) are looked up; None: paths only.
    lora_dir: str | None = None
    # None keeps the model's own VAE; a diffusers AutoencoderKL folder, single file, hub id or s3:// URI
    # replaces it (e.g. the fp16-safe SDXL VAE). A row's `vae` column overrides it.
    vae: str | None = None


@dataclass(frozen=True)
class OutputSettings:
    """How results are laid out in the store; part of the run's identity."""

    # PNG is lossless, so a re-render can be compared pixel for pixel.
    format: str = "png"
    # Only used for jpeg/webp; 95 is visually lossless at a fraction of PNG's size.
    quality: int = 95
    # 32 rows is 10-20 s of GPU work: a crash loses little, per-shard overhead (a marker, a metadata
    # file, ~1 ms of driver CPU) stays negligible, and the idle tail at the end of a run (at most about
    # one shard per GPU) stays small: 1M rows on 1,000 GPUs simulate at 1.047x the ideal (64: 1.075x).
    shard_size: int = 32
    # "files": images/{shard}/{id}.{ext}, browsable. "webdataset": shards/{shard}.tar for data loaders.
    layout: str = "files"


@dataclass(frozen=True)
class RunSettings:
    """How the work is executed; may change between a run and its resume."""

    # None: one actor per GPU, or on a CPU-only cluster as many as its CPUs and memory hold.
    actors: int | None = None
    # Rows per pipeline call. None: as many as half the GPU's free memory holds at the row's size (at
    # most 16, where the UNet is compute-bound anyway; a batch that still runs out is halved), 4 on the CPU.
    batch_size: int | None = None
    # Two shards per actor: one rendering, one queued, so the GPU never waits for the driver.
    shards_in_flight: int = 2
    # A shard whose actor died this many times is given up (and reported) rather than retried forever.
    max_shard_attempts: int = 3
    # Threads that encode and upload images while the next batch renders.
    io_threads: int = 4
    # Send shards to actors that already hold their variant (LoRAs, ControlNets, model); off only to compare.
    affinity: bool = True
    # "auto": one actor per GPU when the cluster has GPUs, else CPU actors. "cuda": one GPU per actor
    # even when no GPU node is up yet, so an autoscaling cluster starts them. "cpu": never ask for GPUs.
    device: str = "auto"


@dataclass(frozen=True)
class FastPath:
    """How the renderer uses the device: precision, memory layout, compile. The job file's [render] section."""

    # "auto": bfloat16 on CUDA cards that have it (Ampere and later), float16 on older ones, float32 on
    # the CPU (CPU half precision is slower and inexact). Or "bfloat16", "float16", "float32".
    dtype: str = "auto"
    # NHWC convolutions for the UNet, VAE and ControlNets. None: on for CUDA (tensor cores read NHWC
    # natively), off for the CPU, where oneDNN picks its own layout and the conversion only costs.
    channels_last: bool | None = None
    # torch.compile of the UNet, in place. Off by default: each new shape (batch, size) costs a compile
    # of about a minute on the actor before its first image, which short runs never earn back.
    compile: bool = False
    # "max-autotune-no-cudagraphs" gains a few % more for minutes of tuning per shape; "default" is safe.
    compile_mode: str = "default"
    # With compile: LoRAs are hotswapped into the compiled UNet, padded to this rank. It must be at least
    # the largest rank used (SD1.5 LoRAs: 4-128); higher costs a little compute on every step.
    lora_rank: int = 64
    # With compile: LoRAs a row may use at once (one hotswap slot each in the UNet). A slot, once a row
    # has needed it, costs its LoRA compute on every step, used or not; most rows use one or two.
    lora_slots: int = 2


@dataclass(frozen=True)
class JobSpec:
    """Everything that shapes a run, besides the manifest and the output location."""

    defaults: RowDefaults = field(default_factory=RowDefaults)
    output: OutputSettings = field(default_factory=OutputSettings)
    run: RunSettings = field(default_factory=RunSettings)
    # Not part of the run's identity: precision is recorded per image (dtype), like the device.
    render: FastPath = field(default_factory=FastPath)

    def validate(self) -> "JobSpec":
        d, o, r = self.defaults, self.output, self.run
        _check(d.steps > 0, "defaults.steps", d.steps, "use a positive number of steps, e.g. 30")
        _check(d.guidance_scale >= 0, "defaults.guidance_scale", d.guidance_scale, "use a value >= 0")
        for name in ("width", "height"):
            value = getattr(d, name)
            _check(value is None or (value > 0 and value % 8 == 0), f"defaults.{name}", value,
                   "use a positive multiple of 8, e.g. 512")
        _check(d.scheduler is None or d.scheduler in SCHEDULERS, "defaults.scheduler", d.scheduler,
               f"use one of {', '.join(SCHEDULERS)}")
        _check(0 <= d.seed < 2**63, "defaults.seed", d.seed, "use an integer in [0, 2**63)")
        _check(o.format in IMAGE_FORMATS, "output.format", o.format, f"use one of {', '.join(IMAGE_FORMATS)}")
        _check(1 <= o.quality <= 100, "output.quality", o.quality, "use 1..100")
        _check(o.shard_size >= 1, "output.shard_size", o.shard_size, "use at least 1")
        _check(o.layout in LAYOUTS, "output.layout", o.layout, f"use one of {', '.join(LAYOUTS)}")
        _check(r.actors is None or r.actors >= 1, "run.actors", r.actors, "use at least 1")
        _check(r.device in DEVICES, "run.device", r.device, f"use one of {', '.join(DEVICES)}")
        _check(r.batch_size is None or r.batch_size >= 1, "run.batch_size", r.batch_size,
               "use at least 1, or leave it unset for what fits the GPU")
        for name in ("shards_in_flight", "max_shard_attempts", "io_threads"):
            _check(getattr(r, name) >= 1, f"run.{name}", getattr(r, name), "use at least 1")
        self._validate_render()
        return self

    def _validate_render(self) -> None:
        f = self.render
        _check(f.dtype in DTYPES, "render.dtype", f.dtype, f"use one of {', '.join(DTYPES)}")
        _check(f.compile_mode in COMPILE_MODES, "render.compile_mode", f.compile_mode,
               f"use one of {', '.join(COMPILE_MODES)}")
        for name in ("lora_rank", "lora_slots"):
            _check(getattr(f, name) >= 1, f"render.{name}", getattr(f, name), "use at least 1")

    def identity(self) -> dict[str, Any]:
        """The settings that decide what the output contains; a resume must match them."""
        return {"defaults": dataclasses.asdict(self.defaults), "output": dataclasses.asdict(self.output)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, name: str, value: Any, fix: str) -> None:
    if not ok:
        raise SpecError(f"job setting {name} = {value!r} is invalid; {fix}")


_SECTIONS = {"defaults": RowDefaults, "output": OutputSettings, "run": RunSettings, "render": FastPath}


def load_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
              text: str | None = None) -> JobSpec:
    """Read a job file (TOML, or JSON as written to job.json) or its text, apply `section.name`
    overrides that are not None, and validate."""
    raw: dict[str, Any] = {}
    if path is not None and text is None:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"job file {path} does not exist; pass an existing TOML file to --job")
        text = path.read_text()
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


def spec_from_dict(data: dict[str, Any]) -> JobSpec:
    """Rebuild a JobSpec from to_dict() output (as stored in job.json)."""
    # .get: job.json files written before a section existed resume with its defaults.
    return JobSpec(**{name: cls(**data.get(name, {})) for name, cls in _SECTIONS.items()}).validate()


def fingerprint(obj: Any) -> str:
    """A stable sha256 of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
