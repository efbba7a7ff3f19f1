"""A1111's prompt syntax: fragments exactly as A1111 reads them, strict mode, stray brackets, refusals."""

import random
import re

import pytest

from sdbatch.a1111.syntax import SYNTAXES, Fragment, PromptSyntaxError, parse, problem, stray_brackets

U, D = 1.1, 1 / 1.1  # A1111's factors, computed as A1111 computes them
B = ("", None)  # a BREAK as sdbatch writes it


def _read(prompt: str, syntax: str = "a1111") -> list[tuple[str, float | None]]:
    return [(f.text, f.weight) for f in parse(prompt, syntax)]


# A1111's own doctests of parse_prompt_attention (modules/prompt_parser.py), exact floats.
A1111_DOCTESTS = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
]

# Expected values followed by hand through A1111's algorithm: separate round and square stacks, a closer with
# nothing of its kind open is text, what is left open is closed at the end (rounds, then squares, in push order),
# then neighbours with equal weights merge.
BY_HAND = [
    # stray closers and a weight with no round bracket open: text
    ("a) b", [("a) b", 1.0)]),
    ("x]y", [("x]y", 1.0)]),
    ("(a)) b", [("a", U), (") b", 1.0)]),
    ("a:1.2) b", [("a:1.2) b", 1.0)]),
    ("[a:1.2)]", [("a:1.2)", 1.0 * D)]),  # the ')' of ':1.2)' closes no round bracket: text in the square
    ("(a: 1.2 ) (b:-1) (c:+.5)", [("a", 1.2), (" ", 1.0), ("b", -1.0), (" ", 1.0), ("c", 0.5)]),
    # unclosed brackets, closed at the end
    ("((a", [("a", 1.0 * U * U)]),
    ("a ((b [c (d", [("a ", 1.0), ("b ", 1.0 * U * U), ("c ", 1.0 * U * U * D), ("d", 1.0 * U * U * U * D)]),
    ("[[a", [("a", 1.0 * D * D)]),
    # rounds before squares, whatever the push order: (1.3 * U) * D is 1.3, (1.3 * D) * U is not
    ("[((a:1.3)", [("a", 1.3 * U * D)]),
    ("([(a:1.7)", [("a", 1.7 * U * D)]),
    # one stack per kind: ')' closes the '(' across an open '['
    ("( [ )", [(" ", 1.0 * U), (" ", 1.0 * U * D)]),
    ("(a[b)c]d", [("a", U), ("b", 1.0 * U * D), ("c", D), ("d", 1.0)]),
    ("([a:1.2)]", [("a", 1.0 * 1.2 * D)]),
    # escapes; a lone backslash is an empty entry, kept, and it can keep equal weights from merging
    (r"\(a\) \[b\] c\\d", [(r"(a) [b] c\d", 1.0)]),
    ("a\\b", [("ab", 1.0)]),
    ("(a)\\", [("a", U), ("", 1.0)]),
    ("(a)(\\:0.5)(b)", [("a", U), ("", 0.5), ("b", U)]),
    ("(a)(b)", [("ab", U)]),
    # BREAK at the top level and between brackets; the parts around it are kept even when empty
    ("x BREAK y", [("x", 1.0), B, ("y", 1.0)]),
    ("BREAK", [("", 1.0), B, ("", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), B, ("", 1.0), B, ("b", 1.0)]),
    ("(a) BREAK (b)", [("a", U), ("", 1.0), B, ("", 1.0), ("b", U)]),
    ("aBREAK BREAKFAST", [("aBREAK BREAKFAST", 1.0)]),
    # empty prompts
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("(:1.2)[]", [("", 1.0)]),
    # colons that are not a weight or prompt editing are text
    ("a: b, (x:y) [c: d]", [("a: b, ", 1.0), ("x:y", U), (" ", 1.0), ("c: d", D)]),
]


