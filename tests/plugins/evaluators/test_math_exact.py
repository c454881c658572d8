"""``math`` (extraction and math-verify equivalence on equivalent forms) and ``exact`` (normalised match,
pluggable extraction: the toy task's own ``final_answer``)."""

from __future__ import annotations

import pytest
from vcrd_evaluators.answers import after_last_equals, join_thousands, last_boxed, last_number, qwen25_math_answer

from vcrd_core import create
from vcrd_core.errors import ConfigError
from vcrd_core.evaluation.evaluator import EvalItem


def _grade(name: str, params: dict, reference: object, output: str) -> tuple[float | None, object]:
    verdict = create("evaluators", name, params).grade(EvalItem("d", 0, "q", reference), output)
    return verdict.score, verdict.extracted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\dfrac{\\sqrt{3}}{2}"),
        ("\\boxed{\\left\\{1, 2\\right\\}}", "\\left\\{1, 2\\right\\}"),
        ("$\\boxed 7$", "7"),
        ("\\fbox{x+1}", "x+1"),
        ("\\boxed{unclosed", None),
        ("no box", None),
    ],
)
def test_last_boxed_balances_nested_braces(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_last_number_and_after_last_equals() -> None:
    assert last_number("She has 3 apples, then 1,250.5 more, or -7.") == "-7"
    assert last_number("total: 1,250") == "1250"
    assert last_number("ratio 3/4") == "3/4"
    assert last_number("none") is None
    assert after_last_equals("2*3+4=6+4=10") == "10"
    assert after_last_equals("=") is None


@pytest.mark.parametrize(
    ("reference", "output"),
    [
        ("\\frac{1}{2}", "The answer is \\boxed{0.5}."),
        ("0.5", "\\boxed{\\dfrac{1}{2}}"),
        ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\sqrt{2}/2}"),
        ("[1,2)", "\\boxed{[1, 2)}"),
        ("(-\\infty, 3]", "\\boxed{(-\\infty,3]}"),
        ("10", "\\boxed{10\\text{ cm}}"),
        ("10\\text{ cm}", "so 10 centimetres... \\boxed{10}"),
        ("50\\%", "\\boxed{50}"),
        ("x^2+2x+1", "\\boxed{(x+1)^2}"),
        ("1000", "\\boxed{1,000}"),
        ("18", "Janet sells 16 - 3 - 4 = 9 eggs for $2 each: 18"),  # last-number fallback
        (18, "\\boxed{18}"),  # a numeric reference in the dataset
    ],
)
def test_math_equivalent_forms_pass(reference: object, output: str) -> None:
    score, _ = _grade("math", {}, reference, output)
    assert score == 1.0


@pytest.mark.parametrize(
    ("reference", "output"),
    [
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
        ("(1,2]", "\\boxed{[1,2)}"),
        ("3", "\\boxed{3} is wrong, \\boxed{4}"),
        ("\\pi", "\\boxed{3.14}"),
        ("7", "I do not know."),
    ],
)
def test_math_different_answers_fail(reference: str, output: str) -> None:
    score, _ = _grade("math", {}, reference, output)
    assert score == 0.0


def test_math_summary_is_pass_at_1_per_dataset_and_the_average() -> None:
    ev = create("evaluators", "math", {})
    items = [EvalItem("gsm8k", 0, "q", "2"), EvalItem("gsm8k", 1, "q", "3"), EvalItem("math", 0, "q", "\\frac12")]
    verdicts = [ev.grade(i, o) for i, o in zip(items, ["\\boxed{2}", "\\boxed{4}", "\\boxed{0.5}"], strict=True)]
    summary = ev.summarize(items, verdicts)
    assert summary["datasets"]["gsm8k"]["pass@1"] == 0.5
    assert summary["datasets"]["math"]["pass@1"] == 1.0
    assert summary["average"] == 0.75


def test_exact_normalised_and_strict() -> None:
    assert _grade("exact", {}, "Paris", "  paris. ")[0] == 1.0
    assert _grade("exact", {"normalized": False}, "Paris", "  paris. ")[0] == 0.0
    assert _grade("exact", {"extract": "last_line"}, "B", "reasoning...\nb")[0] == 1.0
    assert _grade("exact", {"extract": "last_number"}, 42, "so 40 + 2 = 42")[0] == 1.0


