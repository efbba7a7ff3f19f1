"""A1111 parameters: written in A1111's layout, embedded in PNG/JPEG/WebP, and read back into rows."""

import io

import pytest
from PIL import Image

from sdbatch.a1111.parameters import (
    format_parameters,
    parse_parameters,
    row_from_parameters,
    save_options,
    unused_fields,
)
from tests.support.generator_images import embedded_parameters

ROW = {"id": "cat-1", "prompt": "a cat, in a hat", "negative_prompt": "blurry", "steps": 20,
       "scheduler": "dpmpp_2m_karras", "scheduler_class": "DPMSolverMultistepScheduler", "guidance_scale": 7.5,
       "seed": 1234567890123, "width": 512, "height": 768, "model": "/models/sd15", "model_hash": "0123456789abcdef",
       "loras_used": [{"path": "/loras/ink.safetensors", "sha256": "ab" * 32, "weight": 0.8}],
       "controlnets_used": [{"model": "/cn/canny", "model_hash": "f" * 16, "image": "s3://b/c.png",
                             "image_sha256": "cd" * 32, "scale": 0.5}],
       "sdbatch_version": "0.1.0"}


def test_layout_is_a1111s():
    text = format_parameters(ROW)
    prompt, negative, settings = text.split("\n")
    assert prompt == "a cat, in a hat <lora:ink:0.8>"
    assert negative == "Negative prompt: blurry"
    assert settings.startswith("Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, "
                               "Seed: 1234567890123, "
                               "Size: 512x768, Model hash: 0123456789, Model: sd15, Lora hashes: \"ink: abababababab\"")


def test_parse_reads_prompt_negative_and_quoted_values():
    fields = parse_parameters(format_parameters(ROW))
    assert fields["prompt"] == "a cat, in a hat <lora:ink:0.8>" and fields["negative_prompt"] == "blurry"
    assert fields["Pad conds"] == "True"  # A1111 pads as sdbatch does only with this
    assert fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras"
    assert fields["Lora hashes"] == "ink: abababababab"


def test_a_plain_a1111_text_gives_a_row():
    text = "a dog\nNegative prompt: bad\nSteps: 25, Sampler: Euler a, CFG scale: 6, Seed: 7, Size: 640x512, Model: v1-5"
    row = row_from_parameters(parse_parameters(text))
    assert row == {"prompt": "a dog", "negative_prompt": "bad", "seed": 7, "steps": 25, "guidance_scale": 6.0,
                   "width": 640, "height": 512, "scheduler": "euler_a", "model": "v1-5", "prompt_syntax": "a1111",
                   "clip_skip": 1, "ti_hashes": None}


def test_a1111_1_10_text_keeps_its_schedule_type_and_earlier_versions_combined_names_too():
    text = ("(masterpiece:1.2), a castle on a hill, [foggy] <lora:castleStyle:0.7>\n"
            "Negative prompt: EasyNegative, lowres\n"
            "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 12345, Size: 512x768, "
            "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, "
            'Lora hashes: "castleStyle: abc123def456", TI hashes: "EasyNegative: c74b4e810b03", Version: v1.10.1')
    assert row_from_parameters(parse_parameters(text))["scheduler"] == "dpmpp_2m_karras"
    older = "a dog\nSteps: 20, Sampler: DPM++ 2M SDE Exponential, CFG scale: 6, Seed: 7, Size: 512x512"
    assert row_from_parameters(parse_parameters(older))["scheduler"] == "dpmpp_2m_sde_exponential"
    unknown = "a dog\nSteps: 20, Sampler: DPM++ 2S a, Schedule type: Karras, CFG scale: 6, Seed: 7, Size: 512x512"
    assert row_from_parameters(parse_parameters(unknown))["scheduler"] is None  # the model's own, not a look-alike


