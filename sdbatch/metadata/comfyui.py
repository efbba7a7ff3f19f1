"""ComfyUI images: the prompt graph (the `prompt` text), read from its sampler node back to the texts, the
checkpoint, the LoRA loaders and the empty latent; a node sdbatch cannot express is reported, not guessed."""

from __future__ import annotations

import json
from typing import Any

from sdbatch.metadata.image import ImageTexts
from sdbatch.metadata.reading import Reading, number, scheduler_of

SAMPLERS = ("KSampler", "KSamplerAdvanced")
TEXT_ENCODERS = ("CLIPTextEncode",)
LORA_LOADERS = ("LoraLoader", "LoraLoaderModelOnly")
CHECKPOINTS = ("CheckpointLoaderSimple", "CheckpointLoader")
LATENTS = ("EmptyLatentImage", "EmptySD3LatentImage")
# Nodes that only carry a value along (a text or number typed in once and wired to several inputs).
VALUE_INPUTS = ("text", "string", "value", "int", "seed", "noise_seed")


class ComfyUI:
    name = "ComfyUI"

    def claims(self, image: ImageTexts) -> bool:
        return _graph(image) is not None

    def read(self, image: ImageTexts) -> Reading:
        return _GraphReader(_graph(image)).reading(image)


def _graph(image: ImageTexts) -> dict[str, Any] | None:
    try:
        graph = json.loads(image.texts.get("prompt", ""))
    except ValueError:
        return None
    if not isinstance(graph, dict) or not any(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        return None
    # Every node as the readers below expect it (a class and an inputs mapping), whatever a damaged file holds.
    return {key: {"class_type": node.get("class_type"),
                  "inputs": node["inputs"] if isinstance(node.get("inputs"), dict) else {}}
            for key, node in graph.items() if isinstance(node, dict)}


class _GraphReader:
    def __init__(self, graph: dict[str, Any]):
        self.graph = graph
        self.unrendered: list[str] = []

    def reading(self, image: ImageTexts) -> Reading:
        samplers = [key for key, node in self.graph.items() if node.get("class_type") in SAMPLERS]
        first = [key for key in samplers if self._class(self._input(key, "latent_image")) in LATENTS]
        if not samplers:
            self.unrendered.append("ComfyUI graph without a KSampler")
            return Reading(ComfyUI.name, {"prompt": "", "width": image.width, "height": image.height},
                           self.unrendered)
        key = (first or samplers)[0]
        if len(samplers) > 1:
            self.unrendered.append(f"ComfyUI: {len(samplers)} sampler nodes (a refiner or a second pass)")
        return Reading(ComfyUI.name, self._row(key), self.unrendered)

    def _row(self, key: str) -> dict[str, Any]:
        node = self.graph[key]["inputs"]
        seed = self._value(node.get("seed", node.get("noise_seed")))
        row: dict[str, Any] = {
            "prompt": self._text(node.get("positive"), "positive"),
            "negative_prompt": self._text(node.get("negative"), "negative") or None,
            "seed": number(seed, int), "steps": number(self._value(node.get("steps")), int),
            "guidance_scale": number(self._value(node.get("cfg"))),
            "scheduler": scheduler_of(self._value(node.get("sampler_name")), self._value(node.get("scheduler")),
                                      "sampler_name", self.unrendered),
            "prompt_syntax": "a1111",  # ComfyUI reads (word:1.2) and (word) as A1111 does
            "clip_skip": 1, "loras": [],
        }
        if (number(self._value(node.get("denoise"))) or 1.0) != 1.0:
            self.unrendered.append("denoise")
        if self.graph[key]["class_type"] == "KSamplerAdvanced" and self._partial_steps(node):
            self.unrendered.append("start_at_step/end_at_step")
        self._model(node.get("model"), row)
        self._latent(node.get("latent_image"), row)
        return row

    def _partial_steps(self, node: dict[str, Any]) -> bool:
        start, end, steps = (number(self._value(node.get(k)), int) for k in ("start_at_step", "end_at_step", "steps"))
        return bool(start) or (end is not None and end < (steps or 0))

    def _text(self, link: Any, which: str) -> str:
        node = self._node(link)
        if node is None or node["class_type"] not in TEXT_ENCODERS:
            self.unrendered.append(f"{which} conditioning from {node['class_type'] if node else 'nothing'}")
            return ""
        return str(self._value(node["inputs"].get("text")) or "")

    def _model(self, link: Any, row: dict[str, Any]) -> None:
        """Down the model input: LoRA loaders (the first in the chain is applied last), then the checkpoint."""
        loras: list[dict[str, Any]] = []
        node, seen = self._node(link), set()
        while node is not None and node["class_type"] in LORA_LOADERS and id(node) not in seen:  # a loop must end
            seen.add(id(node))
            inputs = node["inputs"]
            weight = number(self._value(inputs.get("strength_model")))
            clip = number(self._value(inputs.get("strength_clip", weight)))
            if clip != weight:
                self.unrendered.append("LoRA strength_clip unlike strength_model")
            name = str(self._value(inputs.get("lora_name")))
            loras.append({"path": name, "weight": 1.0 if weight is None else weight})
            node = self._node(inputs.get("model"))
        row["loras"] = loras[::-1]
        if node is not None and node["class_type"] in CHECKPOINTS:
            row["model"] = str(self._value(node["inputs"].get("ckpt_name")))
        else:
            self.unrendered.append(f"model from {node['class_type'] if node else 'nothing'}")

    def _latent(self, link: Any, row: dict[str, Any]) -> None:
        node = self._node(link)
        if node is None or node["class_type"] not in LATENTS:
            self.unrendered.append(f"latent_image from {node['class_type'] if node else 'nothing'} (img2img)")
            return
        inputs = node["inputs"]
        row["width"], row["height"] = (number(self._value(inputs.get(k)), int) for k in ("width", "height"))
        if (number(self._value(inputs.get("batch_size")), int) or 1) > 1:
            self.unrendered.append("batch_size (the row renders the batch's first image)")

    def _node(self, link: Any) -> dict[str, Any] | None:
        if isinstance(link, list) and link and str(link[0]) in self.graph:
            return self.graph[str(link[0])]
        return None

    def _class(self, link: Any) -> str | None:
        node = self._node(link)
        return node.get("class_type") if node else None

    def _input(self, key: str, name: str) -> Any:
        return self.graph[key].get("inputs", {}).get(name)

    def _value(self, value: Any) -> Any:
        """A widget's value, or the value of the primitive node wired to it."""
        for _ in range(8):  # primitive chains are short; a loop in a broken graph must end
            node = self._node(value)
            if node is None:
                return value
            value = next((node["inputs"][k] for k in VALUE_INPUTS if k in node.get("inputs", {})), None)
        return None
