"""A1111's prompt syntax: weights as A1111 computes them, BREAK, escapes, and prompts refused with where and why."""

import pytest

from sdbatch.a1111.syntax import DOWN, UP, Fragment, PromptSyntaxError, parse


def _weights(prompt: str) -> list[tuple[str, float | None]]:
    return [(f.text, None if f.weight is None else round(f.weight, 6)) for f in parse(prompt)]


def test_brackets_weights_and_nesting_multiply_as_in_a1111():
    assert _weights("(masterpiece:1.2), a castle, [foggy]") == [
        ("masterpiece", 1.2), (", a castle, ", 1.0), ("foggy", round(DOWN, 6))]
    assert _weights("((a)) b") == [("a", round(UP * UP, 6)), (" b", 1.0)]
    assert _weights("a (b [c] d:1.5) e") == [("a ", 1.0), ("b ", 1.5), ("c", round(1.5 * DOWN, 6)), (" d", 1.5),
                                              (" e", 1.0)]
    assert _weights("(fox:1.0)") == [("fox", 1.0)]
    assert _weights("a: b, (x:-0.5)") == [("a: b, ", 1.0), ("x", -0.5)]


def test_weights_and_colons_inside_square_brackets_are_not_prompt_editing():
    assert _weights("[(blurry:1.3)]") == [("blurry", round(1.3 * DOWN, 6))]
    assert _weights("[a, (b:1.2)]") == [("a, ", round(DOWN, 6)), ("b", round(1.2 * DOWN, 6))]
    assert _weights("[a: b] c") == [("a: b", round(DOWN, 6)), (" c", 1.0)]  # no step number: A1111's text too


def test_break_escapes_and_plain_text():
    assert parse("x BREAK y") == [Fragment("x", 1.0), Fragment("", None), Fragment("y", 1.0)]
    assert parse(r"a \(b\) \[c\]") == [Fragment("a (b) [c]", 1.0)]
    assert parse("BREAKFAST (x)", "plain") == [Fragment("BREAKFAST (x)", 1.0)]
    assert parse("") == [Fragment("", 1.0)]


@pytest.mark.parametrize("prompt, says", [
    ("a (b", "'(' at character 3 is never closed"),
    ("a b)", "')' at character 4 closes nothing"),
    ("(a [b:1.2)", "does not match '['"),
    ("(a:1.2.3)", "weight '1.2.3' at character 4 is not a number"),
    ("a [cat:dog:0.5]", "prompt editing or alternation"),
    ("a [cat|dog]", "'[cat|dog]' at character 3 is A1111 prompt editing or alternation"),
    ("[cat:0.5], x", "'[cat:0.5]' at character 1 is A1111 prompt editing"),
    ("[(a:1.2)::10]", "'[(a:1.2)::10]' at character 1 is A1111 prompt editing"),
])
def test_prompts_a1111_would_misread_are_refused_with_the_fix(prompt, says):
    with pytest.raises(PromptSyntaxError, match="escape|write it|close it|write the prompt") as caught:
        parse(prompt)
    assert says in str(caught.value)