def test_every_scheduler_is_written_back_as_a1111_writes_it_and_read_back_the_same():
    from sdbatch.a1111.samplers import BY_NAME

    for name, named in BY_NAME.items():
        fields = parse_parameters(format_parameters({**ROW, "scheduler": name}))
        assert fields["Sampler"] == named.a1111 and fields["Schedule type"] == (named.schedule or "Automatic")
        assert row_from_parameters(fields)["scheduler"] == name


def test_sdbatch_rows_come_back_exactly():
    row = row_from_parameters(parse_parameters(format_parameters(ROW)))
    assert row["id"] == "cat-1" and row["prompt"] == "a cat, in a hat" and row["model"] == "/models/sd15"
    assert row["loras"] == [{"path": "/loras/ink.safetensors", "weight": 0.8}]
    assert row["controlnets"] == [{"model": "/cn/canny", "image": "s3://b/c.png", "scale": 0.5}]
    assert (row["seed"], row["steps"], row["width"], row["height"]) == (1234567890123, 20, 512, 768)


def test_rows_embedded_by_earlier_sdbatch_versions_as_json_still_come_back():
    text = ('a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Model: sd15, sdbatch: '
            '"{\\"controlnets\\":[],\\"id\\":\\"old-1\\",\\"loras\\":[],\\"model\\":\\"/m\\",'
            '\\"negative_prompt\\":null,\\"prompt\\":\\"a cat\\",\\"scheduler\\":\\"euler\\"}"')
    row = row_from_parameters(parse_parameters(text))
    assert (row["id"], row["model"], row["scheduler"], row["vae"]) == ("old-1", "/m", "euler", None)


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_a_third_party_a1111_reader_reads_every_field_and_no_stray_key(fmt):
    from sd_parsers import ParserManager

    # One LoRA: sd-parsers 0.6 splits A1111's own quoted "Lora hashes" of two LoRAs on its comma.
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, fmt.upper(), **save_options(fmt, format_parameters(ROW)))
    info = ParserManager().parse(Image.open(io.BytesIO(buffer.getvalue())))
    sampler = info.samplers[0]
    assert (sampler.name, sampler.parameters["scheduler"]) == ("DPM++ 2M", "Karras")
    assert sampler.parameters["steps"] == "20" and sampler.parameters["cfg_scale"] == "7.5"
    assert sampler.parameters["seed"] == "1234567890123" and sampler.model.name == "sd15"
    assert [p.value for p in sampler.prompts] == ["a cat, in a hat <lora:ink:0.8>"]
    assert [p.value for p in sampler.negative_prompts] == ["blurry"]
    assert set(info.metadata) <= {"Size", "Lora hashes", "Pad conds", "Version", "sdbatch"}, info.metadata
    assert row_from_parameters(parse_parameters(info.raw_parameters["parameters"]))["id"] == "cat-1"


def test_a_vae_override_is_written_and_comes_back():
    row = {**ROW, "vae": "s3://models/vae-ft-mse.safetensors", "vae_hash": "9876543210fedcba"}
    fields = parse_parameters(format_parameters(row))
    assert (fields["VAE"], fields["VAE hash"]) == ("vae-ft-mse", "9876543210")
    assert row_from_parameters(fields)["vae"] == "s3://models/vae-ft-mse.safetensors"
    assert "VAE" not in parse_parameters(format_parameters(ROW))  # the model's own VAE: nothing to name


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_embedded_in_each_format(fmt):
    text = format_parameters({**ROW, "prompt": "unicode ✓ café"})
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(buffer, format=fmt.upper(), **save_options(fmt, text))
    assert embedded_parameters(buffer.getvalue()) == text


def test_image_without_parameters_reads_none():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert embedded_parameters(buffer.getvalue()) is None


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_a_very_long_prompt_still_encodes_with_what_fits(fmt):
    # EXIF holds 64 KiB: a 20,000-character prompt (UTF-16, twice with the exact record) cannot all fit,
    # and must not fail the image (and with it the whole shard).
    row = {**ROW, "prompt": "a cat " * 4000}
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format=fmt.upper(), **save_options(fmt, format_parameters(row)))
    text = embedded_parameters(buffer.getvalue())
    assert text.startswith("a cat a cat") and 20_000 < len(text) < 33_000


