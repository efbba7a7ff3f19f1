"""Fooocus's JSON parameters: the expanded prompt where kept, its sampler and LoRAs; its own sampling reported."""

from sdbatch.metadata import read_image
from tests.support.generator_images import fooocus_png, sd_parsers_view


def test_the_expanded_prompt_sampler_and_loras_read_back_and_sd_parsers_agrees():
    data = fooocus_png()
    reading = read_image(data)
    row = reading.row
    assert reading.generator == "Fooocus"
    assert row["prompt"] == "a cat astronaut, floating in space, highly detailed, cinematic"
    assert row["negative_prompt"] == "(worst quality, low quality:1.4)"
    assert (row["seed"], row["steps"], row["guidance_scale"], row["width"], row["height"]) == (
        1234567, 30, 4.0, 1152, 896)
    assert row["scheduler"] == "dpmpp_2m_sde_karras" and row["model"] == "juggernautXL_v8Rundiffusion"
    assert row["loras"] == [{"path": "sd_xl_offset_example-lora_1.0", "weight": 0.1}]
    assert reading.unrendered == ["sharpness and ADM guidance (Fooocus's own sampling)"]
    theirs = sd_parsers_view(data)
    assert (theirs["generator"], theirs["seed"], theirs["steps"], theirs["cfg"]) == (
        "FOOOCUS", row["seed"], row["steps"], row["guidance_scale"])


def test_an_older_image_without_the_expanded_prompt_reports_its_styles():
    reading = read_image(fooocus_png(legacy=True))
    assert reading.row["prompt"] == "a cat astronaut" and reading.row["steps"] == 30  # Speed's steps
    assert reading.row["loras"] == [{"path": "sd_xl_offset_example-lora_1.0.safetensors", "weight": 0.1}]
    assert "styles (the image does not keep the expanded prompt)" in reading.unrendered
