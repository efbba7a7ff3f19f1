"""NovelAI's Description and Comment: prompt, negative, seed, steps, scale, sampler; its model reported."""

from sdbatch.metadata import read_image
from tests.support.generator_images import novelai_png, sd_parsers_view


def test_current_and_legacy_images_read_back_and_sd_parsers_agrees():
    for legacy, size in ((False, (1216, 832)), (True, (512, 768))):
        data = novelai_png(legacy)
        reading = read_image(data)
        row = reading.row
        assert reading.generator == "NovelAI"
        assert (row["prompt"], row["negative_prompt"], row["seed"], row["steps"], row["guidance_scale"]) == (
            "1girl, reading a book, library", "lowres, bad anatomy", 2718281828, 28, 5.0)
        assert (row["width"], row["height"]) == size  # from the Comment, or the image itself before it had them
        assert row["prompt_syntax"] == "plain"  # NovelAI's {emphasis} is not A1111's
        theirs = sd_parsers_view(data)
        assert (theirs["generator"], theirs["prompt"], theirs["seed"], theirs["cfg"]) == (
            "NOVELAI", row["prompt"], row["seed"], row["guidance_scale"])


def test_its_own_model_its_sampler_and_its_switches_are_reported():
    reading = read_image(novelai_png())
    assert reading.row["scheduler"] is None  # k_euler_ancestral with Karras: diffusers' Euler a takes no Karras
    assert reading.unrendered == ["Model (NovelAI's own: NovelAI Diffusion V3 7BCCAA2C)",
                                  "sampler (euler_ancestral karras)"]
    assert read_image(novelai_png(legacy=True)).row["scheduler"] == "euler_a"