@pytest.mark.parametrize("prompt, expected", A1111_DOCTESTS + BY_HAND)
def test_fragments_are_a1111s_to_the_bit(prompt, expected):
    assert _read(prompt) == expected
    refused = problem(prompt, "a1111-strict")
    if refused is None:
        assert _read(prompt, "a1111-strict") == expected
    else:
        assert re.search("is never closed|closes nothing|does not match", refused)


def test_a_break_inside_brackets_stays_a_break_unlike_a1111():
    """A1111 multiplies its BREAK marker too and then reads the word BREAK at a negative weight: a bug."""
    assert _read("(a BREAK b)") == [("a", U), B, ("b", U)]
    assert _oracle("(a BREAK b)")[0] == [["a", U], ["BREAK", -1 * U], ["b", U]]
    assert _read("[a BREAK b") == [("a", D), B, ("b", D)]


def test_plain_reads_text_and_unknown_syntaxes_are_refused():
    assert SYNTAXES == ("a1111", "a1111-strict", "plain")
    assert parse("BREAKFAST (x) BREAK", "plain") == [Fragment("BREAKFAST (x) BREAK", 1.0)]
    assert "use one of a1111, a1111-strict, plain" in problem("a", "compel")


@pytest.mark.parametrize("prompt, says", [
    ("a (b", "'(' at character 3 is never closed"),
    ("(a [b]", "'(' at character 1 is never closed"),
    ("a (b [c", "'[' at character 6 is never closed"),
    ("a b)", "')' at character 4 closes nothing"),
    ("a b]", "']' at character 4 closes nothing"),
    ("a b:1.2)", "')' at character 8 closes nothing"),
    ("(a [b:1.2)", "')' at character 10 does not match '['"),
    ("( [ )", "')' at character 5 does not match '['"),
    ("([)]", "')' at character 3 does not match '['"),
])
def test_strict_refuses_unbalanced_brackets_that_a1111_reads(prompt, says):
    with pytest.raises(PromptSyntaxError, match='close it|escape') as caught:
        parse(prompt, "a1111-strict")
    assert says in str(caught.value) and 'prompt_syntax = "a1111"' in str(caught.value)
    assert problem(prompt, "a1111") is None


@pytest.mark.parametrize("prompt, says", [
    ("(a:1.2.3)", "weight '1.2.3' at character 4 is not a number"),
    ("a [cat:dog:0.5]", "prompt editing or alternation"),
    ("a [cat|dog]", "'[cat|dog]' at character 3 is A1111 prompt editing or alternation"),
    ("[cat:0.5], x", "'[cat:0.5]' at character 1 is A1111 prompt editing"),
    ("[(a:1.2)::10]", "'[(a:1.2)::10]' at character 1 is A1111 prompt editing"),
    ("a) [cat:dog:5]", "'[cat:dog:5]' at character 4 is A1111 prompt editing"),
])
@pytest.mark.parametrize("syntax", ["a1111", "a1111-strict"])
def test_editing_alternation_and_bad_weights_are_refused_in_both_modes(prompt, says, syntax):
    if syntax == "a1111-strict" and prompt.startswith("a)"):
        says = "closes nothing"
    with pytest.raises(PromptSyntaxError, match="escape|write it|write the prompt") as caught:
        parse(prompt, syntax)
    assert says in str(caught.value)


@pytest.mark.parametrize("prompt", ["(" * 8000 + "a" + ")" * 8000, "(a:1" + "0" * 400 + ")",
                                    "((a:1" + "0" * 200 + "):1" + "0" * 200 + ")"])
def test_weights_that_multiply_to_infinity_are_refused(prompt):
    for syntax in ("a1111", "a1111-strict"):
        reason = problem(prompt, syntax)
        assert reason and "multiply to infinity" in reason and "fewer brackets or a smaller weight" in reason
    assert _read("(" * 8000 + ")" * 8000) == [("", 1.0)]  # no text for the weight to reach


