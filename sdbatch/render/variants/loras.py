"""LoRAs on a warm pipeline: files hashed once, parsed state dicts in a byte-bounded CPU LRU, K adapters resident."""

from __future__ import annotations

import collections
import hashlib
import json
import pathlib
from dataclasses import dataclass
from typing import Any

import torch

from sdbatch.errors import VariantError
from sdbatch.family import is_kohya_lora, lora_families
from sdbatch.logs import quieted
from sdbatch.render.families import for_model, for_pipeline_class
from sdbatch.render.families.protocol import RenderFamily
from sdbatch.render.variants.fetch import Fetcher, labelled
from sdbatch.render.variants.resolve import resolve_lora_file


@dataclass(frozen=True)
class LoraState:
    """A parsed LoRA file, in diffusers' key layout (kohya files already converted)."""

    sha256: str
    state_dict: dict[str, torch.Tensor]
    network_alphas: dict[str, float] | None  # kohya's per-module .alpha
    metadata: dict[str, Any] | None  # diffusers' LoraConfig per part (holds lora_alpha)
    nbytes: int
    family: str = ""  # the model family whose loader converted it: another family converts the same file otherwise


def adapter_name(sha256: str) -> str:
    # peft refuses "." in adapter names; the content hash makes equal files share one adapter.
    return f"lora_{sha256[:20]}"


class StateDictCache:
    """Parsed LoRAs in host memory, least recently used dropped first once `budget` bytes are exceeded."""

    def __init__(self, budget: int):
        self.budget = budget
        self._states: collections.OrderedDict[tuple[str, str], LoraState] = collections.OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(state.nbytes for state in self._states.values())

    def __len__(self) -> int:
        return len(self._states)

    def get(self, sha256: str, family: str = "") -> LoraState | None:
        key = (sha256, family)
        if key in self._states:
            self._states.move_to_end(key)
        return self._states.get(key)

    def put(self, state: LoraState) -> None:
        if state.nbytes > self.budget:
            return  # larger than the whole budget: loaded, but read again when next needed
        self._states[(state.sha256, state.family)] = state
        while self.nbytes > self.budget:
            self._states.popitem(last=False)


