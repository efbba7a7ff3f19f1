"""Per-row LoRA and ControlNet rendering for tests: tiny assets on disk, rows, renderers and pixel comparisons."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings, VariantSettings
from sdbatch.store.local import LocalStore
from tests.support.tiny_variants import convert_lora_to_kohya, write_tiny_controlnet, write_tiny_lora

NOISE = 1  # 1/255: float noise between batch shapes on CPU
CHANGED = 10  # a variant that matters moves some pixel by far more than noise


def write_variant_assets(root: Path) -> dict[str, str]:
    """LoRAs a, b, c (and a's UNet-only, text-only and kohya forms, and a corrupt file), ControlNets cn1 and cn2,
    control images img1..img3; name -> path."""
    files = {name: write_tiny_lora(root / f"{name}.safetensors", seed)
             for name, seed in (("a", 1), ("b", 2), ("c", 3))}
    files["a_unet"] = write_tiny_lora(root / "a_unet.safetensors", 1, text_encoder=False)
    files["text_only"] = write_tiny_lora(root / "text_only.safetensors", 4, unet=False)
    files["a_kohya"] = convert_lora_to_kohya(files["a"], root / "a_kohya.safetensors")
    files["corrupt"] = root / "corrupt.safetensors"
    files["corrupt"].write_bytes(b"\x00garbage, not a safetensors file" * 10)
    files["cn1"] = write_tiny_controlnet(root / "cn1", seed=1)
    files["cn2"] = write_tiny_controlnet(root / "cn2", seed=2)
    # Far apart on purpose (black, white, noise), so swapping two rows' images shows in the pixels.
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)  # needs a resize to 64x48
    for name, array in (("img1", np.zeros((48, 64, 3), np.uint8)), ("img2", np.full((48, 64, 3), 255, np.uint8)),
                         ("img3", noise)):
        files[name] = root / f"{name}.png"
        Image.fromarray(array).save(files[name])
    return {name: str(path) for name, path in files.items()}


def variant_row(i, loras=(), controlnets=(), **extra) -> dict:
    """A tiny:sd15 row with LoRAs as (path, weight) and ControlNets as (model, image, scale)."""
    row = {"id": f"r{i}", "prompt": "a small test picture", "negative_prompt": "", "seed": 7, "model": "tiny:sd15",
           "width": 64, "height": 48, "steps": 3, "scheduler": "euler", "guidance_scale": 5.0,
           "loras": [{"path": p, "weight": w} for p, w in loras],
           "controlnets": [{"model": m, "image": im, "scale": s} for m, im, s in controlnets]}
    return {**row, **extra}


def new_renderer(root: Path, s3=None, **variant_settings) -> Renderer:
    """A CPU Renderer writing under root/out."""
    settings = RendererSettings(batch_size=4, io_threads=2, cpu_threads=2, s3=s3,
                                variants=VariantSettings(**variant_settings))
    return Renderer(LocalStore(str(root / "out")), settings)


class Renderers:
    """Makes new renderers (a fresh actor each) under root; close() closes them all."""

    def __init__(self, root: Path):
        self.root, self.made = root, []

    def __call__(self, **settings) -> Renderer:
        self.made.append(new_renderer(self.root / f"r{len(self.made)}", **settings))
        return self.made[-1]

    def close(self) -> None:
        for r in self.made:
            r.close()


def render_all(renderer, *rows) -> dict:
    """id -> rendered row; every row must render."""
    out = {r.row["id"]: r for r in renderer.render_rows(list(rows))}
    assert all(r.error is None for r in out.values()), [r.error for r in out.values()]
    return out


def pixels_of(rendered) -> np.ndarray:
    return np.asarray(rendered.image, dtype=np.int16)


def image_of(renderer, row) -> np.ndarray:
    return pixels_of(render_all(renderer, row)[row["id"]])


def max_diff(x, y) -> int:
    return int(np.abs(x - y).max())


def read_bytes(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def sha256_of(path) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()
