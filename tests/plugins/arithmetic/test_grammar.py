"""The arithmetic grammar: reductions, derivations, prefix checks, against plain references.

References: Python's own ``eval`` for values, and brute-force enumeration of every derivation for
prefix validity (the grammar's prefix checker never enumerates).
"""

from __future__ import annotations

import itertools
import math
import random
import re

import pytest
from vcrd_arithmetic import grammar as A

from vcrd_core.errors import VcrdError


def random_expression(rng: random.Random, n_operands: int, negative_first: bool = False) -> str:
    text = A.random_problem(rng, n_operands)[:-1]
    if negative_first and not text.startswith("0"):
        text = "-" + text
    return text


# --- parsing and values ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["7", "-7", "0", "2*3+4*5", "-1+20", "12*0-345", "-3*4*5"])
def test_parse_then_format_gives_back_the_canonical_text(text: str) -> None:
    assert str(A.parse_expression(text)) == text


def test_parse_reads_numbers_and_operators_with_a_negative_first_number() -> None:
    parsed = A.parse_expression("-1+20*3")
    assert parsed.numbers == (-1, 20, 3)
    assert parsed.ops == ("+", "*")


@pytest.mark.parametrize(
    "text",
    ["", "2+", "+2", "2++3", "2+-3", "02+3", "2+03", "-0+1", "2 + 3", "(2+3)", "2/3", "2=3", "--2", "2*-3"],
)
def test_parse_refuses_non_canonical_or_malformed_expressions_in_one_line(text: str) -> None:
    with pytest.raises(VcrdError) as info:
        A.parse_expression(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text) in message


def test_evaluate_matches_python_eval_on_random_expressions() -> None:
    rng = random.Random(0)
    for _ in range(500):
        text = random_expression(rng, rng.randint(2, 7), negative_first=rng.random() < 0.3)
        assert A.evaluate(text) == eval(text), text


def test_evaluate_accepts_the_prompt_form() -> None:
    assert A.evaluate("2*3+4*5=") == 26


# --- one reduction step ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "steps"),
    [
        ("1-2+3", ["-1+3"]),  # left-associativity: only the leftmost +/-
        ("2+3*4", ["2+12"]),  # precedence: the + has a * operand
        ("2*3*4", ["6*4", "2*12"]),  # any * of two numbers
        ("2*3+4*5", ["6+4*5", "2*3+20"]),
        ("1+2+3+4", ["3+3+4"]),
        ("2-3*4-5", ["2-12-5"]),
        ("2*3-4", ["6-4"]),
        ("9-2*3*4+1", ["9-6*4+1", "9-2*12+1"]),
        ("-1*3+2", ["-3+2"]),  # a negative first number takes part in a product
        ("-1-3", ["-4"]),
        ("1-5*2", ["1-10"]),
        ("1-10", ["-9"]),  # the first number becomes negative
        ("1*1*1", ["1*1"]),  # two reductions with one spelling are one step
        ("26", []),
    ],
)
def test_next_steps_follow_precedence_and_left_associativity(expression: str, steps: list[str]) -> None:
    assert A.next_steps(expression) == steps


def _preserves_value_for_all_operands(ops: tuple[str, ...], i: int, rng: random.Random) -> bool:
    """Whether reducing operator ``i`` first is value-preserving as an identity in the operands."""
    for _ in range(30):
        values = [rng.randint(-40, 40) for _ in range(len(ops) + 1)]
        full = "".join(f"({v})" + o for v, o in zip(values, [*ops, ""], strict=True))
        grouped = "".join(
            ("(" if j == i else "") + f"({v})" + (")" if j == i + 1 else "") + o
            for j, (v, o) in enumerate(zip(values, [*ops, ""], strict=True))
        )
        if eval(full) != eval(grouped):
            return False
    return True


def test_reducible_operators_are_the_value_preserving_ones_restricted_to_left_associative_addition() -> None:
    """Reference: an operator may go first iff grouping it first keeps the value for all operands and,
    for ``+``/``-``, it is the leftmost one (``a+b-c`` keeps its value grouped as ``a+(b-c)`` but the
    grammar reduces left to right)."""
    rng = random.Random(1)
    for n_ops in range(1, 6):
        for ops in itertools.product(A.OPERATORS, repeat=n_ops):
            expression = A.Expression(tuple(range(2, n_ops + 3)), ops)
            leftmost_additive = next((j for j, o in enumerate(ops) if o != "*"), None)
            expected = [
                i
                for i in range(n_ops)
                if (ops[i] == "*" or i == leftmost_additive) and _preserves_value_for_all_operands(ops, i, rng)
            ]
            assert A.reducible_operators(expression) == expected, "".join(ops)


