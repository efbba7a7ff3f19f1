"""A1111 and Forge image metadata: the `parameters` text embedded in PNG/JPEG/WebP, and read back into rows."""

from __future__ import annotations

import base64
import json
import re
from pathlib import PurePosixPath
from typing import Any

from PIL import Image, PngImagePlugin

from sdbatch.a1111.samplers import A1111_BY_CLASS, A1111_SCHEDULE_BY_CLASS, BY_NAME, resolve
from sdbatch.family import FAMILIES, Family, by_name

# A1111's own pattern for "Key: value, Key: "quoted, value"" pairs.
PAIR = re.compile(r'\s*([\w][\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286
# Pillow refuses EXIF blocks over 65,533 bytes; the rest of the block needs a few hundred.
EXIF_LIMIT = 65_000
SDBATCH_KEY = "sdbatch"  # our exact row (paths, weights, ids), which A1111 ignores; base64 of its JSON
EXACT_KEYS = ("id", "prompt", "negative_prompt", "model", "scheduler", "vae", "prompt_syntax", "init_image",
              "mask_image")
# Settings in the exact row only where the result row has them (with its family), so rows of runs without them
# keep their text byte for byte. Neither A1111 nor Forge writes a T5 token count: max_sequence_length lives only here.
EXACT_SETTINGS = ("true_cfg_scale", "max_sequence_length")
# Forge's field for a distilled-guidance model's guidance (FLUX.1-dev); its "CFG scale" is then true CFG.
DISTILLED = "Distilled CFG Scale"
# Columns a family may take no input from; a row read back for such a family leaves them empty.
FAMILY_COLUMNS = ("clip_skip", "true_cfg_scale", "max_sequence_length")


def format_parameters(row: dict[str, Any]) -> str:
    """The A1111 `parameters` text for a rendered row (a result row: manifest values plus provenance)."""
    loras = row.get("loras_used") or []
    tags = "".join(f" <lora:{_name(x['path'])}:{x['weight']:g}>" for x in loras)
    lines = [f"{row['prompt']}{tags}"]
    if row.get("negative_prompt"):
        lines.append(f"Negative prompt: {row['negative_prompt']}")
    named = BY_NAME.get(row.get("scheduler") or "")
    sampler = named.a1111 if named else A1111_BY_CLASS.get(row.get("scheduler_class") or "")
    # As A1111 1.10 writes it: apart from the sampler.
    schedule = (named.schedule or "Automatic") if named else A1111_SCHEDULE_BY_CLASS.get(row.get("scheduler_class"))
    family = _family(row.get("family"))
    pairs = [("Steps", row["steps"]), ("Sampler", sampler), ("Schedule type", schedule),
             *_guidance_pairs(row, family),
             ("Seed", row["seed"]), ("Size", "x".join(str(n) for n in _first_pass_size(row))),
             ("Model hash", (row.get("model_hash") or "")[:10] or None), ("Model", _name(row["model"]))]
    if row.get("vae"):
        pairs += [("VAE hash", (row.get("vae_hash") or "")[:10] or None), ("VAE", _name(row["vae"]))]
    # A1111 writes it only when it skips; a family without a CLIP-only stack never has it.
    if int(row.get("clip_skip") or 1) > 1 and (family is None or family.takes("clip_skip")):
        pairs.append(("Clip skip", int(row["clip_skip"])))
    pairs += _image_pairs(row)
    if loras:
        pairs.append(("Lora hashes", _quote(", ".join(f"{_name(x['path'])}: {x['sha256'][:12]}" for x in loras))))
    embeddings = row.get("embeddings_used") or []
    if embeddings:  # A1111's TI hash: the file's sha256, first 12 hex digits
        pairs.append(("TI hashes", _quote(", ".join(f"{x['name']}: {x['sha256'][:12]}" for x in embeddings))))
    # sdbatch pads the prompt and the negative prompt to one chunk count, as A1111 does with this option on.
    if family is None or family.prompt_weights:  # CLIP chunks; a pipeline's own encoder pads to its T5 length
        pairs.append(("Pad conds", "True"))
    pairs.append(("Version", f"sdbatch {row.get('sdbatch_version', '')}".strip()))
    pairs.append((SDBATCH_KEY, _exact_entry(row, loras)))
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs if v is not None))
    return "\n".join(lines)


# A1111's Hires upscaler names and how sdbatch renders them: "Latent" scales the latents bilinearly, as sdbatch's
# latent upscaler does; Lanczos (and "None", which A1111 then resizes with Lanczos) scale the decoded image.
FROM_A1111_UPSCALER = {"Latent": "latent", "Lanczos": "image", "None": "image"}
A1111_UPSCALER = {"latent": "Latent", "image": "Lanczos"}


