"""ComfyUI's prompt graph read from its sampler back: texts, seed, steps, cfg, sampler, size, checkpoint, LoRAs."""

import json

from sdbatch.metadata import read_image
from tests.support.generator_images import comfyui_graph, comfyui_png, png, sd_parsers_view


def test_the_graph_becomes_the_row_it_renders_and_sd_parsers_agrees():
    data = comfyui_png(comfyui_graph())
    reading = read_image(data)
    assert reading.generator == "ComfyUI" and reading.unrendered == []
    assert reading.row == {
        "prompt": "a (red:1.2) fox in snow", "negative_prompt": "blurry, lowres", "seed": 123456789, "steps": 28,
        "guidance_scale": 6.5, "scheduler": "dpmpp_2m_karras", "prompt_syntax": "a1111", "clip_skip": 1,
        "loras": [{"path": "pixel-art.safetensors", "weight": 0.8}], "model": "sd_xl_base_1.0.safetensors",
        "width": 832, "height": 1216}
    theirs = sd_parsers_view(data)
    assert theirs["generator"] == "COMFYUI"
    assert (theirs["prompt"], theirs["negative"], theirs["seed"], theirs["steps"], theirs["cfg"]) == (
        reading.row["prompt"], reading.row["negative_prompt"], reading.row["seed"], reading.row["steps"],
        reading.row["guidance_scale"])


def test_what_the_graph_does_beyond_one_pass_is_reported_not_guessed():
    graph = comfyui_graph(lora=False, refiner=True)
    graph["3"]["inputs"].update(sampler_name="euler_ancestral", scheduler="karras")
    graph["12"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0]}}
    graph["3"]["inputs"]["negative"] = ["12", 0]
    reading = read_image(comfyui_png(graph))
    assert reading.row["scheduler"] is None and reading.row["loras"] == [] and reading.row["negative_prompt"] is None
    assert set(reading.unrendered) == {"ComfyUI: 2 sampler nodes (a refiner or a second pass)",
                                       "sampler_name (euler_ancestral karras)",
                                       "negative conditioning from ConditioningCombine"}


def test_values_wired_from_primitive_nodes_are_followed():
    graph = comfyui_graph()
    graph["20"] = {"class_type": "PrimitiveNode", "inputs": {"seed": 42}}
    graph["21"] = {"class_type": "Text Multiline", "inputs": {"text": "a wired prompt"}}
    graph["3"]["inputs"]["seed"] = ["20", 0]
    graph["6"]["inputs"]["text"] = ["21", 0]
    row = read_image(comfyui_png(graph)).row
    assert (row["seed"], row["prompt"]) == (42, "a wired prompt")


def test_a_prompt_text_that_is_not_a_graph_is_not_comfyui():
    for text in (json.dumps([1, 2]), json.dumps({"3": {"inputs": {}}}), "a fox, not JSON"):
        assert read_image(png({"prompt": text})) is None


def test_comfyuis_simple_schedule_is_eulers_and_no_other_samplers():
    graph = comfyui_graph()
    graph["3"]["inputs"].update(sampler_name="euler", scheduler="simple")
    assert read_image(comfyui_png(graph)).row["scheduler"] == "euler_simple"
    graph["3"]["inputs"].update(sampler_name="dpmpp_2m")
    assert "sampler_name (dpmpp_2m simple)" in read_image(comfyui_png(graph)).unrendered
