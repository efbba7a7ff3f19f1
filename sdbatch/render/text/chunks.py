"""A1111's long prompts: weighted fragments to 75-token chunks (BREAK, comma backtrack, embeddings); no torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sdbatch.a1111.syntax import BREAK, Fragment

CHUNK_TOKENS = 75  # CLIP's 77 positions less the start and end tokens that frame every chunk
# A chunk that fills up within this many tokens of a comma is cut after the comma, so a phrase is not split
# across two encoder passes; A1111's default (its comma_padding_backtrack setting).
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    """Up to 75 tokens and their weights; an embedding's vectors take placeholder slots from `fixes`."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)  # (first slot, embedding name)


# The embedding whose name's tokens start at a position, as (name, its name's token count, its vector count).
FindEmbedding = Callable[[Sequence[int], int], "tuple[str, int, int] | None"]


def no_embeddings(_tokens: Sequence[int], _position: int) -> None:
    return None


def chunked(fragments: list[Fragment], tokenize: Callable[[str], list[int]], comma: int | None,
            find: FindEmbedding = no_embeddings) -> list[Chunk]:
    """The prompt as chunks of at most 75 tokens, cut as A1111 cuts them; always at least one chunk."""
    cutter = _Cutter(comma)
    for fragment in fragments:
        if fragment.weight is BREAK:
            cutter.close()
            continue
        tokens = tokenize(fragment.text)
        position = 0
        while position < len(tokens):
            position = cutter.take(tokens, position, fragment.weight, find)
    if cutter.current.tokens or not cutter.chunks:
        cutter.close()
    return cutter.chunks


class _Cutter:
    def __init__(self, comma: int | None):
        self.comma = comma
        self.chunks: list[Chunk] = []
        self.current = Chunk()
        self.last_comma = -1  # slot in `current` of its last comma

    def close(self) -> None:
        self.chunks.append(self.current)
        self.current, self.last_comma = Chunk(), -1

    def take(self, tokens: Sequence[int], position: int, weight: float, find: FindEmbedding) -> int:
        """Put the token (or embedding) at `position` into the current chunk; returns the next position."""
        token, chunk = tokens[position], self.current
        if token == self.comma:
            self.last_comma = len(chunk.tokens)
        elif len(chunk.tokens) == CHUNK_TOKENS and self.last_comma != -1 \
                and len(chunk.tokens) - self.last_comma <= COMMA_BACKTRACK:
            self._cut_after_comma()
        if len(self.current.tokens) == CHUNK_TOKENS:
            self.close()
        found = find(tokens, position)
        if found is None:
            self.current.tokens.append(token)
            self.current.weights.append(weight)
            return position + 1
        name, name_tokens, vectors = found
        if vectors > CHUNK_TOKENS:
            raise ValueError(f"embedding {name} has {vectors} vectors; at most {CHUNK_TOKENS} fit in a prompt chunk")
        if len(self.current.tokens) + vectors > CHUNK_TOKENS:
            self.close()
        self.current.fixes.append((len(self.current.tokens), name))
        self.current.tokens += [0] * vectors  # placeholders: the embedding's vectors replace their embeddings
        self.current.weights += [weight] * vectors
        return position + name_tokens

    def _cut_after_comma(self) -> None:
        full, cut = self.current, self.last_comma + 1
        moved = Chunk(full.tokens[cut:], full.weights[cut:], [(slot - cut, n) for slot, n in full.fixes if slot >= cut])
        full.tokens, full.weights = full.tokens[:cut], full.weights[:cut]
        full.fixes = [(slot, n) for slot, n in full.fixes if slot < cut]
        self.close()
        self.current = moved


def framed(chunk: Chunk, start: int, end: int, pad: int) -> tuple[list[int], list[float]]:
    """The chunk's 77 token ids and weights: start, tokens, end, then padding (as A1111 and diffusers do)."""
    fill = CHUNK_TOKENS - len(chunk.tokens)
    return [start, *chunk.tokens, end, *[pad] * fill], [1.0, *chunk.weights, 1.0, *[1.0] * fill]
