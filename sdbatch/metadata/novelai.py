"""NovelAI images: `Description` (the prompt) and the `Comment` JSON, legacy and current; its models are its own."""

from __future__ import annotations

import json
import re
from typing import Any

from sdbatch.metadata.image import ImageTexts
from sdbatch.metadata.reading import Reading, number, scheduler_of

# Comment keys that change the image, with the value at which they do not; any other value is reported.
NEUTRAL = {"sm": False, "sm_dyn": False, "cfg_rescale": 0, "dynamic_thresholding": False, "uncond_scale": 1.0,
           "n_samples": 1, "controlnet_model": None, "reference_information_extracted_multiple": [],
           "reference_strength_multiple": [], "lora_unet_weights": None, "lora_clip_weights": None,
           "skip_cfg_above_sigma": None, "strength": None, "noise": None}
# NovelAI's emphasis ({word} x1.05, [word] /1.05, 1.5::word::) reads differently from A1111's brackets.
NAI_EMPHASIS = re.compile(r"[{}\[\]]|::")


class NovelAI:
    name = "NovelAI"

    def claims(self, image: ImageTexts) -> bool:
        return image.texts.get("Software") == "NovelAI" or (
            "Description" in image.texts and "uc" in _comment(image))

    def read(self, image: ImageTexts) -> Reading:
        comment = _comment(image)
        unrendered = [f"Model (NovelAI's own: {image.texts.get('Source', 'not public')})"]
        prompt = str(comment.get("prompt") or image.texts.get("Description", ""))
        negative = str(comment.get("uc") or "")
        if NAI_EMPHASIS.search(prompt + negative):
            unrendered.append("NovelAI emphasis ({word}, [word], 1.5::word::)")
        sampler = str(comment.get("sampler", "")).removeprefix("k_")
        row: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": negative or None, "seed": number(comment.get("seed"), int),
            "steps": number(comment.get("steps"), int), "guidance_scale": number(comment.get("scale")),
            "width": number(comment.get("width"), int) or image.width,
            "height": number(comment.get("height"), int) or image.height,
            "scheduler": scheduler_of(sampler, comment.get("noise_schedule"), "sampler", unrendered),
            "prompt_syntax": "plain", "clip_skip": 1, "loras": [],
        }
        unrendered += sorted(k for k, neutral in NEUTRAL.items() if _set(comment.get(k, neutral), neutral))
        return Reading(self.name, row, unrendered)


def _comment(image: ImageTexts) -> dict[str, Any]:
    try:
        comment = json.loads(image.texts.get("Comment", ""))
    except ValueError:
        return {}
    return comment if isinstance(comment, dict) else {}


def _set(value: Any, neutral: Any) -> bool:
    """Whether a Comment key asks for something: a value other than its neutral one, and not an empty one."""
    return value != neutral and value not in (None, "", [], {})
