"""A1111 and Forge infotexts: what sdbatch cannot render as written (a VAE by name, a sampler diffusers lacks,
Forge's schedule types and modules) is reported, never replaced silently."""

import pytest

from sdbatch.manifest.from_images import manifest_from_images, write_manifest_from_images
from sdbatch.metadata import GENERATORS, read_image
from tests.support.generator_images import forge_flux_png, png, sd_parsers_view

INFOTEXT = ("a fox in snow\nNegative prompt: blurry\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 42, "
            "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly{extra}, Version: v1.9.4")


@pytest.mark.parametrize("sampler, schedule, reported", [
    ("DPM++ SDE Karras", "", "Sampler (DPM++ SDE Karras)"),
    ("Euler", ", Schedule type: Beta", "Sampler (Euler, Beta)"),
    ("DPM++ 2M", ", Schedule type: Simple", "Sampler (DPM++ 2M, Simple)"),  # Simple: Euler's only
    ("Euler", ", Schedule type: Simple", None),
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


FORGE_MODULES = ["Diffusion in Low Bits", "Module 1", "Module 2", "Module 3"]


def test_a_forge_flux_image_reads_its_distilled_guidance_and_true_cfg():
    reading = read_image(forge_flux_png())
    row = reading.row
    assert (row["guidance_scale"], row["true_cfg_scale"], row["scheduler"]) == (3.5, 1.0, "euler_simple")
    assert (row["seed"], row["steps"], row["width"], row["height"]) == (2563081402, 20, 896, 1152)
    assert row["model"] == "flux1-dev-bnb-nf4-v2" and row["clip_skip"] is None  # FLUX takes no clip skip
    assert reading.unrendered == FORGE_MODULES  # the files Forge loaded beside the model: named, not rendered


def test_forge_true_cfg_with_a_negative_prompt_and_a_clip_skip_it_cannot_render():
    reading = read_image(forge_flux_png(cfg=3, negative="blurry", extra=", Clip skip: 2"))
    assert (reading.row["true_cfg_scale"], reading.row["negative_prompt"]) == (3.0, "blurry")
    assert reading.row["clip_skip"] is None and "Clip skip" in reading.unrendered


def test_from_images_makes_forge_flux_rows_and_counts_the_modules(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "corgi.png").write_bytes(forge_flux_png())
    (tmp_path / "images" / "fox.png").write_bytes(png({"parameters": INFOTEXT.format(sampler="Euler", extra="")}))
    read = write_manifest_from_images(str(tmp_path / "images"), str(tmp_path / "m.parquet"))
    assert dict(read.dropped) == dict.fromkeys(FORGE_MODULES, 1)
    rows = {row["id"]: row for row in manifest_from_images(str(tmp_path / "images"))[0].to_pylist()}
    corgi, fox = rows["corgi"], rows["fox"]
    assert (corgi["guidance_scale"], corgi["true_cfg_scale"], corgi["scheduler"]) == (3.5, 1.0, "euler_simple")
    assert (corgi["clip_skip"], corgi["max_sequence_length"], corgi["generator"]) == (None, None, "A1111")
    assert (fox["guidance_scale"], fox["true_cfg_scale"], fox["clip_skip"]) == (7.0, None, 1)  # SD1: as before
