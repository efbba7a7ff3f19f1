"""Manifest columns about how prompts are read: prompt_syntax, clip_skip, and prompts checked against the syntax."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.a1111.syntax import SYNTAXES, parse, problem, stray_brackets
from sdbatch.manifest import columns as cols
from sdbatch.manifest.columns import rows_where
from sdbatch.manifest.problems import Notes, Problems, shown
from sdbatch.settings import MAX_CLIP_SKIP, RowDefaults

# Only prompts with one of these can fail to parse; the rest (most of a large manifest) are not parsed here.
_SYNTAX_CHARS = r"[()\[\]\\]"
STRAY_WARNING = ("{count} prompt(s) have unbalanced brackets, read as A1111 reads them (an unclosed bracket "
                 "closes at the end, a stray closer is text); prompt_syntax = \"a1111-strict\" refuses them")


def prompt_columns(table: pa.Table, columns: dict[str, Any], defaults: RowDefaults, problems: Problems,
                   notes: Notes) -> None:
    """Add prompt_syntax and clip_skip to `columns`; report prompts and negative prompts that do not parse, and
    note those read leniently."""
    syntax = cols.strings(table, "prompt_syntax", defaults.prompt_syntax, problems, allowed=SYNTAXES)
    columns["prompt_syntax"] = syntax
    columns["clip_skip"] = cols.ints(table, "clip_skip", defaults.clip_skip, problems, low=1, high=MAX_CLIP_SKIP,
                                     fix="use 1 (the last layer, no skip) or more; A1111's `Clip skip: 2` is 2")
    for name in ("prompt", "negative_prompt"):
        _check_parses(columns[name], syntax, name, problems, notes)
    if defaults.embedding_dir is None:
        _check_no_embeddings_pinned(table, problems)


WEIGHTS_WARNING = ("{count} prompt(s) of models whose pipeline encodes plain text (SD3, FLUX) carry A1111 weights, "
                   "which are not applied: the words are encoded, the weights dropped (docs/PROMPTS.md)")


def note_unweighted(family_title: str, prompts: Any, syntax: Any, mine: Any, problems: Problems,
                    notes: Notes) -> None:
    """Rows of a family without A1111 weighting whose prompts weigh words: rendered, and said once."""
    candidates = pc.and_(pc.fill_null(mine, False), pc.fill_null(pc.not_equal(syntax, "plain"), False))
    candidates = pc.and_(candidates, pc.fill_null(pc.match_substring_regex(prompts, _SYNTAX_CHARS), False))
    weighted = []
    for n in rows_where(candidates).to_pylist():
        try:
            parts = parse(prompts[n].as_py(), syntax[n].as_py())
        except ValueError:
            continue  # a prompt that does not parse is a problem of its own (_check_parses)
        if any(part.weight not in (None, 1.0) for part in parts):
            weighted.append(f"{problems.where(n)} ({family_title}): {shown(prompts[n].as_py(), 60)}")
    notes.add(WEIGHTS_WARNING, len(weighted), weighted)


def _check_parses(prompts: Any, syntax: Any, name: str, problems: Problems, notes: Notes) -> None:
    parsed = pc.fill_null(pc.not_equal(syntax, "plain"), False)
    candidates = pc.and_(parsed, pc.fill_null(pc.match_substring_regex(prompts, _SYNTAX_CHARS), False))
    stray = []
    for n in rows_where(candidates).to_pylist():
        with problems.guard(name, n):
            prompt, mode = prompts[n].as_py(), syntax[n].as_py()
            reason = problem(prompt, mode)
            if reason:
                problems.report(name, n, reason)
            elif mode == "a1111" and (where := stray_brackets(prompt)):
                stray.append(f"{problems.where(n)}, {name}: {where}")
    notes.add(STRAY_WARNING, len(stray), stray)


def _check_no_embeddings_pinned(table: pa.Table, problems: Problems) -> None:
    """Rows read from A1111 images name the embeddings they were made with (`ti_hashes`); without an embedding
    folder their words would render as text, and the images would silently differ."""
    column = cols.typed_column(table, "ti_hashes", "string", problems)
    if column is None:
        return
    pinned = pc.and_(pc.is_valid(column), pc.not_equal(pc.fill_null(column, ""), ""))
    problems.add_rows("ti_hashes", rows_where(pinned), lambda n: (
        f"the row was made with textual inversion embeddings ({column[n].as_py()}) and the job has no "
        "embedding_dir; pass --embedding-dir with those files, or drop the column to render the words as text"))
