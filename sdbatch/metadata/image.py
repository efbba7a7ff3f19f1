"""An image file's embedded texts, wherever its format keeps them: PNG text chunks (before or after the pixels),
EXIF (UserComment, ComfyUI's Make/Model) and XMP; a file that is not a whole image says why."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
EXIF_IFD, USER_COMMENT, IMAGE_DESCRIPTION, MAKE, MODEL = 0x8769, 0x9286, 0x010E, 0x010F, 0x0110
# A compressed text chunk may not inflate past this: a decompression bomb is refused, not read.
MAX_TEXT = 16 << 20


class UnreadableImage(ValueError):
    """A file that is not a whole image; `kind` is how the summary counts it (empty, truncated, ...)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}{f': {detail}' if detail else ''}")
        self.kind = kind


@dataclass(frozen=True)
class ImageTexts:
    """What an image carries: its texts by key, its size and format."""

    texts: dict[str, str]
    width: int
    height: int
    format: str


def image_texts(data: bytes) -> ImageTexts:
    """The texts embedded in an image file; UnreadableImage for an empty, truncated or damaged file, or one that
    is not an image."""
    if not data:
        raise UnreadableImage("empty")
    png = data.startswith(PNG_SIGNATURE)
    png_texts = _png_texts(data) if png else {}  # first: a truncated or damaged PNG says so, not "not an image"
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, kind = image.width, image.height, image.format or ""
            texts = png_texts if png else _exif_texts(image)
    except Image.DecompressionBombError as exc:
        raise UnreadableImage("too large", str(exc)) from exc
    except (OSError, ValueError, SyntaxError, struct.error) as exc:  # what Pillow raises for files it cannot read
        raise UnreadableImage("not an image", f"{type(exc).__name__}: {exc}") from exc
    return ImageTexts(texts, width, height, kind)


def _png_texts(data: bytes) -> dict[str, str]:
    """Every text chunk of a PNG, wherever it stands; a file that ends before IEND is truncated."""
    texts, at = {}, len(PNG_SIGNATURE)
    while True:
        if at + 8 > len(data):
            raise UnreadableImage("truncated", f"ends at byte {len(data)}, inside a chunk header")
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body, end = data[at + 8:at + 8 + length], at + 12 + length
        if end > len(data):
            raise UnreadableImage("truncated", f"ends at byte {len(data)}, inside a {kind.decode('latin-1')} chunk")
        if zlib.crc32(kind + body) != struct.unpack(">I", data[end - 4:end])[0]:
            raise UnreadableImage("damaged", f"the {kind.decode('latin-1')} chunk at byte {at} fails its checksum")
        if kind in TEXT_CHUNKS:
            key, text = _text_chunk(kind, body)
            texts.setdefault(key, text)
        if kind == b"IEND":
            return texts
        at = end


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, str]:
    key, _, rest = body.partition(b"\x00")
    if kind == b"tEXt":
        return key.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    compressed, rest = rest[0], rest[2:]  # iTXt: flag, method, language \0 translated key \0 text (UTF-8)
    text = rest.split(b"\x00", 2)[-1]
    return key.decode("latin-1"), (_inflate(text) if compressed else text).decode("utf-8", errors="replace")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT)
    if inflater.unconsumed_tail:
        raise UnreadableImage("too large", f"a text chunk inflates past {MAX_TEXT} bytes")
    return out


def _exif_texts(image: Image.Image) -> dict[str, str]:
    """JPEG and WebP: A1111's UserComment, ComfyUI's "Prompt:"/"Workflow:" in Make/Model, a description, XMP."""
    texts: dict[str, str] = {k: v for k, v in image.info.items() if isinstance(v, str)}
    exif = image.getexif()
    comment = _user_comment(exif.get_ifd(EXIF_IFD).get(USER_COMMENT))
    if comment:
        texts["parameters"] = comment
    for tag in (MAKE, MODEL, IMAGE_DESCRIPTION):
        value = exif.get(tag)
        if isinstance(value, str) and ":" in value:
            key, _, text = value.partition(":")
            if key.lower() in ("prompt", "workflow"):  # ComfyUI's WebP: "Prompt:{...}", "Workflow:{...}"
                texts[key.lower()] = text
    xmp = image.info.get("xmp")
    if isinstance(xmp, bytes | str) and "xmp" not in texts:
        texts["xmp"] = xmp.decode("utf-8", errors="replace") if isinstance(xmp, bytes) else xmp
    return texts


def _user_comment(raw) -> str | None:
    if isinstance(raw, str):
        return raw or None
    if not raw:
        return None
    if raw.startswith(b"UNICODE\x00"):
        return raw[8:].decode("utf-16-be", errors="replace")
    if raw[:8].startswith(b"ASCII"):
        return raw[8:].decode("utf-8", errors="replace")
    return None