def _exact_entry(row: dict[str, Any], loras: list[dict[str, Any]]) -> str:
    """The row's exact references and the settings A1111 has no field for, as base64 of their JSON: A1111 readers
    split the settings line on commas, and JSON is full of them."""
    exact = {k: row.get(k) for k in EXACT_KEYS} | {k: row[k] for k in ("family", *EXACT_SETTINGS)
                                                    if row.get(k) is not None}
    exact["loras"] = [{"path": x["path"], "weight": x["weight"]} for x in loras]
    exact["controlnets"] = [{"model": c["model"], "image": c["image"], "scale": c["scale"]}
                            for c in row.get("controlnets_used") or []]
    packed = json.dumps(exact, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(packed).decode()


def _family(name: str | None) -> Family | None:
    """The family a row names; None where it names none (rows of earlier runs) or one this version lacks."""
    return by_name(name) if name in {family.name for family in FAMILIES} else None


def _guidance_pairs(row: dict[str, Any], family: Family | None) -> list[tuple[str, str]]:
    """A1111's CFG scale (Z-Image's guidance_scale plus 1: unguided is 1, as Forge and ComfyUI write it); for a
    distilled-guidance family, as Forge writes FLUX: true CFG (1: off), then the distilled guidance."""
    if family is None or not family.distilled_guidance:
        return [("CFG scale", f"{row['guidance_scale'] + (family.cfg_offset if family else 0):g}")]
    true_cfg = row.get("true_cfg_scale")
    return [("CFG scale", f"{1 if true_cfg is None else true_cfg:g}"), (DISTILLED, f"{row['guidance_scale']:g}")]


def _first_pass_size(row: dict[str, Any]) -> tuple[int, int]:
    """A1111's Size is a hires image's first pass; the result row has the size rendered."""
    scale = float(row.get("hires_scale") or 1)
    return round(row["width"] / scale), round(row["height"] / scale)


def _image_pairs(row: dict[str, Any]) -> list[tuple[str, Any]]:
    """Denoising strength (img2img, inpaint, or the hires pass's) and the Hires fields, as A1111 writes them."""
    if row.get("hires_scale"):
        return [("Denoising strength", f"{row['hires_strength']:g}"), ("Hires upscale", f"{row['hires_scale']:g}"),
                ("Hires steps", row.get("hires_steps") or None),
                ("Hires upscaler", A1111_UPSCALER[row["hires_upscaler"]])]
    if row.get("strength") is not None:
        return [("Denoising strength", f"{row['strength']:g}")]
    return []


def _name(reference: str) -> str:
    return PurePosixPath(str(reference).rstrip("/")).name.removesuffix(".safetensors")


def _quote(text: str) -> str:
    return json.dumps(text)  # A1111 unquotes with json.loads


def parse_parameters(text: str) -> dict[str, Any]:
    """prompt, negative_prompt and every `Key: value` pair of an A1111 parameters text."""
    *head, last = text.strip().split("\n")
    if not PAIR.match(last) or len(PAIR.findall(last)) < 3:  # no settings line: all of it is the prompt
        head, last = [*head, last], ""
    prompt, negative, in_negative = [], [], False
    for line in head:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for key, value in PAIR.findall(last):
        out[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return out


def save_options(image_format: str, parameters: str) -> dict[str, Any]:
    """PIL save() arguments that embed the parameters: a PNG text chunk, or EXIF UserComment for JPEG/WebP."""
    if image_format == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
        return {"pnginfo": info}
    comment = _user_comment(parameters)
    if len(comment) > EXIF_LIMIT:  # a prompt of thousands of characters: keep what fits, never fail the image
        parameters = parameters.rpartition(f", {SDBATCH_KEY}: ")[0] or parameters
        comment = _user_comment(parameters)[:EXIF_LIMIT // 2 * 2]  # whole UTF-16 units (a pair may split)
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = comment
    return {"exif": exif.tobytes()}


def _user_comment(parameters: str) -> bytes:
    return b"UNICODE\x00" + parameters.encode("utf-16-be")


# The fields of a `parameters` text a manifest row renders, or that only describe the image (hashes, versions).
# Any other (Hires upscale, Denoising strength, Variation seed, ENSD, ADetailer ...) is
# not rendered: `manifest from-images` reports it, and refuses it with --strict.
# TI hashes are used as a check: the embeddings render through the words in the prompts (--embedding-dir).
# A1111's VAE is a file name: rendered when `manifest from-images` finds it (--vae-dir), else reported.
USED_FIELDS = frozenset({"prompt", "negative_prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed",
                         "Size", "Model", "Model hash", "VAE hash", "Lora hashes", "Version", SDBATCH_KEY,
                         "Clip skip", "TI hashes", "Pad conds", DISTILLED})


def unused_fields(fields: dict[str, Any]) -> list[str]:
    """The fields of a parsed `parameters` text that row_from_parameters does not render. A hires image's fields
    are rendered (its upscaler only if sdbatch has it); an img2img image's strength only with its init image,
    which only sdbatch's own images name."""
    used = set(USED_FIELDS) | ({"VAE"} if SDBATCH_KEY in fields else set())
    if "Hires upscale" in fields:
        used |= {"Hires upscale", "Hires steps", "Denoising strength"}
        if fields.get("Hires upscaler", "Latent") in FROM_A1111_UPSCALER:
            used.add("Hires upscaler")
    elif SDBATCH_KEY in fields and _exact(fields[SDBATCH_KEY]).get("init_image"):
        used.add("Denoising strength")
    family = _image_family(fields)
    if family is not None and not family.takes("clip_skip"):
        used.discard("Clip skip")  # Forge writes it for FLUX's CLIP-L, which sdbatch's family takes no skip for
    return sorted(key for key in fields if key not in used)


def row_from_parameters(fields: dict[str, Any]) -> dict[str, Any]:
    """A manifest row that renders the image again: exact when sdbatch wrote it, else from A1111 fields."""
    width, _, height = str(fields.get("Size", "")).partition("x")
    row: dict[str, Any] = {
        "prompt": fields["prompt"], "negative_prompt": fields.get("negative_prompt") or None,
        "seed": _int(fields.get("Seed")), "steps": _int(fields.get("Steps")),
        **_guidance(fields, _image_family(fields)), "width": _int(width), "height": _int(height),
        "scheduler": _scheduler(fields.get("Sampler"), fields.get("Schedule type")),
        "prompt_syntax": "a1111", "clip_skip": _int(fields.get("Clip skip")) or 1,
        # A label: which embedding files (by hash) the image was made with; --embedding-dir supplies them.
        "ti_hashes": fields.get("TI hashes") or None,
    }
    row.update(_hires_fields(fields))
    if SDBATCH_KEY in fields:  # our own image: take the exact references rather than display names
        exact = _exact(fields[SDBATCH_KEY])
        row.update({k: exact[k] for k in ("id", "prompt", "negative_prompt", "model", "scheduler", "loras",
                                          "controlnets")})
        # Keys that images written by earlier sdbatch versions do not carry.
        row.update({k: exact.get(k) for k in ("vae", "init_image", "mask_image")})
        row.update({k: exact[k] for k in EXACT_SETTINGS if k in exact})
        row["prompt_syntax"] = exact.get("prompt_syntax") or "plain"  # earlier versions read prompts as text
        if row["init_image"]:
            row["strength"] = _float(fields.get("Denoising strength"))
    elif fields.get("Model"):
        row["model"] = fields["Model"]
    family = _image_family(fields)
    if family is not None:  # a column the family takes no input from is left empty, not refused later
        row.update({k: None for k in FAMILY_COLUMNS if k in row and not family.takes(k)})
    return row


def _guidance(fields: dict[str, Any], family: Family | None) -> dict[str, Any]:
    """guidance_scale; from Forge's distilled-guidance images, the distilled scale, with CFG scale as true CFG; for
    a family whose pipeline counts guidance from 0 (Z-Image), A1111's scale less the offset, rounded back from the
    text's decimals."""
    if DISTILLED not in fields:
        scale, offset = _float(fields.get("CFG scale")), family.cfg_offset if family else 0
        return {"guidance_scale": round(scale - offset, 10) if scale is not None and offset else scale}
    return {"guidance_scale": _float(fields[DISTILLED]), "true_cfg_scale": _float(fields.get("CFG scale"))}


def _image_family(fields: dict[str, Any]) -> Family | None:
    """The family an image's text tells: sdbatch's own row names it; Forge writes a distilled CFG scale only for a
    distilled-guidance model. None: the text does not tell (the model's family decides when it renders)."""
    named = _family(_exact(fields[SDBATCH_KEY]).get("family")) if SDBATCH_KEY in fields else None
    if named is None and DISTILLED in fields:
        return next((family for family in FAMILIES if family.distilled_guidance), None)
    return named


def _hires_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if "Hires upscale" not in fields:
        return {}
    upscaler = str(fields.get("Hires upscaler", "Latent"))
    return {"hires_scale": _float(fields["Hires upscale"]), "hires_steps": _int(fields.get("Hires steps")) or None,
            "hires_strength": _float(fields.get("Denoising strength")),
            # An upscaler sdbatch lacks (ESRGAN, a Latent variant) is rendered with the nearest it has, and reported.
            "hires_upscaler": FROM_A1111_UPSCALER.get(upscaler, "latent" if upscaler.startswith("Latent") else "image")}


def hashes_of(text: str | None) -> list[tuple[str, str]]:
    """(name, hash) pairs of an A1111 hashes field such as TI hashes: "EasyNegative: c74b4e810b03, other: 1a2b"."""
    pairs = (part.rpartition(":") for part in (text or "").split(","))
    return [(name.strip(), digest.strip().lower()) for name, _, digest in pairs if name.strip() and digest.strip()]


def _exact(value: str) -> dict[str, Any]:
    """sdbatch's own row: base64 of JSON, or the JSON itself in images from sdbatch before it was encoded."""
    return json.loads(value if value.startswith("{") else base64.urlsafe_b64decode(value))


def _scheduler(sampler: str | None, schedule: str | None) -> str | None:
    """The sdbatch scheduler of A1111's Sampler and Schedule type; None (the model's own) if there is none."""
    if not sampler:
        return None
    try:
        return resolve(sampler, schedule)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        return float(str(value).strip())
    except ValueError:
        return None
