"""Settings: every frozen settings dataclass, each default with the reason for it; stdlib only."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

# How a hires row's first pass may be enlarged (RowDefaults.hires_upscaler, the `hires_upscaler` column).
HIRES_UPSCALERS = ("latent", "image")
# Where weights wait between uses (FastPath.offload), and how the denoiser's may be quantized (FastPath.quantize).
OFFLOADS = ("none", "model", "sequential")
QUANTIZATIONS = ("none", "int8", "fp8")
# Step caches by name, with the type of the value after the colon (FastPath.step_cache).
STEP_CACHES = {"first_block": float, "taylorseer": int}
# CLIP-L, the widest-used text encoder, has 12 layers; no SD text encoder has more than OpenCLIP-bigG's 32.
MAX_CLIP_SKIP = 32


def step_cache_parts(text: str) -> tuple[str, float | int] | None:
    """("first_block", 0.05) for "first_block:0.05", None for "none"; ValueError naming the fix otherwise."""
    if text == "none":
        return None
    name, _, value = text.partition(":")
    if name not in STEP_CACHES:
        raise ValueError(f"use none, {', '.join(f'{n}:<value>' for n in STEP_CACHES)}")
    try:
        number = STEP_CACHES[name](value)
    except ValueError:
        number = None
    if name == "first_block" and (number is None or not 0 < number < 1):
        raise ValueError("give first_block a threshold between 0 and 1, e.g. first_block:0.05")
    if name == "taylorseer" and (number is None or number < 2):
        raise ValueError("give taylorseer an interval of 2 steps or more, e.g. taylorseer:4")
    return name, number


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
    # A1111's syntax ((word:1.2), [word], BREAK) is how the prompts people bring are written; "plain" reads
    # brackets as text. Either way a prompt past 75 tokens is encoded in chunks, not cut.
    prompt_syntax: str = "a1111"
    # A1111's numbering: 1 uses the text encoder's last layer (no skip), 2 the one before (anime models).
    clip_skip: int = 1
    # Where prompt words that name textual inversion files (EasyNegative.safetensors) are looked up: a folder
    # or s3:// prefix. None: no embeddings, every word is text.
    embedding_dir: str | None = None
    # img2img and inpainting rows without a `strength`: A1111's default denoising strength, which keeps the
    # init image's composition and repaints its details.
    strength: float = 0.75
    # Hires rows without a `hires_strength`: A1111's default for the second pass, enough to add detail at the
    # larger size without redrawing the picture.
    hires_strength: float = 0.7
    # How a hires row's first pass is enlarged: "latent" (A1111's default "Latent": the latents scaled bilinearly,
    # no decode) or "image" (decoded, scaled with Lanczos, encoded again; softer, keeps the first pass's look).
    hires_upscaler: str = "latent"
    # None keeps the model's own VAE; a diffusers AutoencoderKL folder, single file, hub id or s3:// URI
    # replaces it (e.g. the fp16-safe SDXL VAE). A row's `vae` column overrides it.
    vae: str | None = None
    # FLUX.1's true classifier-free guidance with the negative prompt (the transformer runs twice a step); None
    # leaves it off (1), the distilled guidance alone, as FLUX.1-dev is meant to run.
    true_cfg_scale: float | None = None
    # T5's token count for families with a T5 encoder (SD3, FLUX); None: the family pipeline's default (SD3 256,
    # FLUX 512), which is what the model cards show.
    max_sequence_length: int | None = None
    # Limits on what a row may ask for, so that a typo (an extra zero) is refused rather than rendered for hours.
    # Every scheduler is trained on 1000 timesteps: more steps than that only repeat them.
    max_steps: int = 1000
    # 4096 x 4096, the first pass or a hires pass's output: already tens of GB of VAE decode.
    max_pixels: int = 4096 * 4096


# Row defaults that only limit what a row may ask for: an accepted row renders the same under any limit that
# accepts it, so they stay out of the run's identity (and a run can be resumed with a limit raised).
LIMITS = ("max_steps", "max_pixels")
# Defaults added after runs exist: out of the run identity while unset, so an earlier run stays the same run.
ADDED_DEFAULTS = ("true_cfg_scale", "max_sequence_length")


@dataclass(frozen=True)
class OutputSettings:
    """How results are laid out in the store; part of the run's identity."""

    # PNG is lossless, so a re-render can be compared pixel for pixel.
    format: str = "png"
    # Only used for jpeg/webp; 95 is visually lossless at a fraction of PNG's size.
    quality: int = 95
    # 32 rows: a crash loses little work, per-shard overhead (a marker, a metadata file, a little driver
    # CPU) stays negligible beside rendering them, and the idle tail at the end of a run (at most about
    # one shard per GPU) stays small; simulated makespans by shard size are in docs/BENCHMARKS.md.
    shard_size: int = 32
    # "files": images/{shard}/{id}.{ext}, browsable. "webdataset": shards/{shard}.tar for data loaders.
    layout: str = "files"


