"""The simulated workload: the row mix, the modelled GPU costs, and shards planned from them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sdbatch.plan.shards import Shard, Variant
from sdbatch.settings import VariantSettings

MODEL = "runwayml/stable-diffusion-v1-5"
CONTROLNET_NAMES = ("canny", "depth", "openpose", "softedge", "scribble", "seg", "normal", "lineart")


@dataclass(frozen=True)
class Mix:
    """Which LoRA and ControlNet a row uses: independent draws from skewed popularities."""

    loras: int = 40
    controlnets: int = 3
    no_lora: float = 0.30  # share of rows with no LoRA; the rest: LoRA k (1..loras) with weight 1/k (Zipf, s=1)
    no_controlnet: float = 0.70  # share of rows with no ControlNet; the rest: ControlNet k with weight 1/k

    def lora_weights(self) -> list[float]:
        zipf = [1 / k for k in range(1, self.loras + 1)]
        total = sum(zipf)
        return [self.no_lora] + [(1 - self.no_lora) * w / total for w in zipf]

    def controlnet_weights(self) -> list[float]:
        zipf = [1 / k for k in range(1, self.controlnets + 1)]
        total = sum(zipf)
        return [self.no_controlnet] + [(1 - self.no_controlnet) * w / total for w in zipf]

    def describe(self) -> str:
        lw, cw = self.lora_weights(), self.controlnet_weights()
        return (f"rows draw a LoRA and a ControlNet independently. LoRA: none {lw[0]:.0%}, else one of "
                f"{self.loras} (weight 0.8) with popularity 1/rank (top {lw[1]:.1%} of rows, last "
                f"{lw[-1]:.2%}). ControlNet: none {cw[0]:.0%}, else one of {self.controlnets} with popularity "
                f"1/rank ({', '.join(f'{w:.1%}' for w in cw[1:])} of rows). Variant = (LoRA, ControlNet): "
                f"up to {(self.loras + 1) * (self.controlnets + 1)}; one base model, 512x512, 30 steps")


@dataclass(frozen=True)
class Costs:
    """Modelled, not measured: GPU seconds for rendering and for loading what a variant needs."""

    row_s: float = 0.30  # SD1.5 512x512, 30 steps, per row on an H100-class GPU (batched)
    controlnet_factor: float = 1.4  # a ControlNet row runs the ControlNet encoder copy at every step too
    shard_jitter: float = 0.10  # per-shard render time x lognormal(0, this): batching, I/O, encode, clocks
    lora_mb: tuple[float, float] = (10, 200)  # LoRA file sizes, uniform per LoRA (SD1.5 LoRAs)
    lora_from_cache_s: tuple[float, float] = (0.05, 0.20)  # parsed LoRA in host memory -> pipeline; by size
    lora_from_disk_s: tuple[float, float] = (0.5, 2.0)  # read + parse + load; by size
    controlnet_from_cpu_s: tuple[float, float] = (0.1, 0.3)  # parked ControlNet moved back; uniform
    controlnet_from_disk_s: tuple[float, float] = (1.0, 3.0)  # from_pretrained + to(device); uniform
    # The render side's cache sizes: what an actor keeps by default.
    lora_cache_bytes: int = VariantSettings.lora_cache_bytes
    loras_resident: int = VariantSettings.max_loras_resident
    controlnets_on_device: int = VariantSettings.controlnets_on_device
    controlnets_on_cpu: int = VariantSettings.controlnets_on_cpu

    def describe(self) -> list[str]:
        return [
            (f"render: {self.row_s} s per row (x{self.controlnet_factor} with a ControlNet), x lognormal(0, "
             f"{self.shard_jitter}) per shard; same per-shard times in every run"),
            (f"LoRA files {self.lora_mb[0]:.0f}-{self.lora_mb[1]:.0f} MB (uniform per LoRA); load from host cache "
             f"{self.lora_from_cache_s[0] * 1000:.0f}-{self.lora_from_cache_s[1] * 1000:.0f} ms, from disk "
             f"{self.lora_from_disk_s[0]}-{self.lora_from_disk_s[1]} s (both by file size); activating a resident "
             "adapter: free"),
            (f"ControlNet load from disk {self.controlnet_from_disk_s[0]}-{self.controlnet_from_disk_s[1]} s, "
             f"moved back from host memory {self.controlnet_from_cpu_s[0]}-{self.controlnet_from_cpu_s[1]} s "
             "(uniform per load)"),
            (f"per GPU: {self.loras_resident} LoRA adapters resident, {self.lora_cache_bytes / 2**30:.0f} GiB host "
             f"LRU of parsed LoRAs, {self.controlnets_on_device} ControlNets on the device + "
             f"{self.controlnets_on_cpu} parked (render-side defaults); base model warm before the first shard"),
            "not modelled: model warm-up, dispatch latency, storage stalls, stragglers, failures",
        ]


@dataclass
class Workload:
    shards: list[Shard]
    work: dict[str, float]  # shard id -> render seconds
    lora_mb: dict[str, float]  # LoRA path -> size
    rows: int

    @property
    def variants(self) -> int:
        return len({s.variant for s in self.shards})


def make_workload(rows: int, mix: Mix, costs: Costs, shard_size: int, seed: int) -> Workload:
    """Rows drawn from the mix in random manifest order, planned like plan.Planner (for one chunk): variant
    groups in order of first appearance, cut into shards of shard_size (built directly: the rows' other columns
    do not matter here, and normalizing a million-row table would dominate the run)."""
    rng = random.Random(seed)
    lora_paths = [f"/loras/style-{k:02d}.safetensors" for k in range(1, mix.loras + 1)]
    controlnets = [f"lllyasviel/sd-controlnet-{CONTROLNET_NAMES[k % len(CONTROLNET_NAMES)]}"
                   + (f"-{k}" if k >= len(CONTROLNET_NAMES) else "") for k in range(mix.controlnets)]
    lora_pick = rng.choices(range(mix.loras + 1), weights=mix.lora_weights(), k=rows)
    cn_pick = rng.choices(range(mix.controlnets + 1), weights=mix.controlnet_weights(), k=rows)
    counts: dict[tuple[int, int], int] = {}
    for key in zip(lora_pick, cn_pick, strict=True):
        counts[key] = counts.get(key, 0) + 1  # dict order: first appearance, as in plan.Planner
    shards: list[Shard] = []
    work: dict[str, float] = {}
    position = 0
    for (lora, cn), n in counts.items():
        variant = Variant(MODEL, 512, 512, 30, None, 7.5,
                          ((lora_paths[lora - 1], 0.8),) if lora else (),
                          ((controlnets[cn - 1], 1.0),) if cn else ())
        for start in range(0, n, shard_size):
            size = min(shard_size, n - start)
            shard = Shard(f"{len(shards):06d}", variant, position, size)
            position += size
            shards.append(shard)
            factor = costs.controlnet_factor if cn else 1.0
            work[shard.shard_id] = size * costs.row_s * factor * rng.lognormvariate(0, costs.shard_jitter)
    lora_mb = {path: rng.uniform(*costs.lora_mb) for path in lora_paths}
    return Workload(shards, work, lora_mb, rows)
