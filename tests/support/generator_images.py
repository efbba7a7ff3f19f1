"""Images whose metadata is written the way each generator writes it (its keys, its JSON, where it puts them),
for reading them back; tiny pixels, real containers."""

from __future__ import annotations

import io
import json
import struct
import zlib

from PIL import Image, PngImagePlugin


def png(texts: dict[str, str], size: tuple[int, int] = (64, 48), after_pixels: bool = False) -> bytes:
    """A PNG with tEXt/iTXt chunks (iTXt for text beyond Latin-1, as Pillow and the generators write it); with
    `after_pixels`, the chunks come after IDAT, where a valid PNG may keep them."""
    out = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if not after_pixels:
        for key, value in texts.items():
            info.add_itxt(key, value) if not value.isascii() else info.add_text(key, value)
    Image.new("RGB", size, (120, 80, 40)).save(out, "PNG", pnginfo=info)
    data = out.getvalue()
    if after_pixels:
        chunks = b"".join(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))
                          for key, value in texts.items())
        data = data[:-12] + chunks + data[-12:]  # before IEND
    return data


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def webp_with_exif(tags: dict[int, str], size: tuple[int, int] = (64, 48)) -> bytes:
    """A WebP whose EXIF holds text in IFD0 tags, as ComfyUI's SaveAnimatedWEBP writes Prompt:/Workflow:."""
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, "WEBP", exif=exif.tobytes())
    return out.getvalue()


