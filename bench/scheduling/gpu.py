"""One simulated GPU's render-side caches (LoRA adapters, parsed LoRAs, ControlNets) and what loading costs."""

from __future__ import annotations

import collections
import random

from sdbatch.plan.shards import Variant

from .workload import Costs

MB = 1 << 20


class GpuCaches:
    """What one virtual GPU has loaded, with the render side's eviction rules; prepare() returns seconds."""

    def __init__(self, costs: Costs, lora_mb: dict[str, float]):
        self.costs, self.lora_mb = costs, lora_mb
        self.resident: collections.OrderedDict[str, None] = collections.OrderedDict()  # adapters, LRU first
        self.host: collections.OrderedDict[str, float] = collections.OrderedDict()  # parsed LoRAs -> bytes
        self.on_device: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.parked: collections.OrderedDict[str, None] = collections.OrderedDict()

    def prepare(self, variant: Variant, rng: random.Random, tally: collections.Counter) -> float:
        seconds = 0.0
        names = [path for path, _ in variant.loras]
        for path in names:
            if path in self.resident:
                self.resident.move_to_end(path)
                continue
            low, high = self.costs.lora_mb
            share = (self.lora_mb[path] - low) / (high - low)
            if path in self.host:
                self.host.move_to_end(path)
                span, kind = self.costs.lora_from_cache_s, "lora_from_cache"
            else:
                span, kind = self.costs.lora_from_disk_s, "lora_from_disk"
                self.host[path] = self.lora_mb[path] * MB
                while sum(self.host.values()) > self.costs.lora_cache_bytes:
                    self.host.popitem(last=False)
            seconds += span[0] + (span[1] - span[0]) * share
            tally[kind] += 1
            while len(self.resident) >= self.costs.loras_resident:
                victim = next(name for name in self.resident if name not in names)
                del self.resident[victim]
            self.resident[path] = None
        keep = [model for model, _ in variant.controlnets]
        for model in keep:
            if model in self.on_device:
                self.on_device.move_to_end(model)
                continue
            if self.parked.pop(model, 0) is None:
                seconds += rng.uniform(*self.costs.controlnet_from_cpu_s)
                tally["controlnet_from_cpu"] += 1
            else:
                seconds += rng.uniform(*self.costs.controlnet_from_disk_s)
                tally["controlnet_from_disk"] += 1
            while len(self.on_device) >= self.costs.controlnets_on_device:
                victim = next(name for name in self.on_device if name not in keep)
                del self.on_device[victim]
                self.parked[victim] = None
            while len(self.parked) > self.costs.controlnets_on_cpu:
                self.parked.popitem(last=False)
            self.on_device[model] = None
        return seconds