# run.start_timeout when unset: a private Ray has all the room it will ever have once it starts, so a pool
# that has not warmed in minutes never will; a cluster's autoscaler may need half an hour for a GPU node.
PRIVATE_RAY_START_TIMEOUT = 300.0
CLUSTER_START_TIMEOUT = 1800.0


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
    # Seconds between the driver's writes of newly committed markers to the marker index: a resume or
    # `status` after the driver was killed reads only the markers of the last interval one by one.
    index_seconds: float = 60.0
    # Seconds the pool may go without a live (warm) actor before the run stops (exit 1; a rerun resumes).
    # None: 300 on a private Ray, which nothing will give more room later; 1800 on a cluster, where an
    # autoscaler may take many minutes to start a GPU node and the actor to load its model there.
    start_timeout: float | None = None
    # A shard running this many times longer than the slowest of the run's recent shards is hung (a deadlock,
    # a stuck device, a stopped process): its actor is killed and replaced, and its shards requeued.
    hung_shard_factor: float = 10.0
    # ...and never before this many seconds: a shard that first compiles a shape or fetches a model, LoRAs or
    # ControlNets from S3 may take minutes, and the run's first shards have no peers to compare with.
    hung_shard_seconds: float = 600.0
    # Times a private Ray whose node died (its raylet killed, e.g. by the OOM killer) is started again for the
    # shards not committed; after that the run stops (exit 1). A cluster's nodes are its operator's to restart.
    ray_restarts: int = 2
    # Seconds between the driver's heartbeats in the output (_progress.json): what tells `sdbatch status` a
    # live run from one whose driver is gone.
    heartbeat_seconds: float = 30.0

    def start_timeout_for(self, private_ray: bool) -> float:
        if self.start_timeout is not None:
            return self.start_timeout
        return PRIVATE_RAY_START_TIMEOUT if private_ray else CLUSTER_START_TIMEOUT


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
    # on the actor before its first image, which short runs never earn back.
    compile: bool = False
    # "max-autotune-no-cudagraphs" may gain a little more speed for much longer tuning per shape; "default"
    # is safe.
    compile_mode: str = "default"
    # With compile: LoRAs are hotswapped into the compiled UNet, padded to this rank. It must be at least
    # the largest rank used (SD1.5 LoRAs: 4-128); higher costs a little compute on every step.
    lora_rank: int = 64
    # With compile: LoRAs a row may use at once (one hotswap slot each in the UNet). A slot, once a row
    # has needed it, costs its LoRA compute on every step, used or not; most rows use one or two.
    lora_slots: int = 2
    # Where the weights live between uses: "none" keeps every module on the GPU (fastest). "model" moves each
    # component (text encoders, denoiser, VAE) onto the GPU only while it runs, for a card that cannot hold them
    # all; "sequential" moves each layer, for a card that cannot hold even the denoiser, at many times the
    # time. Images do not change, so it is not part of the run's identity. GPU only.
    offload: str = "none"
    # Weight-only quantization of the denoiser through torchao: "int8" halves its weights' memory against
    # bf16, "fp8" likewise on cards with fp8 (Ada, Hopper and later; GPU only). Images change a little, so it
    # is part of the run's identity. "none": the denoiser in `dtype`.
    quantize: str = "none"
    # Step caching for diffusion transformers: "first_block:<threshold>" reuses the other blocks' residual
    # while the first block's output changes less than the threshold (diffusers' FirstBlockCache; the smaller,
    # the closer to uncached); "taylorseer:<interval>" predicts the blocks' outputs between full steps computed
    # every <interval>. Images change, so it is part of the run's identity. "none" computes every step.
    step_cache: str = "none"


@dataclass(frozen=True)
class S3Settings:
    """How sdbatch talks to S3-compatible storage, for the output and for inputs on s3://."""

    # None lets botocore choose; callers pass store.base.resolve_endpoint(flag) to honour env vars.
    endpoint_url: str | None = None
    # None: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1, which S3 clones accept.
    region: str | None = None
    # Standard mode backs off exponentially: 8 rides out throttling, not an outage.
    max_attempts: int = 8
    # One connection per upload thread; a smaller pool makes threads queue.
    max_pool_connections: int = 32
    # A healthy endpoint connects in milliseconds; 5 s still tolerates a loaded one.
    connect_timeout: float = 5.0
    # Generous so image-sized PUTs over a slow link are not cut off.
    read_timeout: float = 60.0