def test_image_rows_are_written_as_a1111_writes_them_and_read_back():
    hires = {**ROW, "width": 1024, "height": 1536, "hires_scale": 2.0, "hires_steps": 12, "hires_strength": 0.45,
             "hires_upscaler": "latent"}
    fields = parse_parameters(format_parameters(hires))
    assert (fields["Size"], fields["Hires upscale"], fields["Hires steps"], fields["Hires upscaler"],
            fields["Denoising strength"]) == ("512x768", "2", "12", "Latent", "0.45")  # Size: the first pass
    back = row_from_parameters(fields)
    assert (back["width"], back["hires_scale"], back["hires_steps"], back["hires_strength"],
            back["hires_upscaler"]) == (512, 2.0, 12, 0.45, "latent")
    img2img = {**ROW, "init_image": "s3://b/in.png", "mask_image": "s3://b/mask.png", "strength": 0.6}
    fields = parse_parameters(format_parameters(img2img))
    assert fields["Denoising strength"] == "0.6" and "Hires upscale" not in fields
    back = row_from_parameters(fields)
    assert (back["init_image"], back["mask_image"], back["strength"]) == ("s3://b/in.png", "s3://b/mask.png", 0.6)


# ROW's text as sdbatch wrote it before model families were recorded: SD1.5 images keep it to the byte.
SD15_TEXT = (
    "a cat, in a hat <lora:ink:0.8>\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234567890123, Size: 512x768, "
    'Model hash: 0123456789, Model: sd15, Lora hashes: "ink: abababababab", Pad conds: True, Version: sdbatch 0.1.0, '
    "sdbatch: eyJjb250cm9sbmV0cyI6W3siaW1hZ2UiOiJzMzovL2IvYy5wbmciLCJtb2RlbCI6Ii9jbi9jYW5ueSIsInNjYWxlIjowLjV9XSwia"
    "WQiOiJjYXQtMSIsImluaXRfaW1hZ2UiOm51bGwsImxvcmFzIjpbeyJwYXRoIjoiL2xvcmFzL2luay5zYWZldGVuc29ycyIsIndlaWdodCI6MC"
    "44fV0sIm1hc2tfaW1hZ2UiOm51bGwsIm1vZGVsIjoiL21vZGVscy9zZDE1IiwibmVnYXRpdmVfcHJvbXB0IjoiYmx1cnJ5IiwicHJvbXB0Ijo"
    "iYSBjYXQsIGluIGEgaGF0IiwicHJvbXB0X3N5bnRheCI6bnVsbCwic2NoZWR1bGVyIjoiZHBtcHBfMm1fa2FycmFzIiwidmFlIjpudWxsfQ==")
FLUX_ROW = {"id": "corgi-1", "prompt": "a corgi, on a beach", "negative_prompt": "blurry", "steps": 28,
            "scheduler": "euler_simple", "scheduler_class": "FlowMatchEulerDiscreteScheduler", "guidance_scale": 3.5,
            "true_cfg_scale": None, "max_sequence_length": 512, "family": "flux", "seed": 42, "width": 1024,
            "height": 768, "model": "/models/flux1-dev", "model_hash": "2f3c5caac0aa", "clip_skip": None,
            "sdbatch_version": "0.2.0"}


def _settings(text: str) -> str:
    return text.split("\n")[-1]


def test_an_sd15_row_is_written_as_before_and_its_family_only_joins_the_exact_row():
    assert format_parameters(ROW) == SD15_TEXT
    named = format_parameters({**ROW, "family": "sd1", "true_cfg_scale": None, "max_sequence_length": None})
    assert named.partition(", sdbatch: ")[0] == SD15_TEXT.partition(", sdbatch: ")[0]
    assert format_parameters({**ROW, "family": "a-family-of-later-versions"}).startswith(SD15_TEXT[:200])


