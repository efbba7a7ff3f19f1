"""Fooocus images: its JSON `parameters` (with `fooocus_scheme`); the prompt as Fooocus expanded it when the
image keeps it, and what Fooocus's own sampling adds (sharpness, ADM guidance, the refiner) reported."""

from __future__ import annotations

import ast
import json
from typing import Any

from sdbatch.metadata.image import ImageTexts
from sdbatch.metadata.reading import Reading, number, scheduler_of

# Fooocus's performance presets and the steps they run, for images that do not record steps.
PERFORMANCE_STEPS = {"Quality": 60, "Speed": 30, "Extreme Speed": 8, "Lightning": 4, "Hyper-SD": 4}


class Fooocus:
    name = "Fooocus"

    def claims(self, image: ImageTexts) -> bool:
        fields = _fields(image)
        return bool(fields) and ("fooocus_scheme" in image.texts or "base_model" in fields
                                 or "Fooocus" in str(fields.get("version", "")))

    def read(self, image: ImageTexts) -> Reading:
        fields = _fields(image)
        unrendered = ["sharpness and ADM guidance (Fooocus's own sampling)"]
        prompt = _joined(fields.get("full_prompt")) or str(fields.get("prompt", ""))
        negative = _joined(fields.get("full_negative_prompt")) or str(fields.get("negative_prompt", ""))
        if "full_prompt" not in fields and _list(fields.get("styles")):
            unrendered.append("styles (the image does not keep the expanded prompt)")
        if str(fields.get("refiner_model") or "None") != "None":
            unrendered.append("refiner_model")
        if str(fields.get("vae") or "Default (model)") != "Default (model)":
            unrendered.append("vae")
        width, height = _resolution(fields.get("resolution")) or (image.width, image.height)
        sampler = str(fields.get("sampler", "")).removesuffix("_gpu")
        row: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": negative or None, "seed": number(fields.get("seed"), int),
            "steps": number(fields.get("steps"), int) or PERFORMANCE_STEPS.get(str(fields.get("performance"))),
            "guidance_scale": number(fields.get("guidance_scale")), "width": width, "height": height,
            "scheduler": scheduler_of(sampler, fields.get("scheduler"), "sampler", unrendered),
            "model": fields.get("base_model") or None, "prompt_syntax": "a1111", "clip_skip": 1,
            "loras": _loras(fields),
        }
        return Reading(self.name, row, unrendered)


def _fields(image: ImageTexts) -> dict[str, Any]:
    text = image.texts.get("parameters", "").strip()
    if not text.startswith("{"):
        return {}
    try:
        fields = json.loads(text)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _list(value: Any) -> list:
    if isinstance(value, str):  # older versions wrote Python reprs: "['Fooocus V2', 'Fooocus Enhance']"
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [value]
    return list(value) if isinstance(value, list | tuple) else []


def _joined(value: Any) -> str:
    return ", ".join(str(x) for x in _list(value)) if value else ""


def _resolution(value: Any) -> tuple[int, int] | None:
    parts = _list(value) if isinstance(value, str | list | tuple) else []
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 else None


def _loras(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """[[name, weight, hash], ...] in newer images, "lora_combined_N": "name : weight" in older ones."""
    pairs = [(x[0], x[1]) for x in _list(fields.get("loras")) if isinstance(x, list | tuple) and len(x) >= 2]
    pairs += [tuple(str(v).rsplit(" : ", 1)) for k, v in sorted(fields.items()) if k.startswith("lora_combined_")]
    return [{"path": str(name), "weight": number(weight) or 1.0} for name, weight in pairs
            if str(name) not in ("None", "")]