@dataclass(frozen=True)
class VariantSettings:
    """What one actor keeps warm besides its model: LoRAs, ControlNets, VAEs, prefetched control images."""

    # Parsed LoRAs kept in host memory, so going back to one costs no disk read or parse. SD1.5 LoRAs
    # are 10-200 MB: 2 GiB holds dozens and is small beside a GPU node's RAM (lower it for many CPU actors).
    lora_cache_bytes: int = 2 << 30
    # Adapters left loaded in the pipeline. An inactive one costs its weights' memory on the device but no
    # compute; 8 covers rows with a few LoRAs each while the actor alternates between several sets.
    max_loras_resident: int = 8
    # An SD1.5 ControlNet is ~0.7 GiB in fp16: 2 on the device serve two-ControlNet rows without moves
    # and leave a 16-24 GiB card room for the UNet's activations.
    controlnets_on_device: int = 2
    # Parked in host memory: moving one back takes a fraction of a second, loading it from disk seconds.
    controlnets_on_cpu: int = 4
    # Input images (control, init, mask) are small; 4 parallel reads hide S3/HTTP latency for the next batch or two.
    fetch_threads: int = 4
    # Fetched ahead of rendering at most: keeps I/O ahead of the GPU with bounded memory.
    prefetch_images: int = 16
    # Per-request timeout for http(s) images (S3 reads use S3Settings): a stuck server fails a row, not the run.
    fetch_timeout: float = 30.0
    # Encoded prompts kept on the device, per model and LoRA set: datasets render many seeds of one prompt,
    # and re-encoding it (a T5 for the diffusion transformers) is work the images do not need. Enough for
    # dozens of T5 prompts of the largest families, and a small share of any card.
    prompt_cache_bytes: int = 256 << 20
    # VAE overrides kept loaded: an SD VAE is ~0.17 GB in fp16, and a job rarely mixes more than one or two.
    vaes_resident: int = 2


@dataclass(frozen=True)
class ScoreSettings:
    """Post-render score steps (the job's [score] section): which to run and the models they read."""

    # None by default: each step costs time per image and needs its model in every actor's environment.
    steps: tuple[str, ...] = ()
    # The CLIP that LAION's aesthetic predictor and NSFW classifiers were trained on (ViT-L/14, 768-d embeddings).
    clip_model: str = "openai/clip-vit-large-patch14"
    # The LAION improved aesthetic predictor's weights (sac+logos+ava1-l14-linearMSE.pth or a safetensors copy);
    # no default: no hub holds it where an offline actor could find it by name.
    aesthetic_model: str | None = None
    # A safety classifier over CLIP image embeddings (an MLP ending in one logit); no default, as above.
    safety_model: str | None = None
    # Images per scoring call: ViT-L/14 at 224 px takes little memory, and 32 keeps the GPU busy between renders.
    batch_size: int = 32


@dataclass(frozen=True)
class RendererSettings:
    """What one Renderer (one actor) works with, built from the job's [run] and [render] sections."""

    # None: CUDA when present, else CPU.
    device: str | None = None
    # Rows per pipeline call; see RunSettings.batch_size. None: what fits the GPU's free memory at the
    # row's size (fastpath.auto_batch_size), 4 on the CPU.
    batch_size: int | None = 4
    # Encoding and uploads run beside rendering; more threads than this rarely helps one GPU.
    io_threads: int = 4
    # None leaves torch's default; Ray actors pass the CPUs they were given (Ray sets OMP to 1).
    cpu_threads: int | None = None
    # Where prompt words that name a textual inversion file are looked up (the job's defaults.embedding_dir).
    embedding_dir: str | None = None
    # Recorded in each result row, so a bad image can be traced to the process that made it.
    name: str = platform.node()
    # For s3:// models, VAEs, control images and LoRAs; None: the default AWS chain. Not the output store's:
    # inputs may live elsewhere.
    s3: S3Settings | None = None
    # LoRA / ControlNet caches and control image prefetching; see VariantSettings.
    variants: VariantSettings = field(default_factory=VariantSettings)
    # Precision, memory layout and compile; see FastPath.
    fast: FastPath = field(default_factory=FastPath)
    # Score steps run on each micro-batch's images as they are rendered; see ScoreSettings.
    score: ScoreSettings = field(default_factory=ScoreSettings)