def test_a_flux_row_is_written_as_forge_writes_flux():
    settings = _settings(format_parameters({**FLUX_ROW, "clip_skip": 2}))
    assert settings.startswith("Steps: 28, Sampler: Euler, Schedule type: Simple, CFG scale: 1, "
                               "Distilled CFG Scale: 3.5, Seed: 42, Size: 1024x768, Model hash: 2f3c5caac0, "
                               "Model: flux1-dev, ")
    assert "Clip skip" not in settings and "512" not in settings  # no field for the T5 length: only the exact row
    assert "CFG scale: 4, Distilled CFG Scale: 3.5" in format_parameters({**FLUX_ROW, "true_cfg_scale": 4.0})


@pytest.mark.parametrize("true_cfg, read", [(None, 1.0), (1.0, 1.0), (4.25, 4.25), (1.23456789, 1.23456789)])
def test_a_flux_row_comes_back_the_same(true_cfg, read):
    fields = parse_parameters(format_parameters({**FLUX_ROW, "true_cfg_scale": true_cfg}))
    back = row_from_parameters(fields)
    assert {k: back[k] for k in ("id", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "scheduler",
                                 "width", "height", "model", "max_sequence_length")} == {
        k: FLUX_ROW[k] for k in ("id", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "scheduler",
                                 "width", "height", "model", "max_sequence_length")}
    assert back["true_cfg_scale"] == read and back["clip_skip"] is None  # CFG scale 1: true CFG off
    assert unused_fields(fields) == []
    assert "family" not in back  # the model's family decides when it renders; a row has no such column


@pytest.mark.parametrize("guidance, cfg", [(0.0, "1"), (3.7, "4.7"), (4.0, "5")])
def test_a_zimage_row_writes_a1111s_cfg_scale_one_above_its_guidance_and_comes_back_the_same(guidance, cfg):
    # Z-Image's pipeline guides as pos + g * (pos - neg), A1111's scale s as neg + s * (pos - neg): s = g + 1, so
    # Z-Image-Turbo's unguided 0 is written "CFG scale: 1", as Forge and ComfyUI users see it.
    zimage = {**FLUX_ROW, "family": "zimage", "guidance_scale": guidance, "scheduler": "euler", "steps": 9,
              "model": "/models/z-image-turbo"}
    fields = parse_parameters(format_parameters(zimage))
    assert fields["CFG scale"] == cfg and "Distilled CFG Scale" not in fields and "Pad conds" not in fields
    back = row_from_parameters(fields)
    assert (back["guidance_scale"], back["max_sequence_length"], back["model"]) == (guidance, 512,
                                                                                    "/models/z-image-turbo")
    assert back.get("true_cfg_scale") is None and back["clip_skip"] is None
    # Another tool's image names no family: its CFG scale is read as written (the model decides when it renders).
    assert row_from_parameters({k: v for k, v in fields.items() if k != "sdbatch"})["guidance_scale"] == float(cfg)


def test_an_sd3_row_writes_its_cfg_as_cfg_and_comes_back_the_same():
    sd3 = {**FLUX_ROW, "family": "sd3", "guidance_scale": 5.0, "max_sequence_length": 256, "clip_skip": 2,
           "scheduler": "euler", "model": "/models/sd3.5-medium"}
    fields = parse_parameters(format_parameters(sd3))
    assert (fields["Sampler"], fields["Schedule type"], fields["CFG scale"]) == ("Euler", "Automatic", "5")
    assert "Distilled CFG Scale" not in fields and "Clip skip" not in fields
    back = row_from_parameters(fields)
    assert (back["guidance_scale"], back["max_sequence_length"], back["scheduler"], back["model"]) == (
        5.0, 256, "euler", "/models/sd3.5-medium")
    assert back["clip_skip"] is None and back.get("true_cfg_scale") is None
