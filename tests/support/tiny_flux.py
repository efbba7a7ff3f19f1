"""A tiny random-weight FLUX.1 diffusers folder for tests: tiny:flux as write_tiny_model writes it."""

from __future__ import annotations

import pathlib


def write_tiny_flux(folder: str | pathlib.Path) -> pathlib.Path:
    """The tiny FLUX pipeline's folder (model_index.json names FluxPipeline), seed 0."""
    from sdbatch.render.tiny.build import write_tiny_model

    return write_tiny_model(folder, family="flux")
