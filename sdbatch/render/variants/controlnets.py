"""ControlNets for one base pipeline: N on the device, M more parked on the host, LRU; a from_pipe pipeline per set."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass

import torch

from sdbatch.errors import VariantError
from sdbatch.render.families import config_words, for_model
from sdbatch.render.families.protocol import RenderFamily
from sdbatch.render.models.loading import model_hash
from sdbatch.render.variants.fetch import labelled
from sdbatch.render.variants.resolve import resolve_controlnet_dir


@dataclass(frozen=True)
class LoadedControlNet:
    reference: str  # as written in the row
    model: torch.nn.Module
    model_hash: str


class ControlNets:
    """Loads ControlNets on first use and keeps them; builds ControlNet pipelines that share the base's modules."""

    def __init__(self, base, device: torch.device, dtype: torch.dtype, on_device: int, on_cpu: int,
                 channels_last: bool = False, family: RenderFamily | None = None):
        self.base = base
        self.family = family or for_model(base)
        self.device, self.dtype = device, dtype
        self.channels_last = channels_last  # as the denoiser it feeds: NHWC for tensor cores
        self.on_device, self.on_cpu = on_device, on_cpu
        self.loads = 0  # from disk, or moved back from host memory to an accelerator
        self._device: collections.OrderedDict[str, LoadedControlNet] = collections.OrderedDict()  # LRU first
        self._parked: collections.OrderedDict[str, LoadedControlNet] = collections.OrderedDict()
        self._pipeline = None  # the last ControlNet pipeline, with the models it was built for
        self._pipeline_models: tuple[int, ...] = ()

    def resident(self) -> dict[str, list[str]]:
        return {"device": list(self._device), "cpu": list(self._parked)}

    def pipeline(self, references: list[str]):
        """A ControlNet pipeline for these models (in order), sharing denoiser, VAE and text encoders with the base.
        A model listed twice (two control images for one ControlNet, as A1111's units allow) is loaded once and
        runs once per entry."""
        distinct = list(dict.fromkeys(references))
        if len(distinct) > self.on_device:
            raise VariantError(f"the row uses {len(distinct)} ControlNets but at most {self.on_device} fit on the "
                               "device; raise controlnets_on_device")
        loaded = {reference: self._get(reference, keep=distinct) for reference in distinct}
        nets = [loaded[reference] for reference in references]
        key = tuple(id(net.model) for net in nets)
        if key != self._pipeline_models:
            models = [net.model for net in nets]
            self._pipeline, self._pipeline_models = self.family.with_controlnets(self.base, models, self.dtype), key
        return self._pipeline, nets

    def _get(self, reference: str, keep: list[str]) -> LoadedControlNet:
        if reference in self._device:
            self._device.move_to_end(reference)
            return self._device[reference]
        with labelled(f"ControlNet {reference}"):
            net = self._parked.pop(reference, None)
            if net is None:
                net = self._load(reference)
            elif self.device.type != "cpu":
                net.model.to(self.device)
                self.loads += 1
        self._make_room(keep)
        self._device[reference] = net
        return net

    def _load(self, reference: str) -> LoadedControlNet:
        folder = resolve_controlnet_dir(reference)
        config = json.loads((folder / "config.json").read_text())
        # Refused before it is loaded: the call would fail deep in the denoiser with a shape error naming neither.
        if not self.family.fits_controlnet(config, self.base):
            raise VariantError(f"made for {config_words(config)} models, but this row's model is "
                               f"{self.family.words(self.base)}; use a ControlNet trained for the row's model")
        model = self.family.load_controlnet(folder, self.dtype).to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.loads += 1
        return LoadedControlNet(reference, model, model_hash(folder))

    def _make_room(self, keep: list[str]) -> None:
        """Park the least recently used models in host memory, then forget the oldest parked ones."""
        while len(self._device) >= self.on_device:
            victim = next(name for name in self._device if name not in keep)
            self._parked[victim] = self._device.pop(victim)
            self._parked[victim].model.to("cpu")
            self._pipeline, self._pipeline_models = None, ()  # it may hold the parked model
        while len(self._parked) > self.on_cpu:
            self._parked.popitem(last=False)
