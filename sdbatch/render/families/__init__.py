"""Render families: one module per model family behind one protocol (base.RenderFamily), keyed by the names of
sdbatch.family's descriptors and found by pipeline class."""

from __future__ import annotations

from sdbatch.family import family_for_class
from sdbatch.render.families.flux import Flux
from sdbatch.render.families.protocol import RenderFamily
from sdbatch.render.families.sd3 import StableDiffusion3
from sdbatch.render.families.stable_diffusion import StableDiffusion
from sdbatch.render.families.stable_diffusion_xl import StableDiffusionXL
from sdbatch.render.families.zimage import ZImage

# Adding a family: its descriptor in sdbatch/family.py, its module here.
FAMILIES: dict[str, RenderFamily] = {f.descriptor.name: f for f in (StableDiffusion(), StableDiffusionXL(),
                                                                    StableDiffusion3(), Flux(), ZImage())}


def for_pipeline_class(class_name: str, what: str = "the model") -> RenderFamily:
    """The family of a diffusers pipeline class; ModelLoadError naming the class and the supported families."""
    return FAMILIES[family_for_class(class_name, what).name]


def for_model(pipeline) -> RenderFamily:
    """The family of a built pipeline, by its class (what a component given only the pipeline asks)."""
    return for_pipeline_class(type(pipeline).__name__)


def config_words(config: dict) -> str:
    """A denoiser or ControlNet config's family in words, for messages about a part made for another family."""
    return next((f.words_for_config(config) for f in FAMILIES.values() if f.claims_config(config)),
                "another model family's")
