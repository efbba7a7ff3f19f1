"""Model files for the model-source tests: a tiny SD1.5-style folder, the same as one single file, a tiny VAE."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_models(root: Path) -> dict[str, Path]:
    """A tiny SD1.5-style folder (seed 1, so not tiny:sd15's weights), the same as a single file, a tiny VAE."""
    from diffusers import AutoencoderKL

    from sdbatch.render.tiny.build import write_tiny_model
    from sdbatch.render.tiny.sd15 import vae_config
    from tests.support.checkpoints import write_single_file

    folder = write_tiny_model(root / "seed1", seed=1)
    # Its configs come from tiny:sd15 (seed 0) with the weights left out, so every weight is the file's.
    single = write_single_file(folder, root / "seed1.safetensors", config="tiny:sd15")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        AutoencoderKL(**vae_config()).save_pretrained(root / "vae")
    return {"folder": folder, "single": single, "vae": root / "vae"}


def model_row(i, model="tiny:sd15", vae=None) -> dict:
    """A renderer row of the tiny SD1.5 kind: model and VAE as given, the rest fixed."""
    return {"id": f"r{i}", "prompt": "a red cube", "negative_prompt": "", "seed": 3, "model": model, "vae": vae,
            "width": None, "height": None, "steps": 2, "scheduler": None, "guidance_scale": 5.0,
            "loras": [], "controlnets": []}


# A diffusers pipeline class of a family sdbatch does not render: what a user's unsupported model folder names.
UNSUPPORTED_CLASS = "PixArtSigmaPipeline"


def write_unsupported_model(folder: Path) -> Path:
    """A model folder whose model_index.json names a pipeline of no family sdbatch renders; no weights are needed:
    sdbatch refuses it from that file alone."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": UNSUPPORTED_CLASS}))
    return folder