def comfyui_graph(lora: bool = True, refiner: bool = False) -> dict:
    """ComfyUI's API prompt: checkpoint -> LoRA loader -> KSampler <- CLIPTextEncode x2, EmptyLatentImage."""
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 832, "height": 1216, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a (red:1.2) fox in snow", "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, lowres", "clip": ["10", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 123456789, "steps": 28, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "denoise": 1.0, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "pixel-art.safetensors", "strength_model": 0.8,
                                                        "strength_clip": 0.8, "model": ["4", 0], "clip": ["4", 1]}},
    }
    if not lora:
        graph["3"]["inputs"]["model"] = ["4", 0]
        graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["4", 1]
        del graph["10"]
    if refiner:
        graph["11"] = {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": 10, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.3,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["3", 0]}}
    return graph


def comfyui_png(graph: dict) -> bytes:
    return png({"prompt": json.dumps(graph), "workflow": json.dumps({"nodes": [], "links": []})})


def novelai_png(legacy: bool = False) -> bytes:
    comment = {"steps": 28, "height": 832, "width": 1216, "scale": 5.0, "uncond_scale": 1.0, "cfg_rescale": 0,
               "seed": 2718281828, "n_samples": 1, "noise_schedule": "karras", "sampler": "k_euler_ancestral",
               "sm": False, "sm_dyn": False, "uc": "lowres, bad anatomy", "request_type": "PromptGenerateRequest",
               "signed_hash": "abc"}
    if not legacy:
        comment["prompt"] = "1girl, reading a book, library"
    else:
        del comment["noise_schedule"], comment["width"], comment["height"]
    return png({"Title": "NovelAI generated image", "Description": "1girl, reading a book, library",
                "Software": "NovelAI", "Source": "NovelAI Diffusion V3 7BCCAA2C", "Comment": json.dumps(comment)},
               size=(1216, 832) if not legacy else (512, 768))


def invokeai_png(version: str = "3") -> bytes:
    if version == "3":
        meta = {"generation_mode": "txt2img", "positive_prompt": "a lighthouse at dusk, oil painting",
                "negative_prompt": "text, watermark", "width": 768, "height": 512, "seed": 31337, "rand_device": "cpu",
                "cfg_scale": 7.0, "steps": 30, "scheduler": "dpmpp_2m_k", "clip_skip": 0,
                "model": {"name": "stable-diffusion-v1-5", "base": "sd-1", "type": "main"},
                "loras": [{"model": {"name": "watercolor", "base": "sd-1"}, "weight": 0.6}]}
        return png({"invokeai_metadata": json.dumps(meta), "invokeai_graph": json.dumps({"nodes": {}})})
    if version == "2":
        meta = {"model": "stable diffusion", "model_weights": "stable-diffusion-1.5", "app_id": "invoke-ai/InvokeAI",
                "app_version": "2.3.0", "image": {"prompt": [{"prompt": "a lighthouse at dusk [text, watermark]",
                                                             "weight": 1.0}],
                                                  "steps": 30, "cfg_scale": 7.0, "seed": 31337, "width": 768,
                                                  "height": 512, "sampler": "k_euler_a", "type": "txt2img"}}
        return png({"sd-metadata": json.dumps(meta), "Dream": '"a lighthouse at dusk" -s 30 -S 31337 -W 768 -H 512 '
                                                               '-C 7.0 -A k_euler_a'})
    return png({"Dream": '"a lighthouse at dusk" -s 30 -S 31337 -W 768 -H 512 -C 7.0 -A k_euler_a'})


def fooocus_png(legacy: bool = False) -> bytes:
    """Fooocus 2.2+'s "fooocus" scheme; `legacy`: 2.1's, without steps or hashes, LoRAs as lora_combined_N."""
    meta = {"prompt": "a cat astronaut", "negative_prompt": "", "styles": "['Fooocus V2', 'Fooocus Enhance']",
            "performance": "Speed", "steps": 30, "resolution": "(1152, 896)", "guidance_scale": 4.0,
            "sharpness": 2.0, "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion",
            "base_model_hash": "aeb7e9e689", "refiner_model": "None", "refiner_switch": 0.5,
            "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras", "vae": "Default (model)", "seed": "1234567",
            "loras": [["sd_xl_offset_example-lora_1.0", 0.1, "4852686128"]],
            "full_prompt": ["a cat astronaut, floating in space, highly detailed, cinematic"],
            "full_negative_prompt": ["(worst quality, low quality:1.4)"], "version": "Fooocus v2.4.3",
            "metadata_scheme": "fooocus"}
    if legacy:
        for key in ("steps", "base_model_hash", "loras", "vae", "full_prompt", "full_negative_prompt"):
            del meta[key]
        meta.update(base_model="juggernautXL_v8Rundiffusion.safetensors", version="Fooocus v2.1.865",
                    lora_combined_1="sd_xl_offset_example-lora_1.0.safetensors : 0.1")
    return png({"parameters": json.dumps(meta), "fooocus_scheme": "fooocus"}, size=(1152, 896))


# Forge 2 (f2.0.1) on FLUX.1-dev, as it writes the settings line: true CFG as "CFG scale" (1: off), the distilled
# guidance apart, then the low-bit storage and the VAE and text encoder files as "Module N".
FORGE_FLUX = ("a corgi in sunglasses on a beach, golden hour{negative}\n"
              "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: {cfg}, Distilled CFG Scale: 3.5, "
              "Seed: 2563081402, Size: 896x1152, Model hash: 2f3c5caac0, Model: flux1-dev-bnb-nf4-v2{extra}, "
              "Version: f2.0.1v1.10.1-previous-313-g8a042934, Diffusion in Low Bits: bnb-nf4 (fp16 LoRA), "
              "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16")


def forge_flux_png(cfg: float = 1, negative: str = "", extra: str = "") -> bytes:
    """A Forge FLUX.1-dev image: `cfg` above 1 is true CFG with the negative prompt; `extra` joins the settings
    before Version (", Clip skip: 2")."""
    text = FORGE_FLUX.format(cfg=f"{cfg:g}", negative=f"\nNegative prompt: {negative}" if negative else "",
                             extra=extra)
    return png({"parameters": text})


def sd_parsers_view(data: bytes) -> dict:
    """What sd-parsers (a reader that is not ours) finds in an image: generator, prompt, negative, seed, steps,
    cfg and sampler name, for cross-checking our reader."""
    from sd_parsers import ParserManager

    info = ParserManager().parse(io.BytesIO(data))
    assert info is not None, "sd-parsers does not recognise the fixture"
    sampler = info.samplers[0]
    params = sampler.parameters
    return {"generator": info.generator.name, "prompt": str(sampler.prompts[0]) if sampler.prompts else "",
            "negative": str(sampler.negative_prompts[0]) if sampler.negative_prompts else "",
            "seed": int(params["seed"]), "steps": int(params["steps"]) if "steps" in params else None,
            "cfg": float(params["cfg_scale"]), "sampler": sampler.name}


def embedded_parameters(data: bytes) -> str | None:
    """The `parameters` text an image carries (PNG text chunk, or EXIF UserComment), as from-images finds it."""
    from sdbatch.metadata import image_texts

    return image_texts(data).texts.get("parameters")
