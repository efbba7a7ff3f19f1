"""Encoded prompts kept per loaded model and LoRA set: datasets render many seeds of one prompt."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Protocol

import torch

from sdbatch.render.text.encode import Conditioning


class TextEncoder(Protocol):
    """What the cache wraps: PromptEncoder (A1111's CLIP machinery) or PipelinePrompts (the pipeline's own)."""

    def encode(self, rows: list[dict[str, Any]]) -> list[Conditioning | Exception]: ...
    def text_key(self, row: dict[str, Any]) -> Hashable: ...  # what of a row its states depend on


class ConditioningCache:
    """An encoder's states by (scope, the row's text key): rows whose prompt was encoded before under the same
    scope (the LoRA set, which may change the text encoders) skip the encoders, and each distinct text in a
    micro-batch is encoded once. Least recently used entries go beyond `max_bytes`; failures are not kept."""

    def __init__(self, encoder: TextEncoder, max_bytes: int):
        self.encoder = encoder
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[tuple, Conditioning] = OrderedDict()
        self._sizes: dict[tuple, int] = {}
        self._bytes = 0

    def encode(self, rows: list[dict[str, Any]], scope: Hashable) -> list[Conditioning | Exception]:
        """Every row's conditioning (or why it has none), as the wrapped encoder gives it."""
        keys = [(scope, self.encoder.text_key(row)) for row in rows]
        found: dict[tuple, Conditioning | Exception] = {}
        for key in keys:
            if key in self._entries:
                self._entries.move_to_end(key)
                found[key] = self._entries[key]
        firsts: dict[tuple, int] = {}  # each text not found, at its first row
        for n, key in enumerate(keys):
            if key not in found:
                firsts.setdefault(key, n)
        self.hits += len(rows) - len(firsts)
        self.misses += len(firsts)
        if firsts:
            fresh = self.encoder.encode([rows[n] for n in firsts.values()])
            for key, state in zip(firsts, fresh):
                found[key] = state
                if not isinstance(state, Exception):
                    self._keep(key, state)
        return [found[key] for key in keys]

    def _keep(self, key: tuple, state: Conditioning) -> None:
        # A row's states may be views of the whole micro-batch's: a copy keeps only its own.
        state = dataclasses.replace(state, **{name: _own(getattr(state, name)) for name in
                                              ("embeds", "negative", "pooled", "negative_pooled")})
        size = sum(t.nbytes for t in (state.embeds, state.negative, state.pooled, state.negative_pooled)
                   if t is not None)
        if size > self.max_bytes:
            return
        self._entries[key], self._sizes[key] = state, size
        self._bytes += size
        while self._bytes > self.max_bytes:
            old, _ = self._entries.popitem(last=False)
            self._bytes -= self._sizes.pop(old)


def _own(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.clone()