def test_every_next_step_has_one_operator_fewer_and_the_same_value() -> None:
    rng = random.Random(2)
    for _ in range(300):
        text = random_expression(rng, rng.randint(2, 6), negative_first=rng.random() < 0.3)
        steps = A.next_steps(text)
        assert steps, text  # something is always reducible
        assert len(steps) == len(set(steps))
        for step in steps:
            assert len(A.parse_expression(step).ops) == len(A.parse_expression(text).ops) - 1
            assert eval(step) == eval(text), (text, step)


# --- derivations -----------------------------------------------------------------------------------


def test_derivations_of_the_spec_example_are_exactly_the_two_responses() -> None:
    assert sorted(A.derivations("2*3+4*5=")) == sorted(["6+4*5=6+20=26", "2*3+20=6+20=26"])


def test_every_intermediate_expression_of_every_derivation_has_the_problem_value() -> None:
    rng = random.Random(3)
    for _ in range(60):
        prompt = A.random_problem(rng, rng.randint(2, 5))
        value = eval(prompt[:-1])
        found = A.derivations(prompt)
        assert len(found) == len(set(found)) == A.count_derivations(prompt)
        for response in found:
            chain = response.split("=")
            assert len(chain) == prompt.count("+") + prompt.count("-") + prompt.count("*")
            assert all(eval(step) == value for step in chain), response
            assert chain[-1] == str(value)
            assert A.final_answer(response) == value
            for before, after in zip([prompt[:-1], *chain[:-1]], chain, strict=True):
                assert after in A.next_steps(before)


def test_products_of_distinct_factors_can_be_reduced_in_any_order() -> None:
    # n numbers > 1: any adjacent pair may go first, so (n-1)! derivations with distinct spellings.
    assert A.count_derivations("2*3*5*7=") == math.factorial(3)
    assert len(A.derivations("2*3*5*7=")) == 6
    assert A.count_derivations("2*3*4*5*6*7*8*9=") == math.factorial(7)


def test_sums_have_one_derivation() -> None:
    assert A.derivations("1+2-3+4=") == ["3-3+4=0+4=4"]


def test_repeated_spellings_are_counted_once() -> None:
    assert A.derivations("1*1*1=") == ["1*1=1"]


def test_derivations_refuses_to_enumerate_beyond_max_count() -> None:
    with pytest.raises(VcrdError, match="5040 derivations, more than max_count=100"):
        A.derivations("2*3*4*5*6*7*8*9=", max_count=100)


def test_canonical_derivation_always_takes_the_leftmost_step() -> None:
    assert A.canonical_derivation("2*3+4*5=") == "6+4*5=6+20=26"
    assert A.canonical_derivation("2*3*4") == "6*4=24"
    rng = random.Random(4)
    for _ in range(50):
        prompt = A.random_problem(rng, rng.randint(2, 5))
        canonical = A.canonical_derivation(prompt)
        assert canonical == A.derivations(prompt)[0]  # enumeration order is leftmost-first
        assert A.is_complete(prompt, canonical)


def test_a_problem_without_an_operator_is_refused() -> None:
    with pytest.raises(VcrdError, match="no operator"):
        A.derivations("5=")
    with pytest.raises(VcrdError, match="no operator"):
        A.is_valid_prefix("5=", "5")


# --- random problems -------------------------------------------------------------------------------


def test_random_problem_is_a_prompt_of_single_digits_and_is_reproducible() -> None:
    for n in (2, 3, 5):
        prompt = A.random_problem(random.Random(5), n)
        assert re.fullmatch(rf"[0-9]([+\-*][0-9]){{{n - 1}}}=", prompt), prompt
        assert prompt == A.random_problem(random.Random(5), n)
    seen = {A.random_problem(random.Random(seed), 3) for seed in range(200)}
    assert len(seen) > 100
    assert {op for prompt in seen for op in prompt if op in "+-*"} == {"+", "-", "*"}


@pytest.mark.parametrize("n", [1, 0, -3, 2.0, True])
def test_random_problem_refuses_fewer_than_two_operands(n: object) -> None:
    with pytest.raises(VcrdError, match="n_operands must be an integer >= 2"):
        A.random_problem(random.Random(0), n)  # type: ignore[arg-type]


# --- prefixes --------------------------------------------------------------------------------------


def reference_is_valid_prefix(prompt: str, prefix: str) -> bool:
    return any(d.startswith(prefix) for d in A.derivations(prompt))


