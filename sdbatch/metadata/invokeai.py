"""InvokeAI images: `invokeai_metadata` (3.x and later), `sd-metadata` (2.x) and the `Dream` command (1.x)."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from sdbatch.metadata.image import ImageTexts
from sdbatch.metadata.reading import Reading, number, scheduler_of

KEYS = ("invokeai_metadata", "sd-metadata", "Dream")
# InvokeAI's prompts are compel's syntax ((word)1.2, word++, .blend()), which A1111's brackets misread.
COMPEL = re.compile(r"[()\[\]]|\w[+-]+(?=[\s,.]|$)|\)[\d.]+")
# What InvokeAI 3+ records that changes the image, at the value at which it does not.
NEUTRAL = {"strength": None, "hrf_enabled": False, "positive_style_prompt": "", "negative_style_prompt": "",
           "cfg_rescale_multiplier": 0, "seamless_x": False, "seamless_y": False, "refiner_model": None,
           "controlnets": [], "ipAdapters": [], "t2iAdapters": []}


class InvokeAI:
    name = "InvokeAI"

    def claims(self, image: ImageTexts) -> bool:
        return any(key in image.texts for key in KEYS)

    def read(self, image: ImageTexts) -> Reading:
        texts = image.texts
        fields = (_current(texts["invokeai_metadata"]) if "invokeai_metadata" in texts
                  else _legacy(texts["sd-metadata"]) if "sd-metadata" in texts else _dream(texts["Dream"]))
        unrendered: list[str] = []
        prompt, negative = str(fields.get("positive_prompt") or ""), str(fields.get("negative_prompt") or "")
        if COMPEL.search(prompt + negative):
            unrendered.append("prompt weights (InvokeAI's compel syntax)")
        row: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": negative or None, "seed": number(fields.get("seed"), int),
            "steps": number(fields.get("steps"), int), "guidance_scale": number(fields.get("cfg_scale")),
            "width": number(fields.get("width"), int) or image.width,
            "height": number(fields.get("height"), int) or image.height,
            "scheduler": _scheduler(str(fields.get("scheduler") or ""), unrendered),
            "model": _name(fields.get("model")), "prompt_syntax": "plain",
            "clip_skip": (number(fields.get("clip_skip"), int) or 0) + 1,  # InvokeAI counts layers skipped
            "loras": [{"path": _name(x.get("model") or x.get("lora")), "weight": number(x.get("weight")) or 1.0}
                      for x in fields.get("loras") or [] if isinstance(x, dict)],
        }
        if fields.get("vae"):
            unrendered.append("vae")
        unrendered += sorted(k for k, neutral in NEUTRAL.items() if fields.get(k, neutral) not in (neutral, None))
        return Reading(self.name, row, unrendered)


def _current(text: str) -> dict[str, Any]:
    return _json(text)


def _legacy(text: str) -> dict[str, Any]:
    """2.x: {"model_weights", "image": {"prompt": [{"prompt", "weight"}], "seed", "sampler", ...}}."""
    doc = _json(text)
    image = doc.get("image") if isinstance(doc.get("image"), dict) else {}
    prompt = image.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(str(p.get("prompt", "")) for p in prompt if isinstance(p, dict))
    positive, _, negative = str(prompt or "").partition("[")  # 2.x wrote the negative prompt in [brackets]
    return {**image, "positive_prompt": positive.strip(), "negative_prompt": negative.rstrip("]").strip(),
            "scheduler": image.get("sampler"), "model": doc.get("model_weights")}


def _dream(text: str) -> dict[str, Any]:
    """1.x: '"a fox" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms'."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    flags = {"-s": "steps", "-S": "seed", "-W": "width", "-H": "height", "-C": "cfg_scale", "-A": "scheduler"}
    out: dict[str, Any] = {"positive_prompt": words[0] if words else ""}
    for flag, value in zip(words[1:], words[2:]):
        if flag in flags:
            out[flags[flag]] = value
    return out


def _scheduler(name: str, unrendered: list[str]) -> str | None:
    """InvokeAI's names: k_ before 3.0 (k_euler_a), _k for the Karras schedule (dpmpp_2m_k)."""
    base = name.removeprefix("k_")
    karras = base.endswith("_k")
    return scheduler_of(base.removesuffix("_k"), "karras" if karras else None, "scheduler", unrendered)


def _name(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("name") or value.get("model_name")
    return str(value) if value else None


def _json(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
