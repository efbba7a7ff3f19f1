"""VAE overrides: AutoencoderKLs loaded once per actor and model, swapped into the pipeline a row calls."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import uuid

import torch

from sdbatch.errors import ModelLoadError, VariantError
from sdbatch.render.families import for_model
from sdbatch.render.families.protocol import RenderFamily
from sdbatch.render.models.loading import model_hash
from sdbatch.render.models.sources import cache_root, resolve_source
from sdbatch.render.variants.fetch import labelled
from sdbatch.settings import S3Settings

VAE_HUB_FILES = ["*.json", "*.safetensors"]  # a VAE repo's config and weights; not its .bin twins
# Structure a VAE must share with the model's own: the pipeline derived its scale factor and latent
# shape from the model's VAE when it was built. SD1.x and SDXL VAEs share their structure and differ in
# the latent scaling only (0.18215 against 0.13025): the wrong one renders washed-out images, not errors.
MUST_MATCH = ("latent_channels", "block_out_channels", "scaling_factor")


class Vaes:
    """The model's own VAE plus overrides by reference, at most `keep` overrides resident (LRU)."""

    def __init__(self, base, device: torch.device, dtype: torch.dtype, keep: int, s3: S3Settings | None = None,
                 channels_last: bool = False, family: RenderFamily | None = None):
        self.base, self.own = base, base.vae
        self.family = family or for_model(base)
        self.device, self.dtype, self.s3 = device, dtype, s3
        self.keep, self.channels_last = keep, channels_last
        self.loads = 0
        self._loaded: collections.OrderedDict[str, tuple[torch.nn.Module, str]] = collections.OrderedDict()

    def resident(self) -> list[str]:
        return list(self._loaded)

    def apply(self, pipeline, reference: str | None) -> str | None:
        """Give `pipeline` the row's VAE (the model's own for None); returns the VAE's content hash."""
        if not reference:
            pipeline.vae = self.own
            return None
        if reference not in self._loaded:
            with labelled(f"VAE {reference}"):
                self._loaded[reference] = self._load(reference)
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(reference)
        vae, digest = self._loaded[reference]
        pipeline.vae = vae
        return digest

    def _load(self, reference: str) -> tuple[torch.nn.Module, str]:
        from diffusers import AutoencoderKL

        try:
            source = resolve_source(reference, self.s3, marker="config.json", hub_patterns=VAE_HUB_FILES)
        except ModelLoadError as exc:
            raise VariantError(str(exc).removeprefix("model ")) from exc
        if source.single_file:
            vae = AutoencoderKL.from_single_file(str(source.path), config=str(self._own_config()),
                                                 torch_dtype=self.dtype, local_files_only=True)
        else:
            vae = AutoencoderKL.from_pretrained(str(source.path), dtype=self.dtype)
        self._check(vae)
        vae.to(self.device)
        self.family.prepare_vae(vae, self.dtype)  # as the model's own (SDXL's kept in float32 under fp16)
        if self.channels_last:
            vae.to(memory_format=torch.channels_last)
        self.loads += 1
        return vae, model_hash(source.path)

    def _check(self, vae) -> None:
        for name in MUST_MATCH:
            own, other = self.own.config.get(name), vae.config.get(name)
            if json.dumps(own, default=list) != json.dumps(other, default=list):  # tuples and lists alike
                raise VariantError(f"its {name} is {other}, the model's VAE has {own}; use a VAE made for this "
                                   "model family")

    def _own_config(self):
        """A folder holding the model's own VAE config: a single-file VAE has weights only."""
        text = json.dumps(dict(self.own.config), sort_keys=True, default=list)
        folder = cache_root() / "configs" / f"vae-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        if not (folder / "config.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            staging = folder / f".config.{uuid.uuid4().hex}.tmp"
            staging.write_text(text)
            os.replace(staging, folder / "config.json")  # actors on one node never read a half-written file
        return folder