def test_exact_with_the_toy_tasks_own_extraction() -> None:
    params = {"extract": "vcrd_arithmetic.grammar:final_answer"}
    assert _grade("exact", params, "26", "6+4*5=6+20=26") == (1.0, 26)
    assert _grade("exact", params, 26, "6+4*5=6+20=27")[0] == 0.0
    assert _grade("exact", params, "26", "6+4*5=6+20=") == (0.0, None)


@pytest.mark.parametrize(
    ("extract", "message"),
    [
        ("nope", "'nope' is neither a built-in extraction"),
        ("vcrd_arithmetic.grammar:no_such", "cannot import 'vcrd_arithmetic.grammar:no_such'"),
        ("vcrd_arithmetic.grammar:ALPHABET", "is not callable"),
    ],
)
def test_exact_bad_extraction_is_one_line(extract: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"params\.extract") as err:
        create("evaluators", "exact", {"extract": extract}, path="evaluation.evaluators.0")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),  # not the last number, 2
        ("So the answer is: \\(\\sqrt{3}\\)", "\\sqrt{3}"),
        ("Therefore, the final answer is $$x^2 + 1$$. I hope it is correct.", "x^2 + 1"),
        ("the answer is 2.5.\nLet me double-check: 5/2 = 2.5 indeed, 3 ways.", "2.5"),
        ("The answer is 42 apples", "42 apples"),
        ("First the answer is 3... no, the answer is 7. Check: 7 - 4 = 3", "7"),  # the last phrase
        ("The final answer is 4 but the answer is 5", "5"),  # "the answer is" before "final answer is"
        ("The answer is \\boxed{6}, not 7", "6"),  # \boxed{} first
        ("\\boxed{8}. The answer is 9.", "8"),
        ("It costs 12 dollars, 3 each", "3"),  # no phrase, no box: the last number
        ("The total is $1\\,000\\,000$.", "1000000"),  # the last number, separators joined
        ("\\boxed{1\\,000\\,000}", "1000000"),
        ("about 1{,}000 of them", "1000"),
        ("the answer is", None),
        ("nothing here", None),
    ],
)
def test_qwen25_math_extraction_order(text: str, expected: str | None) -> None:
    assert qwen25_math_answer(text) == expected


def test_thousands_separators_are_joined_only_between_digit_groups() -> None:
    assert join_thousands("1\\,000\\,000 and 10{,}000 and 2~500 and 3\\;141") == "1000000 and 10000 and 2500 and 3141"
    assert join_thousands("x\\,000, 1\\,00, 1\\,0000, a{,}b") == "x\\,000, 1\\,00, 1\\,0000, a{,}b"
    assert last_number("total: 1\\,250\\,000") == "1250000"


@pytest.mark.parametrize(
    ("reference", "output", "extracted"),
    [
        ("\\frac{1}{2}", "Each gets half. The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("0.5", "So the final answer is: $\\dfrac{1}{2}$", "\\dfrac{1}{2}"),
        ("1000000", "\\boxed{1\\,000\\,000}", "1000000"),
        ("1\\,000\\,000", "\\boxed{1000000}", "1000000"),  # the reference's separators too
        ("10{,}000", "The answer is $10\\,000$.", "10000"),
        ("1000", "She saved $1{,}000$ in total.", "1000"),
    ],
)
def test_math_grades_answers_in_words_and_thousands_separators(reference: str, output: str, extracted: str) -> None:
    assert _grade("math", {}, reference, output) == (1.0, extracted)


def test_math_answer_in_words_is_not_confused_with_the_last_number() -> None:
    assert _grade("math", {}, "2", "The answer is $\\frac{1}{2}$.") == (0.0, "\\frac{1}{2}")
    assert _grade("math", {}, "100", "\\boxed{1\\,000}") == (0.0, "1000")  # 1*0*0 = 0 is not 100 either
