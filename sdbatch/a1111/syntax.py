"""Prompt syntax: A1111's attention brackets and BREAK parsed into weighted fragments; pure, stdlib only."""

from __future__ import annotations

import re
from dataclasses import dataclass

SYNTAXES = ("a1111", "plain")
# A1111's factors for one pair of round / square brackets.
UP, DOWN = 1.1, 1 / 1.1
BREAK = None  # the weight of the fragment that stands for a BREAK: the next text starts a new 75-token chunk

# One lexical unit of A1111's syntax, in the order A1111 tries them: escapes, brackets, ":weight)", text.
_UNIT = re.compile(r"""
    \\[()\[\]\\]                    # an escaped bracket or backslash: literal
  | \\                              # a lone backslash: literal
  | \(|\[                           # open
  | :\s*(?P<weight>[+-]?[.\d]+)\s*\)  # close with an explicit weight
  | \)|\]                           # close
  | [^\\()\[\]:]+                   # text
  | :                               # a colon that is not a weight
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_WHEN = re.compile(r"\s*[.\d]+\s*")  # the step of A1111's prompt editing: [from:to:when]
_FIX = 'escape a literal bracket as \\( \\) \\[ \\], or set prompt_syntax = "plain" for this row or the job'


class PromptSyntaxError(ValueError):
    """A prompt that A1111's syntax cannot read as meant; the message says where and how to fix it."""


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float | None  # None (BREAK): a chunk boundary, no text


def parse(prompt: str, syntax: str = "a1111") -> list[Fragment]:
    """The prompt as fragments of text with their attention weight, adjacent equal weights merged."""
    if syntax == "plain":
        return [Fragment(prompt, 1.0)]
    if syntax != "a1111":
        raise PromptSyntaxError(f"unknown prompt syntax {syntax!r}; use one of {', '.join(SYNTAXES)}")
    pieces: list[list] = []  # [text, weight], weights multiplied in place as brackets close
    opened: list[_Open] = []
    for unit in _UNIT.finditer(prompt):
        token, weight = unit.group(0), unit.group("weight")
        square = opened[-1] if opened and opened[-1].bracket == "[" else None
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])  # as A1111: a lone backslash is dropped
        elif token in "([":
            opened.append(_Open(token, len(pieces), unit.start()))
        elif weight is not None and opened and opened[-1].bracket == "(":
            _scale(pieces, opened.pop().first_piece, _number(weight, prompt, unit.start()))
        elif token in ")]" or weight is not None:
            if token == "]" and square and square.colon is not None:
                _refuse_editing(prompt, square, unit.end())
            _close(pieces, opened, token[-1], prompt, unit.start())
        else:
            if square and token == ":":
                square.colon = unit.start()
            elif square and "|" in token:
                _refuse_scheduling(prompt, square.at, prompt.find("]", unit.start()) + 1)
            _text(pieces, token)
    if opened:
        where = opened[-1].at
        raise PromptSyntaxError(f"{opened[-1].bracket!r} at character {where + 1} is never closed "
                                f"({_context(prompt, where)}); close it, or {_FIX}")
    return _merged(pieces)


@dataclass
class _Open:
    """A bracket not closed yet."""

    bracket: str  # "(" or "["
    first_piece: int  # the first of the pieces it weighs
    at: int  # its character offset
    colon: int | None = None  # the offset of the last ':' directly inside it


def _refuse_editing(prompt: str, square: _Open, end: int) -> None:
    """A square bracket whose own last ':' is followed by a number is A1111's [from:to:when] (or [to:when]);
    other colons in it are text, as A1111 reads them."""
    if _WHEN.fullmatch(prompt, square.colon + 1, end - 1):
        _refuse_scheduling(prompt, square.at, end)


def _refuse_scheduling(prompt: str, start: int, end: int) -> None:
    """A1111's prompt editing ([from:to:when]) and alternation ([a|b]) change the prompt during sampling, which
    sdbatch does not do: refused rather than rendered as literal text."""
    shown = prompt[start:end] if end > start else prompt[start:start + 40]
    raise PromptSyntaxError(f"{shown!r} at character {start + 1} is A1111 prompt editing or alternation, which "
                            f"sdbatch does not render; write the prompt without it, or {_FIX}")


def _close(pieces: list[list], opened: list[_Open], bracket: str, prompt: str, where: int) -> None:
    expected = {")": "(", "]": "["}[bracket]
    if not opened or opened[-1].bracket != expected:
        what = f"does not match {opened[-1].bracket!r}" if opened else "closes nothing"
        raise PromptSyntaxError(f"{bracket!r} at character {where + 1} {what} ({_context(prompt, where)}); {_FIX}")
    _scale(pieces, opened.pop().first_piece, UP if bracket == ")" else DOWN)


def _number(text: str, prompt: str, where: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise PromptSyntaxError(f"weight {text!r} at character {where + 2} is not a number "
                                f"({_context(prompt, where)}); write it as (word:1.2)") from None


def _scale(pieces: list[list], start: int, factor: float) -> None:
    for piece in pieces[start:]:
        if piece[1] is not BREAK:
            piece[1] *= factor


def _text(pieces: list[list], text: str) -> None:
    for i, part in enumerate(_BREAK.split(text)):
        if i:
            pieces.append(["", BREAK])
        pieces.append([part, 1.0])


def _merged(pieces: list[list]) -> list[Fragment]:
    out: list[list] = []
    for text, weight in pieces:
        if out and weight is not BREAK and out[-1][1] == weight:
            out[-1][0] += text
        elif text or weight is BREAK:
            out.append([text, weight])
    return [Fragment(text, weight) for text, weight in out] or [Fragment("", 1.0)]


def _context(prompt: str, where: int) -> str:
    start = max(0, where - 20)
    return f"...{prompt[start:where + 20]}..." if len(prompt) > 40 else prompt


def problem(prompt: str | None, syntax: str) -> str | None:
    """Why the prompt cannot be parsed, or None."""
    try:
        parse(prompt or "", syntax)
    except PromptSyntaxError as exc:
        return str(exc)
    return None
