"""InvokeAI's three metadata forms read back; its compel prompt weights reported."""

import json

import pytest

from sdbatch.metadata import read_image
from tests.support.generator_images import invokeai_png, png, sd_parsers_view


@pytest.mark.parametrize("version", ["3", "2", "1"])
def test_each_version_reads_back_and_sd_parsers_agrees(version):
    data = invokeai_png(version)
    reading = read_image(data)
    row = reading.row
    assert reading.generator == "InvokeAI" and reading.unrendered == []
    assert (row["seed"], row["steps"], row["guidance_scale"], row["width"], row["height"]) == (31337, 30, 7.0, 768, 512)
    assert row["scheduler"] == ("dpmpp_2m_karras" if version == "3" else "euler_a")
    theirs = sd_parsers_view(data)
    assert (theirs["generator"], theirs["seed"], theirs["steps"], theirs["cfg"]) == (
        "INVOKEAI", row["seed"], row["steps"], row["guidance_scale"])
    assert row["prompt"].startswith("a lighthouse at dusk") and theirs["prompt"].startswith(row["prompt"])


def test_version_3_carries_model_loras_and_negative():
    row = read_image(invokeai_png("3")).row
    assert row["model"] == "stable-diffusion-v1-5" and row["negative_prompt"] == "text, watermark"
    assert row["loras"] == [{"path": "watercolor", "weight": 0.6}] and row["clip_skip"] == 1


def test_compel_weights_and_refiners_are_reported():
    meta = {"positive_prompt": "a (lighthouse)1.3 at dusk++", "negative_prompt": "", "seed": 1, "steps": 20,
            "cfg_scale": 5, "scheduler": "lms", "width": 512, "height": 512, "refiner_model": {"name": "r"}}
    reading = read_image(png({"invokeai_metadata": json.dumps(meta)}))
    assert reading.unrendered == ["prompt weights (InvokeAI's compel syntax)", "scheduler (lms)", "refiner_model"]
