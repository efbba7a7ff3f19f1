"""Prompts to text-encoder states as A1111 makes them: weights, 75-token chunks, clip skip, embeddings, per family."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from sdbatch.a1111.syntax import parse
from sdbatch.errors import InputUnavailable
from sdbatch.render.families import for_model
from sdbatch.render.families.protocol import RenderFamily
from sdbatch.render.text.chunks import Chunk, chunked, framed
from sdbatch.render.text.embeddings import EmbeddingLibrary

# Fragments whose token ids are remembered per pipeline: far more than a micro-batch has, little memory.
TOKEN_CACHE = 16384


@dataclass(frozen=True)
class Conditioning:
    """One row's pipeline inputs: prompt and negative states padded to one length, and pooled vectors where the
    family takes them."""

    embeds: torch.Tensor  # [1, 77 * chunks, width]; a ragged family's: [1, the prompt's own tokens, width]
    negative: torch.Tensor
    pooled: torch.Tensor | None  # [1, projection] where the family conditions on it (ClipText.pooled), else None
    negative_pooled: torch.Tensor | None
    embeddings_used: tuple[tuple[str, str], ...]  # (name, sha256) in order of first use
    # The family's pipeline takes each row's states at their own length (a list: Z-Image), so any lengths share a call.
    ragged: bool = False

    @property
    def length(self) -> int:
        """Rows share a pipeline call only if their states have the same length (chunk count); ragged states all
        count as one length."""
        return 0 if self.ragged else int(self.embeds.shape[1])


@dataclass(frozen=True)
class _Encoder:
    tokenizer: Any
    model: Any
    index: int  # its slot in the family's ClipText.encoders: which vectors of an embedding file it takes
    penultimate: bool  # the penultimate layer, unnormalized (ClipText.penultimate); else the last, normalized
    comma: int | None  # the ", " token chunks are cut after (A1111's backtrack); None if the vocabulary lacks it

    def layer_count(self) -> int:
        return int(self.model.config.num_hidden_layers)


class PromptEncoder:
    """The text side of one pipeline: rows' prompts to Conditioning, each row encoded as if it were alone."""

    def __init__(self, pipeline: Any, embeddings: EmbeddingLibrary, family: RenderFamily | None = None):
        self.embeddings = embeddings
        self.text = (family or for_model(pipeline)).text(pipeline)
        self.encoders = [_Encoder(pair[0], pair[1], i, self.text.penultimate, _comma(pair[0]))
                         for i, pair in enumerate(self.text.encoders) if pair is not None]
        self._tokens: dict[tuple[int, str], list[int]] = {}

    def encode(self, rows: list[dict[str, Any]]) -> list[Conditioning | Exception]:
        """Every row's conditioning (or why it has none), all rows' chunks through each encoder in one call."""
        plans: list[_RowPlan | Exception] = []
        for row in rows:
            try:
                plans.append(self._plan(row))
            except InputUnavailable:
                raise  # may pass: the shard is retried rather than the row failed for good
            except Exception as exc:  # an unreadable embedding, a clip_skip the model lacks: that row fails
                plans.append(exc)
        good = [plan for plan in plans if isinstance(plan, _RowPlan)]
        if not good:
            return plans
        try:
            return self._encoded(plans, good)
        except InputUnavailable:
            raise
        except Exception as exc:
            if len(rows) == 1:
                return [exc]
        return [state for row in rows for state in self.encode([row])]  # so only a row that cannot go through fails

    def _encoded(self, plans: list[_RowPlan | Exception], good: list[_RowPlan]) -> list[Conditioning | Exception]:
        outputs = [self._run(encoder, [(chunk, plan.clip_skip) for plan in good for side in plan.sides[encoder.index]
                                       for chunk in side]) for encoder in self.encoders]
        out, at = [], 0
        for plan in plans:
            if not isinstance(plan, _RowPlan):
                out.append(plan)
                continue
            sides = []
            for side in (0, 1):
                first, stop = at + side * plan.count, at + (side + 1) * plan.count
                states = torch.cat([hidden[first:stop].reshape(1, -1, hidden.shape[-1]) for hidden, _ in outputs], -1)
                pooled = outputs[-1][1]
                sides.append((states, pooled[first:first + 1] if self.text.pooled else None))
            out.append(self._conditioning(plan, sides))
            at += 2 * plan.count
        return out

    def _conditioning(self, plan: _RowPlan, sides: list[tuple[torch.Tensor, torch.Tensor | None]]) -> Conditioning:
        (embeds, pooled), (negative, negative_pooled) = sides
        if plan.zero_negative:
            negative, negative_pooled = torch.zeros_like(negative), torch.zeros_like(negative_pooled)
        used = tuple((name, self.embeddings.get(name).sha256) for name in dict.fromkeys(plan.used))
        return Conditioning(embeds, negative, pooled, negative_pooled, used)

    def text_key(self, row: dict[str, Any]) -> tuple:
        """What of a row its states depend on, beside the model and its LoRAs (render/text/cache.py); the
        embedding folder is the run's, one for the Renderer's life."""
        return (row.get("prompt") or "", row.get("negative_prompt") or "", row.get("prompt_syntax") or "a1111",
                int(row.get("clip_skip") or 1), row.get("ti_hashes"))

    def _plan(self, row: dict[str, Any]) -> _RowPlan:
        """Per encoder: the prompt's and the negative prompt's chunks, padded to one count with empty chunks."""
        self.embeddings.check_pinned(row.get("ti_hashes"))
        syntax = row.get("prompt_syntax") or "a1111"
        texts = [parse(row.get("prompt") or "", syntax), parse(row.get("negative_prompt") or "", syntax)]
        sides, counts = {}, set()
        for encoder in self.encoders:
            cut = [chunked(fragments, partial(self._token_ids, encoder.index), encoder.comma,
                           self.embeddings.finder(encoder.tokenizer)) for fragments in texts]
            count = max(len(side) for side in cut)
            sides[encoder.index] = tuple(side + [Chunk() for _ in range(count - len(side))] for side in cut)
            counts.add(count)
        if len(counts) > 1:
            raise ValueError("the model's two tokenizers cut this prompt into different chunk counts; shorten it")
        used = [name for side in sides[self.encoders[0].index] for chunk in side for _, name in chunk.fixes]
        for name in dict.fromkeys(used):  # one of another family fails this row here, not the whole batch later
            for encoder in self.encoders:
                self._vectors(encoder, name)
        # A1111 zeroes an empty negative prompt's states and pooled vector where the family does (as diffusers does
        # for a missing one); "plain" rows keep diffusers' reading of the "" they pass: encoded.
        zero_negative = self.text.zero_negative and syntax != "plain" and not row.get("negative_prompt")
        return _RowPlan(sides, counts.pop(), self._clip_skip(row), used, zero_negative)

    def _token_ids(self, index: int, text: str) -> list[int]:
        """A fragment's token ids (chunks get their own start and end), remembered: datasets repeat fragments
        (a shared negative prompt, a style suffix), and CLIP's tokenizer is Python."""
        key = (index, text)
        if key not in self._tokens:
            if len(self._tokens) >= TOKEN_CACHE:
                self._tokens.clear()
            tokenizer = next(e.tokenizer for e in self.encoders if e.index == index)
            self._tokens[key] = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
        return self._tokens[key]

    def _clip_skip(self, row: dict) -> int:
        skip, encoder = int(row.get("clip_skip") or 1), self.encoders[0]
        if not 1 <= skip <= encoder.layer_count():
            raise ValueError(f"clip_skip {skip} is more than this model's text encoder has layers "
                             f"({encoder.layer_count()}); use a smaller clip_skip")
        return skip

    def _run(self, encoder: _Encoder, chunks: list[tuple[Chunk, int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chunks' weighted states [chunks, 77, width] at each one's clip skip, and pooled vectors if any."""
        tok, model = encoder.tokenizer, encoder.model
        framed_chunks = [framed(chunk, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) for chunk, _ in chunks]
        device = model.device
        ids = torch.tensor([ids for ids, _ in framed_chunks], dtype=torch.long, device=device)
        with self._substituted(encoder, [chunk for chunk, _ in chunks]):
            # Every layer's states only when a layer before the last is read: collecting them costs time.
            output = model(ids, output_hidden_states=encoder.penultimate or any(skip > 1 for _, skip in chunks))
        states = []
        for n, ((_, weights), (_, skip)) in enumerate(zip(framed_chunks, chunks)):
            states.append(_weighted(_layer(model, output, n, skip, encoder.penultimate), weights))
        pooled = getattr(output, "text_embeds", None)
        return torch.stack(states), pooled

    def _vectors(self, encoder: _Encoder, name: str) -> torch.Tensor:
        width = encoder.model.get_input_embeddings().embedding_dim
        return self.embeddings.get(name).for_encoder(encoder.index, len(self.text.encoders), width)

    @contextlib.contextmanager
    def _substituted(self, encoder: _Encoder, chunks: list[Chunk]):
        """Embeddings' vectors in place of their placeholder tokens, for one forward of the encoder."""
        fixes = [(n, slot + 1, name) for n, chunk in enumerate(chunks) for slot, name in chunk.fixes]
        if not fixes:
            yield
            return
        table = encoder.model.get_input_embeddings()
        vectors = {name: self._vectors(encoder, name) for _, _, name in fixes}

        def substitute(_module, _inputs, output):
            output = output.clone()
            for n, slot, name in fixes:
                value = vectors[name]
                output[n, slot:slot + value.shape[0]] = value.to(output.device, output.dtype)
            return output

        handle = table.register_forward_hook(substitute)
        try:
            yield
        finally:
            handle.remove()


@dataclass(frozen=True)
class _RowPlan:
    sides: dict[int, tuple[list[Chunk], list[Chunk]]]  # per encoder: the prompt's and the negative's chunks
    count: int  # chunks per side
    clip_skip: int
    used: list[str]  # embedding names, in order of use
    zero_negative: bool  # negative states and pooled vector are zeros (the family does so, A1111, none given)


def _comma(tokenizer: Any) -> int | None:
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return None if comma == tokenizer.unk_token_id else comma


def _layer(model: Any, output: Any, n: int, skip: int, penultimate: bool) -> torch.Tensor:
    """A1111's clip skip N (1 = none) on one chunk: SD1.x/2.x take layer -N, normalized as the last layer is.
    SDXL is trained on the penultimate layer, unnormalized, and A1111 renders it there whatever its Clip skip;
    Forge takes layer -max(N, 2): the same for the 1 and 2 found in images, and a deeper layer when asked."""
    if penultimate:
        return output.hidden_states[-max(skip, 2)][n]
    if skip == 1:
        return output.last_hidden_state[n]
    norm = getattr(model, "final_layer_norm", None) or model.text_model.final_layer_norm  # transformers 5 or 4
    return norm(output.hidden_states[-skip][n])


def _weighted(states: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111's emphasis: each token's state times its weight, then the chunk's mean restored; per row and chunk
    (A1111 takes the mean over the whole batch, which would make a row depend on its neighbours)."""
    if all(w == 1.0 for w in weights):
        return states
    scale = torch.tensor(weights, dtype=states.dtype, device=states.device)[:, None]
    before = states.mean()
    scaled = states * scale
    return scaled * (before / scaled.mean())