@pytest.mark.parametrize("prompt, says", [
    ("a b) c", "')' at character 4 closes nothing and is kept as text (a b) c)"),
    ("a (b", "'(' at character 3 is never closed; A1111 closes it at the end"),
    ("(a) b]", "']' at character 6 closes nothing"),
    ("x:1.2) y", "')' at character 6 closes nothing"),
    ("a) (b", "')' at character 2 closes nothing"),
    ("a (b) c]", "']' at character 8 closes nothing"),
    ("( [ )", "'[' at character 3 is never closed"),
    ("[a] (b [c", "'(' at character 5 is never closed"),
    ("words " * 10 + "x)", "')' at character 62 closes nothing and is kept as text (... words words words x)...)"),
])
def test_stray_brackets_names_the_first_one_a1111_fixes_or_keeps(prompt, says):
    assert says in stray_brackets(prompt)


@pytest.mark.parametrize("prompt", ["", "a b", "a (b) [c] (d:1.2)", r"\(a\] \\", "([)]", "(a [b:1.2)]"])
def test_stray_brackets_is_none_where_each_kind_balances(prompt):
    assert stray_brackets(prompt) is None


# An independent rendering of A1111's parse_prompt_attention, step for step in A1111's order of tests, as the
# oracle for random prompts; it also says whether a BREAK was read with a bracket open.
_ORACLE_UNIT = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")


def _oracle(prompt: str) -> tuple[list[list], bool]:
    entries, rounds, squares, bracketed_break = [], [], [], False

    def times(start, factor):
        for entry in entries[start:]:
            entry[1] *= factor

    for m in _ORACLE_UNIT.finditer(prompt):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            entries.append([token[1:], 1.0])
        elif token == "(":
            rounds.append(len(entries))
        elif token == "[":
            squares.append(len(entries))
        elif weight is not None and rounds:
            times(rounds.pop(), float(weight))
        elif token == ")" and rounds:
            times(rounds.pop(), 1.1)
        elif token == "]" and squares:
            times(squares.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(re.split(r"\s*\bBREAK\b\s*", token)):
                if i:
                    entries.append(["BREAK", -1])
                    bracketed_break |= bool(rounds or squares)
                entries.append([part, 1.0])
    for start in rounds:
        times(start, 1.1)
    for start in squares:
        times(start, 1 / 1.1)
    merged = []
    for text, weight in entries or [["", 1.0]]:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return merged, bracketed_break


def _random_prompts(count: int) -> list[str]:
    rng = random.Random(0)
    tokens = ["(", ")", "[", "]", "\\", ":", " ", "a", "1", ".", "5", " BREAK "]
    odds = [5, 5, 3, 3, 1, 3, 2, 4, 2, 1, 1, 1]
    return ["".join(rng.choices(tokens, odds, k=rng.randint(0, 24))) for _ in range(count)]


def test_random_prompts_read_exactly_as_the_a1111_oracle():
    compared = 0
    for prompt in _random_prompts(600):
        try:
            ours = parse(prompt)
        except PromptSyntaxError:  # prompt editing, alternation, a weight like '1.5.1'
            continue
        expected, bracketed_break = _oracle(prompt)
        if bracketed_break:  # the documented difference
            continue
        mapped = [["BREAK", -1] if f.weight is None else [f.text, f.weight] for f in ours]
        assert [(t, repr(w)) for t, w in mapped] == [(t, repr(w)) for t, w in expected], prompt
        compared += 1
    assert compared >= 300


def test_random_prompts_strict_accepts_only_balanced_ones_and_reads_them_as_a1111():
    for prompt in _random_prompts(600):
        if problem(prompt, "a1111"):
            continue
        strict = problem(prompt, "a1111-strict")
        if strict is None:
            assert stray_brackets(prompt) is None and parse(prompt, "a1111-strict") == parse(prompt), prompt
        elif stray_brackets(prompt) is not None:
            assert "never closed" in strict or "closes nothing" in strict or "does not match" in strict
