"""Prompts of families whose pipeline encodes them itself (CLIP and T5, or Qwen3): the A1111 syntax read, the text
passed plain (weights are not applied; docs/PROMPTS.md), rows of one sequence length encoded in one call."""

from __future__ import annotations

from typing import Any

from sdbatch.a1111.syntax import parse
from sdbatch.errors import InputUnavailable
from sdbatch.render.text.encode import Conditioning


def plain_text(prompt: str | None, syntax: str | None) -> str:
    """The prompt's words as the syntax reads them: brackets, weights and escapes gone, a BREAK a space."""
    if syntax == "plain":
        return prompt or ""
    return "".join(" " if part.weight is None else part.text for part in parse(prompt or "", syntax or "a1111"))


class PipelinePrompts:
    """The text side of a pipeline whose family has no ClipText: rows' prompts to Conditioning."""

    def __init__(self, pipeline: Any, family: Any):
        self.pipeline = pipeline
        self.family = family

    def encode(self, rows: list[dict[str, Any]]) -> list[Conditioning | Exception]:
        """Every row's conditioning (or why it has none); a batch that fails is retried row by row, so only
        the row that cannot go through fails."""
        try:
            return self._encoded(rows)
        except InputUnavailable:
            raise
        except Exception as exc:
            if len(rows) == 1:
                return [exc]
        return [state for row in rows for state in self.encode([row])]

    def _encoded(self, rows: list[dict[str, Any]]) -> list[Conditioning]:
        out: dict[int, Conditioning] = {}
        for group in self._groups(rows).values():
            picked = [rows[n] for n in group]
            length = self.family.recorded(picked[0])["max_sequence_length"]
            texts = [plain_text(row.get("prompt"), row.get("prompt_syntax")) for row in picked]
            negatives = None
            if self.family.needs_negative(picked[0]):
                negatives = [plain_text(row.get("negative_prompt"), row.get("prompt_syntax")) for row in picked]
            embeds, pooled, negative, negative_pooled = self.family.encode_prompts(self.pipeline, texts, negatives,
                                                                                   length)
            for at, n in enumerate(group):
                out[n] = Conditioning(_row(embeds, at), _row(negative, at), _row(pooled, at),
                                      _row(negative_pooled, at), (), ragged=isinstance(embeds, list))
        return [out[n] for n in range(len(rows))]

    def text_key(self, row: dict[str, Any]) -> tuple:
        """What of a row its states depend on, beside the model and its LoRAs (render/text/cache.py)."""
        syntax = row.get("prompt_syntax")
        negative = plain_text(row.get("negative_prompt"), syntax) if self.family.needs_negative(row) else None
        return (plain_text(row.get("prompt"), syntax), negative,
                self.family.recorded(row)["max_sequence_length"])

    def _groups(self, rows: list[dict[str, Any]]) -> dict[tuple, list[int]]:
        """Rows that one encoder call takes: the same T5 length, and the same need of a negative prompt."""
        groups: dict[tuple, list[int]] = {}
        for n, row in enumerate(rows):
            key = (self.family.recorded(row)["max_sequence_length"], self.family.needs_negative(row))
            groups.setdefault(key, []).append(n)
        return groups


def _row(batch, at: int):
    """Row `at` of a batch's states: of one padded tensor, or of a list of each prompt's own length (Z-Image)."""
    if batch is None:
        return None
    return batch[at].unsqueeze(0) if isinstance(batch, list) else batch[at:at + 1]
