"""Options shared by several commands, defined once."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Optional

import typer

from sdbatch.errors import SpecError
from sdbatch.manifest import paths
from sdbatch.manifest.problems import shown
from sdbatch.settings import S3Settings
from sdbatch.spec import JobSpec, load_spec
from sdbatch.store import Reader, is_remote, is_remote_store
from sdbatch.store.base import resolve_endpoint

JobFile = Annotated[Optional[str], typer.Option("--job", "-j", help="Job settings (TOML, or JSON; a path or "
                                                "s3://), e.g. jobs/demo.toml; flags override it.")]
S3Endpoint = Annotated[Optional[str], typer.Option("--s3-endpoint", help="S3-compatible endpoint URL; default "
                                                   "AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, then AWS.")]
LoraDir = Annotated[Optional[str], typer.Option("--lora-dir", help="Folder where bare LoRA names "
                                                "(`style`, <lora:style:0.8>) are looked up.")]
EmbeddingDir = Annotated[Optional[str], typer.Option("--embedding-dir", help="Folder or s3:// prefix of textual "
                                                     "inversion files; a prompt word that names one (EasyNegative) "
                                                     "uses it, as in A1111.")]
PromptSyntax = Annotated[Optional[str], typer.Option(help="Default prompt syntax: a1111 ((word:1.2), \\[word], BREAK, "
                                                     "as A1111 reads them), a1111-strict (unbalanced brackets "
                                                     "refused) or plain (brackets are text).")]
ClipSkip = Annotated[Optional[int], typer.Option(help="Default clip skip, as A1111 counts: 1 none, 2 the "
                                                 "penultimate layer.")]
MaxSteps = Annotated[Optional[int], typer.Option(help="Refuse rows that ask for more denoising steps than this "
                                              "(default 1000).")]
MaxPixels = Annotated[Optional[int], typer.Option(help="Refuse rows whose image, or hires image, has more pixels "
                                                "than this (default 4096 x 4096).")]
Output = Annotated[str, typer.Option("--output", "-o", help="Output folder or s3://bucket/prefix.")]
Manifest = Annotated[str, typer.Argument(help="Manifest: a local .parquet file or s3://bucket/key.")]

# Row defaults and planning settings, the same for `submit` and `plan` (a dry run must plan what submit does).
Model = Annotated[Optional[str], typer.Option(help="Default model: hub id, local folder, single .safetensors "
                                              "file, s3:// URI, tiny:sd15 or tiny:sdxl.")]
Vae = Annotated[Optional[str], typer.Option(help="Default VAE instead of the model's own: a diffusers "
                                            "AutoencoderKL folder, .safetensors file, hub id or s3:// URI.")]
Steps = Annotated[Optional[int], typer.Option(help="Default denoising steps.")]
GuidanceScale = Annotated[Optional[float], typer.Option(help="Default classifier-free guidance.")]
Width = Annotated[Optional[int], typer.Option(help="Default width (multiple of 8).")]
Height = Annotated[Optional[int], typer.Option(help="Default height (multiple of 8).")]
Scheduler = Annotated[Optional[str], typer.Option(help=(
    "Default sampler and schedule: sdbatch's names (euler_a, dpmpp_2m_karras) or A1111's ('DPM++ 2M Karras')."))]
ShardSize = Annotated[Optional[int], typer.Option(help="Rows per shard (the unit of commit and retry).")]
Price = Annotated[Optional[float], typer.Option(help="Price of one GPU for an hour (any currency), for the "
                                                 "cost lines.")]
Affinity = Annotated[Optional[bool], typer.Option("--affinity/--no-affinity", help=(
    "Send shards to actors that already hold their variant (default on); off only to compare."))]

ScoreSteps = Annotated[Optional[str], typer.Option("--score", help=(
    "Score steps run on each image as it renders, comma-separated: clip (clip_score), aesthetic, safety "
    "(punsafe), phash. Not part of the run: adding one to a finished run scores it without re-rendering."))]
ClipModel = Annotated[Optional[str], typer.Option(help="CLIP for the clip, aesthetic and safety steps: a folder, "
                                                  "hub id, s3:// prefix or tiny:clip (default ViT-L/14).")]
AestheticModel = Annotated[Optional[str], typer.Option(help="The LAION improved aesthetic predictor's weights "
                                                       "(.pth/.safetensors, a path or s3://) for the aesthetic step.")]
SafetyModel = Annotated[Optional[str], typer.Option(help="A safety classifier's weights over CLIP image embeddings "
                                                    "(.pth/.safetensors) for the safety step.")]


SCORE_MODELS = ("clip_model", "aesthetic_model", "safety_model")


def score_overrides(steps, clip_model, aesthetic_model, safety_model) -> dict:
    """The `score.*` overrides of the score flags (None: not given)."""
    return {"score.steps": steps, "score.clip_model": clip_model, "score.aesthetic_model": aesthetic_model,
            "score.safety_model": safety_model}


def row_overrides(model, vae, steps, guidance_scale, width, height, scheduler, lora_dir) -> dict:
    """The `defaults.*` overrides of the shared row-default flags (None: not given)."""
    return {"defaults.model": model, "defaults.vae": vae, "defaults.steps": steps,
            "defaults.guidance_scale": guidance_scale, "defaults.width": width, "defaults.height": height,
            "defaults.scheduler": scheduler, "defaults.lora_dir": lora_dir}


def prompt_overrides(embedding_dir, prompt_syntax, clip_skip) -> dict:
    """The `defaults.*` overrides of the flags on how prompts are read (None: not given)."""
    return {"defaults.embedding_dir": embedding_dir, "defaults.prompt_syntax": prompt_syntax,
            "defaults.clip_skip": clip_skip}


def limit_overrides(max_steps, max_pixels) -> dict:
    """The `defaults.*` overrides of the flags that limit what a row may ask for (None: not given)."""
    return {"defaults.max_steps": max_steps, "defaults.max_pixels": max_pixels}


def s3_settings(endpoint: Optional[str]) -> S3Settings:
    return S3Settings(endpoint_url=resolve_endpoint(endpoint))


def job_spec(job: Optional[str], s3: S3Settings | None = None, **overrides) -> JobSpec:
    """Settings from the job file with flag overrides (keys are `section.name`; None means unset)."""
    if job and is_remote_store(job):  # a job submitted through the Jobs API reads its spec from the store
        return _local_paths(load_spec(job, overrides, text=Reader(s3).read(job).decode()))
    return _local_paths(load_spec(job, overrides))


def _local_paths(spec: JobSpec) -> JobSpec:
    """Local score models and the embedding folder as absolute paths (actors do not run in this directory), the
    folder checked now rather than when the first row that names an embedding renders."""
    models = {name: str(path.resolve()) for name in SCORE_MODELS
              if (value := getattr(spec.score, name)) and not is_remote(value)
              and paths.exists(path := paths.local_path(value))}
    spec = dataclasses.replace(spec, score=dataclasses.replace(spec.score, **models))
    folder = spec.defaults.embedding_dir
    if not folder or is_remote(folder):
        return spec
    path = paths.local_path(folder)
    if path is None:
        raise SpecError(f"job setting defaults.embedding_dir = {shown(folder)} {paths.path_problem(folder)}")
    path = path.resolve()
    if not paths.is_dir(path):
        raise SpecError(f"job setting defaults.embedding_dir = {folder!r} is not a folder; pass the folder that "
                        "holds the textual inversion files (or an s3:// prefix)")
    return dataclasses.replace(spec, defaults=dataclasses.replace(spec.defaults, embedding_dir=str(path)))
