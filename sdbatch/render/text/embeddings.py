"""Textual inversion embeddings: files named by the words prompts use, read once per actor, matched by tokens."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import torch

from sdbatch.a1111.parameters import hashes_of
from sdbatch.errors import VariantError, reading
from sdbatch.settings import S3Settings

SUFFIXES = (".safetensors", ".pt", ".bin")
# SDXL embeddings hold one set of vectors per text encoder, under these names (A1111, ComfyUI, kohya).
SDXL_KEYS = ("clip_l", "clip_g")


@dataclass(frozen=True)
class Embedding:
    name: str
    sha256: str
    vectors: dict[str, torch.Tensor]  # per encoder ("clip_l", "clip_g"), or {"": ...} for one-encoder files

    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def for_encoder(self, index: int, encoders: int, width: int) -> torch.Tensor:
        """This embedding's vectors for the model's `index`th of `encoders` text encoders, `width` wide."""
        if encoders == 1:
            if "" not in self.vectors:
                raise VariantError(f"embedding {self.name} is an SDXL embedding ({', '.join(self.vectors)}); this "
                                   "model has one text encoder: use an embedding made for its family")
            vectors = self.vectors[""]
        else:
            key = SDXL_KEYS[index] if index < len(SDXL_KEYS) else None
            if key not in self.vectors:
                raise VariantError(f"embedding {self.name} is for a model with one text encoder (width "
                                   f"{self.width()}, SD1.x/SD2.x); an SDXL model needs one with clip_l and "
                                   "clip_g vectors")
            vectors = self.vectors[key]
        if vectors.shape[-1] != width:
            raise VariantError(f"embedding {self.name} has vectors of width {vectors.shape[-1]}, but this model's text "
                               f"encoder is {width} wide (SD1.x: 768, SD2.x: 1024, SDXL: 768 + 1280); use an "
                               "embedding made for this model's family")
        return vectors

    def width(self) -> int:
        return next(iter(self.vectors.values())).shape[-1]


def read_embedding(name: str, data: bytes, suffix: str) -> Embedding:
    """An embedding from an A1111 .pt/.safetensors, a diffusers learned_embeds file, or an SDXL file."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        raw = _load(data, suffix)
        vectors = _vectors(raw)
    except VariantError:
        raise
    except Exception as exc:
        raise VariantError(f"embedding {name} cannot be read as a textual inversion file: {type(exc).__name__}: "
                           f"{exc}") from exc
    return Embedding(name, digest, {k: v.detach().to(torch.float32).reshape(-1, v.shape[-1]).clone()
                                    for k, v in vectors.items()})


def _load(data: bytes, suffix: str) -> dict:
    if suffix == ".safetensors":
        from safetensors.torch import load

        return load(data)
    # weights_only: a .pt file cannot run code when read; A1111 embeddings hold only tensors and plain values.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _vectors(raw: dict) -> dict[str, torch.Tensor]:
    if all(key in raw for key in SDXL_KEYS):
        return {key: raw[key] for key in SDXL_KEYS}
    if "string_to_param" in raw:  # A1111 .pt: {"string_to_param": {"*": tensor}, "name": ..., "step": ...}
        return {"": next(iter(raw["string_to_param"].values()))}
    if "emb_params" in raw:  # A1111 .safetensors
        return {"": raw["emb_params"]}
    tensors = [v for v in raw.values() if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:  # diffusers learned_embeds: {token: tensor}
        return {"": tensors[0]}
    raise VariantError(f"no embedding vectors found (keys: {', '.join(sorted(map(str, raw))[:8])}); expected "
                       "A1111's string_to_param / emb_params, SDXL's clip_l + clip_g, or one token's tensor")


class EmbeddingLibrary:
    """The embeddings of a folder (local or s3://): names from the file names, each file read on first use."""

    def __init__(self, directory: str | None, s3: S3Settings | None = None):
        self.directory = directory
        self._s3 = s3
        self._files: dict[str, str] | None = None  # name -> key in the folder, listed on first use
        self._loaded: dict[str, Embedding] = {}
        # Per tokenizer, by id; the tokenizer is kept with its matcher so that its id is not reused.
        self._matchers: dict[int, tuple[object, dict[int, list[tuple[tuple[int, ...], str]]]]] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def files(self) -> dict[str, str]:
        if self._files is None:
            self._files = self._list() if self.directory else {}
        return self._files

    def _store(self):
        from sdbatch.store import open_store

        return open_store(self.directory, self._s3)

    def _list(self) -> dict[str, str]:
        with reading(VariantError, f"embedding folder {self.directory} cannot be listed"):
            keys = self._store().list()
        # Subfolders too, as A1111 walks them (names are file names; hidden files and folders skipped). A name
        # found twice: .safetensors before .pt, then the shallower file, so the choice never depends on listing.
        usable = [PurePosixPath(k) for k in keys if PurePosixPath(k).suffix in SUFFIXES
                  and not any(part.startswith(".") for part in PurePosixPath(k).parts)]
        files: dict[str, str] = {}
        for path in sorted(usable, key=lambda p: (SUFFIXES.index(p.suffix), len(p.parts), str(p))):
            files.setdefault(path.stem, str(path))
        return files

    def get(self, name: str) -> Embedding:
        with self._lock:
            if name not in self._loaded:
                key = self.files()[name]
                with reading(VariantError, f"embedding {name} ({self.directory}/{key}) cannot be read"):
                    data = self._store().get(key)
                self._loaded[name] = read_embedding(name, data, PurePosixPath(key).suffix)
                self.loads += 1
            return self._loaded[name]

    def check_pinned(self, ti_hashes: str | None) -> None:
        """A row read from an A1111 image names the embeddings it was made with: each must be here, the same file."""
        for name, expected in hashes_of(ti_hashes):
            if name not in self.files():
                raise VariantError(f"embedding {name} (column ti_hashes) is not in the embedding folder "
                                   f"{self.directory}; add its file ({name}.safetensors or .pt) there")
            actual = self.get(name).sha256
            if not actual.startswith(expected):
                raise VariantError(f"embedding {name} in {self.directory} has hash {actual[:12]}, but the row was "
                                   f"made with {expected} (column ti_hashes); put that file there")

    def finder(self, tokenizer):
        """find(tokens, position) for chunks.chunked: the longest embedding name whose tokens start there."""
        names = self._matcher(tokenizer)

        def find(tokens: Sequence[int], position: int):
            for ids, name in names.get(tokens[position], ()):
                if tuple(tokens[position:position + len(ids)]) == ids:
                    return name, len(ids), self.get(name).count()
            return None

        return find

    def _matcher(self, tokenizer) -> dict[int, list[tuple[tuple[int, ...], str]]]:
        key = id(tokenizer)
        if key not in self._matchers:
            by_first: dict[int, list[tuple[tuple[int, ...], str]]] = {}
            for name in self.files():
                ids = tuple(tokenizer(name, add_special_tokens=False, verbose=False).input_ids)
                if ids:
                    by_first.setdefault(ids[0], []).append((ids, name))
            for entries in by_first.values():
                entries.sort(key=lambda entry: -len(entry[0]))  # the longest name wins, as in A1111
            self._matchers[key] = (tokenizer, by_first)
        return self._matchers[key][1]
