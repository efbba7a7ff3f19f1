"""Prompt syntax: A1111's attention brackets and BREAK parsed into weighted fragments; pure, stdlib only."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# "a1111" reads every prompt as A1111 does, stray brackets included; "a1111-strict" refuses unbalanced brackets;
# "plain" reads the prompt as text.
SYNTAXES = ("a1111", "a1111-strict", "plain")
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
_BRACKET = re.compile(r"[()\[\]]")
_OPENER = {")": "(", "]": "["}
_FIX = 'escape a literal bracket as \\( \\) \\[ \\], or set prompt_syntax = "plain" for this row or the job'
_STRICT_FIX = ('escape a literal bracket as \\( \\) \\[ \\], or set prompt_syntax = "a1111" (brackets read as '
               'A1111 reads them) or "plain" (text) for this row or the job')


class PromptSyntaxError(ValueError):
    """A prompt that A1111's syntax cannot read as meant; the message says where and how to fix it."""


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float | None  # None (BREAK): a chunk boundary, no text


def parse(prompt: str, syntax: str = "a1111") -> list[Fragment]:
    """The prompt as A1111's parse_prompt_attention reads it (texts, weights to the bit, empty entries, merges),
    except that a BREAK inside brackets is still a BREAK; "a1111-strict" also refuses unbalanced brackets."""
    if syntax == "plain":
        return [Fragment(prompt, 1.0)]
    if syntax not in SYNTAXES:
        raise PromptSyntaxError(f"unknown prompt syntax {syntax!r}; use one of {', '.join(SYNTAXES)}")
    reader = _Reader(prompt, strict=syntax == "a1111-strict")
    for unit in _UNIT.finditer(prompt):
        reader.read(unit)
    return reader.finish()


def stray_brackets(prompt: str) -> str | None:
    """For an "a1111" row: the first bracket that A1111 keeps as text or closes at the prompt's end, or None."""
    if not _BRACKET.search(prompt):
        return None
    opened: dict[str, list[int]] = {"(": [], "[": []}
    stray = None
    for unit in _UNIT.finditer(prompt):
        token = unit.group(0)
        if token in opened:
            opened[token].append(unit.start())
        elif token[0] != "\\" and token[-1] in _OPENER:  # ")", "]" or ":1.2)"
            if opened[_OPENER[token[-1]]]:
                opened[_OPENER[token[-1]]].pop()
            elif stray is None:
                stray = unit.end() - 1
    unclosed = min(opened["("][:1] + opened["["][:1], default=None)  # a stack's first is its earliest
    if unclosed is not None and (stray is None or unclosed < stray):
        return (f"{prompt[unclosed]!r} at character {unclosed + 1} is never closed; A1111 closes it at the end "
                f"({_context(prompt, unclosed)})")
    if stray is not None:
        return (f"{prompt[stray]!r} at character {stray + 1} closes nothing and is kept as text "
                f"({_context(prompt, stray)})")
    return None


def problem(prompt: str | None, syntax: str) -> str | None:
    """Why the prompt cannot be parsed, or None."""
    try:
        parse(prompt or "", syntax)
    except PromptSyntaxError as exc:
        return str(exc)
    return None


@dataclass
class _Open:
    """A bracket not closed yet."""

    bracket: str  # "(" or "["
    first_piece: int  # the first of the pieces it weighs
    at: int  # its character offset
    colon: int | None = None  # the offset of the last ':' directly inside it