def parse_lora(data: bytes, sha256: str, pipeline_class, family: RenderFamily | None = None) -> LoraState:
    """Tensors and adapter metadata from safetensors bytes, as the model's family loads them (kohya / A1111 keys
    converted by diffusers); VariantError for a file with layers of a part the family's models lack."""
    from safetensors.torch import load

    try:
        tensors = load(data)
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    except Exception as exc:
        raise VariantError(f"not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    raw = (header.get("__metadata__") or {}).get("lora_adapter_metadata")
    family = family or for_pipeline_class(pipeline_class.__name__)
    made_for = lora_families(set(tensors))
    if made_for and family.descriptor not in made_for:  # the same rule as validation's, for remote files too
        raise VariantError(f"is a LoRA for {' or '.join(f.title for f in made_for)} models (its tensor names), not "
                           f"{family.descriptor.title} (a LoRA for another model family?)")
    if not family.descriptor.kohya_loras and is_kohya_lora(set(tensors)):
        raise VariantError(f"is in kohya/A1111 format, which diffusers does not convert for {family.descriptor.title} "
                           "models; use a diffusers/PEFT-format file of this LoRA")
    try:
        state, alphas = family.lora_state_dict(pipeline_class, tensors)
    except Exception as exc:
        raise VariantError(f"not a LoRA diffusers can convert ({type(exc).__name__}: {exc})") from exc
    if not state or not all("lora" in key for key in state):
        raise VariantError("not a LoRA file (its tensor names do not name LoRA layers)")
    # A part no loader of this family reads (an SD UNet's layers on FLUX) would be dropped without a word.
    foreign = {key.split(".", 1)[0] for key in state} - {family.denoiser_lora_prefix}
    foreign = sorted(part for part in foreign if not part.startswith("text_encoder"))
    if foreign:
        raise VariantError(f"has layers for {', '.join(foreign)}, which {family.descriptor.title} models do not have "
                           "(a LoRA for another model family?)")
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    return LoraState(sha256, state, alphas or None, json.loads(raw) if raw else None, nbytes, family.descriptor.name)


def text_encoder_reports_off():
    """transformers logs a LOAD REPORT table calling a LoRA's text-encoder weights MISSING while diffusers
    loads them (they are loaded: test_variants compares them with the file); a table per load fills logs."""
    return quieted("transformers.integrations.peft")


class LoraAdapters:
    """The adapters resident in one pipeline: at most `max_resident`, the least recently used deleted first."""

    def __init__(self, pipe, cache: StateDictCache, fetcher: Fetcher, max_resident: int,
                 family: RenderFamily | None = None):
        self.pipe = pipe
        self.family = family or for_model(pipe)
        self.cache = cache
        self.fetcher = fetcher
        self.max_resident = max_resident
        self.loads = 0  # files loaded into the pipeline; activating a resident adapter is not a load
        self._resident: collections.OrderedDict[str, str] = collections.OrderedDict()  # name -> sha256
        self._files: dict[str, pathlib.Path] = {}  # reference -> local file
        self._hashes: dict[pathlib.Path, tuple[tuple[int, int], str]] = {}  # file -> ((size, mtime), sha256)

    def resident(self) -> list[str]:
        """Content hashes of the resident adapters, least recently used first."""
        return list(self._resident.values())

    def activate(self, loras: list[dict]) -> list[dict]:
        """Make exactly these LoRAs (with their weights) active; returns their provenance."""
        if not loras:
            if self._resident:
                self.pipe.disable_lora()  # base weights only: the image equals the base model's exactly
            return []
        found = [self._lookup(str(lora["path"])) for lora in loras]
        names = [adapter_name(sha) for sha, _ in found]
        if len(set(names)) < len(names):
            raise VariantError("the same LoRA file is listed twice in one row; list it once with the summed weight")
        if len(names) > self.max_resident:
            raise VariantError(f"the row uses {len(names)} LoRAs but at most {self.max_resident} can be resident; "
                               "raise max_loras_resident")
        for lora, name, (_sha, state) in zip(loras, names, found):
            if name in self._resident:
                self._resident.move_to_end(name)
                continue
            self._make_room(keep=names)
            with labelled(f"LoRA {lora['path']}"):
                self._load(name, state)
        self.pipe.enable_lora()
        self.pipe.set_adapters(names, [float(lora["weight"]) for lora in loras])
        return [{"path": str(lora["path"]), "sha256": sha, "weight": float(lora["weight"])}
                for lora, (sha, _) in zip(loras, found)]

    def _lookup(self, path: str) -> tuple[str, LoraState | None]:
        """(sha256, state to load); state is None when the adapter is already resident."""
        with labelled(f"LoRA {path}"):
            if path not in self._files:
                self._files[path] = resolve_lora_file(path, self.fetcher)
            file = self._files[path]
            known = self._known_sha(file)
            if known and adapter_name(known) in self._resident:
                return known, None
            state = self.cache.get(known, self.family.descriptor.name) if known else None
            return (known, state) if state else self._read(file)

    def _known_sha(self, file: pathlib.Path) -> str | None:
        stat = file.stat()
        known = self._hashes.get(file)
        return known[1] if known and known[0] == (stat.st_size, stat.st_mtime_ns) else None

    def _read(self, file: pathlib.Path) -> tuple[str, LoraState | None]:
        stat = file.stat()
        data = file.read_bytes()  # hashed and parsed from the same bytes: the identity is what was loaded
        sha = hashlib.sha256(data).hexdigest()
        self._hashes[file] = ((stat.st_size, stat.st_mtime_ns), sha)
        if adapter_name(sha) in self._resident:  # same content under another path
            return sha, None
        state = self.cache.get(sha, self.family.descriptor.name) or parse_lora(data, sha, type(self.pipe), self.family)
        self.cache.put(state)
        return sha, state

    def _make_room(self, keep: list[str]) -> None:
        while len(self._resident) >= self.max_resident:
            victim = next(name for name in self._resident if name not in keep)
            self.pipe.delete_adapters([victim])
            del self._resident[victim]

    def _load(self, name: str, state: LoraState) -> None:
        pipe = self.pipe
        # Not load_lora_weights(dict): with a dict it drops the adapter metadata (lora_alpha), which
        # lives only in the file header, and the LoRA would act at the wrong strength. These two calls
        # are what it runs, with the metadata passed on. Copies: the cached dict must stay whole.
        common = {"network_alphas": state.network_alphas, "metadata": state.metadata, "adapter_name": name,
                  "_pipeline": pipe}
        try:
            self.family.load_denoiser_lora(pipe, dict(state.state_dict), **common)
            for prefix in self.family.lora_text_encoders(pipe):  # a LoRA's keys for each carry its name as prefix
                with text_encoder_reports_off():
                    pipe.load_lora_into_text_encoder(dict(state.state_dict), text_encoder=getattr(pipe, prefix),
                                                     prefix=prefix, lora_scale=pipe.lora_scale, **common)
        except Exception as exc:
            self._discard(name)
            raise VariantError(f"does not fit this {self.family.words(pipe)} model (a LoRA for another model "
                               f"family?) ({type(exc).__name__}: {exc})") from exc
        if not any(name in names for names in pipe.get_list_adapters().values()):
            raise VariantError(f"matches no layer of this {self.family.words(pipe)} model (a LoRA for another "
                               "model family?)")
        self._resident[name] = state.sha256
        self.loads += 1

    def _discard(self, name: str) -> None:
        """Remove what a failed load left behind, so a half-loaded adapter never takes part."""
        for names in self.pipe.get_list_adapters().values():
            if name in names:
                self.pipe.delete_adapters([name])
                return