def test_is_valid_prefix_agrees_with_brute_force_enumeration() -> None:
    rng = random.Random(6)
    for _ in range(40):
        prompt = A.random_problem(rng, rng.randint(2, 4))
        for response in A.derivations(prompt):
            for cut in range(len(response) + 1):
                prefix = response[:cut]
                assert A.is_valid_prefix(prompt, prefix)
                for char in A.ALPHABET:
                    assert A.is_valid_prefix(prompt, prefix + char) == reference_is_valid_prefix(
                        prompt, prefix + char
                    ), (prompt, prefix + char)


def test_a_digit_can_continue_a_number_mid_step() -> None:
    prompt = "2*3+4*5="
    assert A.is_valid_prefix(prompt, "6+4*5=6+2")
    assert A.is_valid_prefix(prompt, "6+4*5=6+20")  # `20` is the whole product
    assert not A.is_valid_prefix(prompt, "6+4*5=6+2=")  # `6+2` is not a step
    assert not A.is_valid_prefix(prompt, "6+4*5=6+26")


def test_several_first_steps_are_valid_at_the_start() -> None:
    assert A.is_valid_prefix("2*3+4*5=", "6")
    assert A.is_valid_prefix("2*3+4*5=", "2")
    assert not A.is_valid_prefix("2*3+4*5=", "4")


def test_negative_first_numbers_are_valid_responses() -> None:
    assert A.is_valid_prefix("1-2+3=", "-")
    assert A.is_complete("1-2+3=", "-1+3=2")
    assert A.first_invalid_index("1-2+3=", "1-5=-4") == 0  # `2+3` first breaks left-associativity
    assert A.is_complete("1-5*2=", "1-10=-9")
    assert A.is_complete("-2*3+1=", "-6+1=-5")


def test_first_invalid_index_points_at_the_first_wrong_character() -> None:
    assert A.first_invalid_index("2*3+4*5=", "6+4*5=10*5=50") == 6
    assert A.first_invalid_index("2*3+4*5=", "6+4*5=6+21=27") == 9
    assert A.first_invalid_index("2*3+4*5=", "6+4*5=6+20=26") is None
    assert A.first_invalid_index("2*3+4*5=", "6+4*5=6+20=26=") == 13  # nothing follows the value
    assert A.first_invalid_index("2*3+4*5=", "6+4*5=") is None


def test_is_complete_only_for_whole_correct_derivations() -> None:
    prompt = "2*3+4*5="
    assert A.is_complete(prompt, "2*3+20=6+20=26")
    assert not A.is_complete(prompt, "2*3+20=6+20=2")
    assert not A.is_complete(prompt, "2*3+20=6+20")
    assert not A.is_complete(prompt, "26")  # skipping the steps is not a derivation
    assert not A.is_complete(prompt, "")


def test_prefix_state_forks_without_sharing_state() -> None:
    start = A.PrefixState.start("2*3+4*5=")
    left, right = start.step("6"), start.step("2")
    assert left is not None and right is not None
    assert left.candidates == ("6+4*5",) and right.candidates == ("2*3+20",)
    assert start.candidates == ("6+4*5", "2*3+20")
    assert start.feed("6+4*5=6+20=26").complete  # type: ignore[union-attr]


def test_next_characters_lists_every_valid_continuation() -> None:
    state = A.PrefixState.start("2*3+4*5=")
    assert state.next_characters() == "26"
    after = state.feed("6+4*5=6+2")
    assert after is not None and after.next_characters() == "0"
    done = state.feed("6+4*5=6+20=26")
    assert done is not None and done.next_characters() == "" and done.complete


def test_prompt_with_and_without_the_trailing_equals_sign_mean_the_same_problem() -> None:
    assert A.derivations("2*3+4") == A.derivations("2*3+4=")
    assert A.is_valid_prefix("2*3+4", "6+") == A.is_valid_prefix("2*3+4=", "6+")


def test_prefix_check_of_a_long_problem_does_not_enumerate() -> None:
    prompt = "2*3*4*5*6*7*8*9*2*3*4*5="  # 11! derivations: far too many to list
    response = A.canonical_derivation(prompt)
    assert A.is_complete(prompt, response)
    assert A.final_answer(response) == eval(prompt[:-1])


# --- final answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "answer"),
    [("6+20=26", 26), ("26", 26), ("-1+3=2", 2), ("1-10=-9", -9), ("0", 0)],
)
def test_final_answer_reads_the_integer_after_the_last_equals_sign(response: str, answer: int) -> None:
    assert A.final_answer(response) == answer


@pytest.mark.parametrize("response", ["", "6+4*5", "6+20=", "6+20=026", "6+20=-0", "26x", "=-"])
def test_final_answer_is_none_when_the_response_does_not_end_in_an_integer(response: str) -> None:
    assert A.final_answer(response) is None