class _Reader:
    """One pass of A1111's parse_prompt_attention over the prompt's units, with sdbatch's refusals."""

    def __init__(self, prompt: str, strict: bool):
        self.prompt, self.strict = prompt, strict
        self.pieces: list[list] = []  # [text, weight, offset]; weights multiplied in place as brackets close
        self.opened: dict[str, list[_Open]] = {"(": [], "[": []}  # A1111 keeps one stack per bracket kind

    def read(self, unit: re.Match) -> None:
        token, weight, at = unit.group(0), unit.group("weight"), unit.start()
        if token[0] == "\\":
            self.pieces.append([token[1:], 1.0, at])  # a lone backslash gives "", kept as A1111 keeps it
        elif token in self.opened:
            self.opened[token].append(_Open(token, len(self.pieces), at))
        elif weight is not None and self.opened["("]:
            self._close("(", unit.end() - 1, _number(weight, self.prompt, at))
        elif token in _OPENER and self.opened[_OPENER[token]]:
            self._close(_OPENER[token], at, UP if token == ")" else DOWN)
        else:
            self._text(token, at, unit.end())

    def finish(self) -> list[Fragment]:
        innermost = self._innermost()
        if self.strict and innermost:
            raise PromptSyntaxError(f"{innermost.bracket!r} at character {innermost.at + 1} is never closed "
                                    f"({_context(self.prompt, innermost.at)}); close it, or {_STRICT_FIX}")
        # A1111 closes what is left at the end: all round brackets, then all square ones, each in push order.
        for bracket, factor in (("(", UP), ("[", DOWN)):
            for left in self.opened[bracket]:
                _scale(self.pieces, left.first_piece, factor)
        self._check_finite()
        return _merged(self.pieces)

    def _innermost(self) -> _Open | None:
        tops = [stack[-1] for stack in self.opened.values() if stack]
        return max(tops, key=lambda o: o.at, default=None)

    def _close(self, bracket: str, at: int, factor: float) -> None:
        """Close the last `bracket` opened, which A1111 does even when another kind was opened inside it."""
        innermost = self._innermost()
        if self.strict and innermost.bracket != bracket:
            self._refuse_stray(at, innermost)
        closed = self.opened[bracket].pop()
        if closed.colon is not None:  # only a square bracket has one
            _refuse_editing(self.prompt, closed, at + 1)
        _scale(self.pieces, closed.first_piece, factor)

    def _text(self, token: str, at: int, end: int) -> None:
        """Text, a colon, or a closer with nothing of its kind open: A1111 reads all three as text."""
        innermost = self._innermost()
        if self.strict and token[-1] in _OPENER:
            self._refuse_stray(end - 1, innermost)
        if innermost and innermost.bracket == "[":
            if token == ":":
                innermost.colon = at
            elif "|" in token:
                _refuse_scheduling(self.prompt, innermost.at, self.prompt.find("]", at) + 1)
        start = 0
        for brk in _BREAK.finditer(token):  # as re.split: the parts around a BREAK are kept even when empty
            self.pieces += [[token[start:brk.start()], 1.0, at + start], ["", BREAK, at + brk.start()]]
            start = brk.end()
        self.pieces.append([token[start:], 1.0, at + start])

    def _refuse_stray(self, at: int, innermost: _Open | None) -> None:
        what = f"does not match {innermost.bracket!r}" if innermost else "closes nothing"
        raise PromptSyntaxError(f"{self.prompt[at]!r} at character {at + 1} {what} "
                                f"({_context(self.prompt, at)}); {_STRICT_FIX}")

    def _check_finite(self) -> None:
        """Enough brackets (1.1 ** 8000) or a huge weight overflow to infinity, which makes the states NaN; a weight
        on empty text reaches no token and is let be."""
        for text, weight, at in self.pieces:
            if weight is not BREAK and text and not math.isfinite(weight):
                raise PromptSyntaxError(f"the weight of {_short(text)!r} at character {at + 1} is {weight}: the "
                                        "brackets and weights around it multiply to infinity; use fewer brackets "
                                        "or a smaller weight")


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


def _number(text: str, prompt: str, where: int) -> float:
    try:
        return float(text)
    except ValueError:  # A1111 itself fails on these
        raise PromptSyntaxError(f"weight {text!r} at character {where + 2} is not a number "
                                f"({_context(prompt, where)}); write it as (word:1.2)") from None


def _scale(pieces: list[list], start: int, factor: float) -> None:
    for piece in pieces[start:]:
        if piece[1] is not BREAK:  # a BREAK inside brackets stays a BREAK; A1111 turns it into weighted text
            piece[1] *= factor


def _merged(pieces: list[list]) -> list[Fragment]:
    """A1111's merge of neighbours with equal weights; an empty entry is an entry, so it can keep two apart."""
    out: list[list] = []
    for text, weight, _ in pieces:
        if out and weight is not BREAK and out[-1][1] == weight:
            out[-1][0] += text
        else:
            out.append([text, weight])
    return [Fragment(text, weight) for text, weight in out] or [Fragment("", 1.0)]


def _short(text: str) -> str:
    return text if len(text) <= 30 else text[:27] + "..."


def _context(prompt: str, where: int) -> str:
    start = max(0, where - 20)
    return f"...{prompt[start:where + 20]}..." if len(prompt) > 40 else prompt
