"""A1111 and Forge infotexts: what sdbatch cannot render as written (a VAE by name, a sampler diffusers lacks,
Forge's schedule types) is reported, never replaced silently."""

import pytest

from sdbatch.metadata import GENERATORS, read_image
from tests.support.generator_images import png, sd_parsers_view

INFOTEXT = ("a fox in snow\nNegative prompt: blurry\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 42, "
            "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly{extra}, Version: v1.9.4")


@pytest.mark.parametrize("sampler, schedule, reported", [
    ("DPM++ SDE Karras", "", "Sampler (DPM++ SDE Karras)"),
    ("Euler", ", Schedule type: Simple", "Sampler (Euler, Simple)"),
    ("DPM++ 2M", ", Schedule type: Karras", None),
])
def test_a_sampler_sdbatch_cannot_render_is_reported(sampler, schedule, reported):
    data = png({"parameters": INFOTEXT.format(sampler=sampler, extra=schedule)})
    reading = read_image(data)
    assert (reading.row["scheduler"] is None) == (reported is not None)
    assert (reported in reading.unrendered) if reported else reading.unrendered == []
    assert sd_parsers_view(data)["seed"] == reading.row["seed"] == 42


def test_the_vae_is_named_for_from_images_to_find_and_reported_until_it_does():
    reading = read_image(png({"parameters": INFOTEXT.format(sampler="Euler", extra=", VAE: vae-ft-mse.safetensors")}))
    assert "VAE" in reading.unrendered and reading.row["vae_name"] == "vae-ft-mse.safetensors"


def test_a1111_text_is_a1111s_and_json_parameters_are_not():
    assert [g.name for g in GENERATORS][:2] == ["A1111", "Fooocus"]
    assert read_image(png({"parameters": INFOTEXT.format(sampler="Euler", extra="")})).generator == "A1111"
    assert read_image(png({"parameters": '{"prompt": "x"}'})) is None  # JSON, but not Fooocus's
    assert read_image(png({"Software": "something else"})) is None
