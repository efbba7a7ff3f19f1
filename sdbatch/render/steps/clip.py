"""The shared CLIP (a transformers CLIPModel folder) and the clip step: cosine of image and prompt embeddings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdbatch.errors import ModelLoadError
from sdbatch.manifest.models import TINY_PREFIX
from sdbatch.render.models.loading import model_hash
from sdbatch.render.models.sources import resolve_source
from sdbatch.render.steps.protocol import ScoreBatch, StepContext
from sdbatch.render.tiny.scorers import tiny_scorer_path
from sdbatch.settings import S3Settings

# The files of a hub CLIP repo that loading reads: no pickled or TF/Flax twins of the weights (GBs each).
CLIP_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
              "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
              "preprocessor_config.json"]
FIX = ("pass a transformers CLIPModel folder (config.json, model.safetensors, tokenizer, preprocessor_config.json), "
       "a hub id in the Hugging Face cache (hf download openai/clip-vit-large-patch14), or tiny:clip")


@dataclass(frozen=True)
class Clip:
    """A loaded CLIP: embeddings of images and texts in its shared projection space."""

    reference: str
    model: Any  # transformers CLIPModel, eval mode, on `device`
    tokenizer: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    model_hash: str

    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalized projected image embeddings (float32), as CLIPModel.get_image_features gives them."""
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return _normalized(out)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalized projected text embeddings (float32); texts cut at the text tower's length."""
        limit = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device))
        return _normalized(out)

    def identity(self) -> dict[str, Any]:
        return {"model": self.reference, "model_hash": self.model_hash, "class": type(self.model).__name__,
                "dtype": str(self.dtype).removeprefix("torch.")}


def _normalized(out) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is projected; 4.x returns the tensor itself.
    features = out if torch.is_tensor(out) else out.pooler_output
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True)


def clip_dtype(device: torch.device) -> torch.dtype:
    # fp16 rather than bf16 on GPUs: OpenAI released CLIP in fp16 and its activations fit fp16's range, whose three
    # more mantissa bits keep the scores (small differences of cosines) closer to fp32's.
    return torch.float16 if device.type == "cuda" else torch.float32


def clip_folder(reference: str, s3: S3Settings | None = None) -> Path:
    """The local CLIP folder for a reference: tiny:clip built, local folders checked, s3:// fetched, hub cache."""
    if reference.startswith(TINY_PREFIX):
        if reference != "tiny:clip":
            raise ModelLoadError(f"clip_model {reference!r} is not a tiny CLIP; use tiny:clip")
        return tiny_scorer_path("clip")
    path = resolve_source(reference, s3, marker="config.json", hub_patterns=CLIP_FILES).path
    if not path.is_dir():
        raise ModelLoadError(f"clip_model {reference!r} is a single file; {FIX}")
    return path


def load_clip(reference: str, device: torch.device, s3: S3Settings | None = None) -> Clip:
    """The CLIP a reference names, on `device` in clip_dtype, in eval mode; ModelLoadError naming the fix."""
    path = clip_folder(reference, s3)
    kind = _model_type(path)
    if kind != "clip":
        raise ModelLoadError(f"clip_model {reference!r} is a {kind!r} model, not CLIP; {FIX}")
    from transformers import AutoTokenizer, CLIPModel

    dtype = clip_dtype(device)
    try:
        model = CLIPModel.from_pretrained(str(path), dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        processor = image_processor_class().from_pretrained(str(path))
    except Exception as exc:  # missing files, bad configs: transformers raises many types
        raise ModelLoadError(f"clip_model {reference!r} at {path} failed to load ({type(exc).__name__}: {exc}); "
                             f"{FIX}") from exc
    return Clip(reference, model.eval().to(device), tokenizer, processor, device, dtype, model_hash(path))


def image_processor_class():
    """CLIP's preprocessing on PIL: transformers 5's torchvision backend is not a dependency (and would resize a
    little differently, so scores would depend on what else is installed); 4.x's CLIPImageProcessor is PIL's."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def _model_type(path: Path) -> str:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type", "unknown")
    except (OSError, ValueError, AttributeError):
        return "unreadable"


class ClipStep:
    """clip_score: cosine of the CLIP image embedding and the CLIP text embedding of the row's prompt."""

    name = "clip"

    def __init__(self, clip: Clip):
        self.clip = clip

    def identity(self) -> dict[str, Any]:
        return self.clip.identity()

    def score(self, batch: ScoreBatch) -> dict[str, list]:
        cosine = (batch.image_embeds() * self.clip.embed_texts(batch.prompts)).sum(dim=-1)
        return {"clip_score": cosine.cpu().tolist()}


def make(context: StepContext) -> ClipStep:
    return ClipStep(context.clip())
