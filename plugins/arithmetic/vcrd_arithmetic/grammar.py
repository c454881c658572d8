"""The grammar of the embedded toy task: step-by-step integer arithmetic (DESIGN.md; README "The toy task").

One module shared by the data generator, the ``oracle`` judge and the ``exact`` evaluator, so that
all three agree on what a correct derivation is.

**Problem.** A prompt is an expression of single-digit operands and ``+ - *`` followed by ``=``,
e.g. ``2*3+4*5=``. **Response.** Each intermediate expression after one reduction, joined by ``=``,
ending in the value: ``6+4*5=6+20=26`` or ``2*3+20=6+20=26``.

**One reduction step** of :math:`e = n_0 \\,o_1\\, n_1 \\cdots o_k\\, n_k` is

* :math:`n_{i-1} * n_i \\to (n_{i-1} n_i)` for any ``*`` (both operands are numbers), or
* :math:`n_{j-1} \\pm n_j \\to (n_{j-1} \\pm n_j)` for the *leftmost* ``+``/``-`` ``o_j``, only when
  neither operand belongs to a ``*`` (precedence, then left-associativity). Everything left of the
  leftmost ``+``/``-`` is a ``*``, so this step only ever combines the first two numbers.

Hence only the first number can become negative (``1-2+3 -> -1+3``); a leading ``-`` is its sign.
Numbers are written canonically (``str(int)``: no leading zeros, no ``-0``, no spaces, no
parentheses), so every intermediate expression has exactly one spelling and "valid" is decided by
string comparison. Every step preserves the value, so every derivation ends in it.

Functions that take a *problem* accept the expression with or without the prompt's trailing ``=``
(``"2*3+4"`` or ``"2*3+4="``); :func:`random_problem` returns the prompt form.

**Complexity.** A problem with :math:`n` operands has :math:`k = n-1` operators and every
derivation has exactly :math:`k` steps. The number of derivations can reach :math:`(n-1)!`
(all ``*``: any adjacent pair may go first), so :func:`derivations` refuses to enumerate beyond a
limit and :func:`count_derivations` counts by memoised recursion over the distinct intermediate
expressions (at most :math:`2^{n-1}` of them). Prefix checks never enumerate: :class:`PrefixState`
walks the response once, keeping only the next steps of the last complete expression that still
match the text typed since the last ``=``; a character costs :math:`O(k)` string comparisons and an
``=`` one memoised call of :func:`next_steps` (:math:`O(k)` candidates of length :math:`O(n)`).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

from vcrd_core.errors import VcrdError

#: Every character of a prompt or response (the char tokenizer's non-special vocabulary).
ALPHABET = "0123456789+-*="
OPERATORS = "+-*"

_NUMBER = r"(?:0|[1-9][0-9]*)"
_EXPRESSION = re.compile(rf"-?{_NUMBER}(?:[+\-*]{_NUMBER})*")
_INTEGER = re.compile(rf"-?{_NUMBER}")
_TOKEN = re.compile(rf"{_NUMBER}|[+\-*]")

#: :func:`derivations` refuses to list more than this many unless told otherwise.
MAX_DERIVATIONS = 100_000


@dataclass(frozen=True)
class Expression:
    """A parsed expression: ``numbers[0] ops[0] numbers[1] ... ops[-1] numbers[-1]``."""

    numbers: tuple[int, ...]
    ops: tuple[str, ...]

    def __str__(self) -> str:
        parts = [str(self.numbers[0])]
        for op, number in zip(self.ops, self.numbers[1:], strict=True):
            parts.append(op)
            parts.append(str(number))
        return "".join(parts)

    @property
    def is_value(self) -> bool:
        """True when nothing is left to reduce (the expression is its own value)."""
        return not self.ops


def parse_expression(text: str) -> Expression:
    """Parse one canonical expression (``-1+20*3``); a :class:`VcrdError` says what is wrong."""
    if not isinstance(text, str):
        raise VcrdError(f"arithmetic expression must be a string, got {type(text).__name__}")
    if not _EXPRESSION.fullmatch(text):
        bad = set(text) - set(OPERATORS + "0123456789")
        if bad:
            why = f"character {sorted(bad)[0]!r} is not a digit or one of '{OPERATORS}'"
        elif text == "":
            why = "it is empty"
        else:
            why = (
                "expected numbers without leading zeros joined by single '+', '-' or '*' (only the first may be signed)"
            )
        raise VcrdError(f"not an arithmetic expression: {text!r}: {why}")
    signed = text.startswith("-")
    tokens = _TOKEN.findall(text[1:] if signed else text)
    numbers = [int(t) for t in tokens[0::2]]
    if signed:
        if numbers[0] == 0:
            raise VcrdError(f"not an arithmetic expression: {text!r}: write '0', not '-0'")
        numbers[0] = -numbers[0]
    return Expression(tuple(numbers), tuple(tokens[1::2]))


def _problem(text: str) -> Expression:
    """The expression of a problem given as ``"2*3+4"`` or as the prompt ``"2*3+4="``."""
    expression = parse_expression(text[:-1] if isinstance(text, str) and text.endswith("=") else text)
    if expression.is_value:
        raise VcrdError(f"arithmetic problem {text!r} has no operator; a problem needs at least two operands")
    return expression


def evaluate(expression: str) -> int:
    """The value of an expression, ``*`` before ``+``/``-``, left to right (computed directly, not by
    reduction, so it can check the reductions)."""
    parsed = parse_expression(expression.removesuffix("="))
    total, term, sign = 0, parsed.numbers[0], 1
    for op, number in zip(parsed.ops, parsed.numbers[1:], strict=True):
        if op == "*":
            term *= number
        else:
            total += sign * term
            term, sign = number, (1 if op == "+" else -1)
    return total + sign * term


def _reduce(expression: Expression, i: int) -> Expression:
    """Apply operator ``i`` to its two operands."""
    a, b, op = expression.numbers[i], expression.numbers[i + 1], expression.ops[i]
    value = a * b if op == "*" else a + b if op == "+" else a - b
    numbers = (*expression.numbers[:i], value, *expression.numbers[i + 2 :])
    return Expression(numbers, expression.ops[:i] + expression.ops[i + 1 :])


def reducible_operators(expression: Expression) -> list[int]:
    """Indices of the operators one step may apply, left to right: every ``*``, and the leftmost
    ``+``/``-`` when neither neighbour operator is a ``*``."""
    ops = expression.ops
    found = [i for i, op in enumerate(ops) if op == "*"]
    additive = next((i for i, op in enumerate(ops) if op != "*"), None)
    if additive is not None:
        left_free = additive == 0 or ops[additive - 1] != "*"
        right_free = additive == len(ops) - 1 or ops[additive + 1] != "*"
        if left_free and right_free:
            found.append(additive)
    return sorted(found)


@functools.lru_cache(maxsize=65_536)
def _next_steps(expression: str) -> tuple[str, ...]:
    parsed = parse_expression(expression)
    steps: list[str] = []
    for i in reducible_operators(parsed):
        step = str(_reduce(parsed, i))
        if step not in steps:  # `1*1*1` reaches `1*1` two ways: one spelling, one step
            steps.append(step)
    return tuple(steps)


def next_steps(expression: str) -> list[str]:
    """Every distinct expression one valid reduction step leads to, ordered by the position of the
    reduced operator (so ``next_steps(e)[0]`` is the leftmost step). Empty for a bare number."""
    return list(_next_steps(str(parse_expression(expression.removesuffix("=")))))


@functools.lru_cache(maxsize=65_536)
def _count(expression: str) -> int:
    steps = _next_steps(expression)
    return sum(_count(step) for step in steps) if steps else 1


def count_derivations(expression: str) -> int:
    """How many distinct responses :func:`derivations` would list (memoised; never enumerates)."""
    return _count(str(_problem(expression)))


def derivations(expression: str, max_count: int = MAX_DERIVATIONS) -> list[str]:
    """Every full derivation (response string) of a problem, leftmost-first order.

    Refuses (rather than exhausting memory) when there are more than ``max_count``; use
    :class:`PrefixState` or :func:`is_valid_prefix` to check a response without enumerating.
    """
    start = str(_problem(expression))
    count = _count(start)
    if count > max_count:
        raise VcrdError(
            f"arithmetic problem {expression!r} has {count} derivations, more than max_count={max_count}; "
            "check responses with is_valid_prefix instead of enumerating them"
        )

    def walk(current: str) -> list[list[str]]:
        steps = _next_steps(current)
        if not steps:
            return [[]]
        return [[step, *rest] for step in steps for rest in walk(step)]

    return ["=".join(chain) for chain in walk(start)]


def canonical_derivation(expression: str) -> str:
    """The derivation that always takes the leftmost valid step (one deterministic answer for SFT)."""
    chain = [str(_problem(expression))]
    while steps := _next_steps(chain[-1]):
        chain.append(steps[0])
    return "=".join(chain[1:])


def random_problem(rng: random.Random, n_operands: int) -> str:
    """A prompt (``"2*3+4*5="``) of ``n_operands`` uniform single digits joined by uniform ``+ - *``."""
    if isinstance(n_operands, bool) or not isinstance(n_operands, int) or n_operands < 2:
        raise VcrdError(f"n_operands must be an integer >= 2, got {n_operands!r}")
    digits = [str(rng.randrange(10)) for _ in range(n_operands)]
    ops = [rng.choice(OPERATORS) for _ in range(n_operands - 1)]
    return "".join(d + o for d, o in zip(digits, [*ops, "="], strict=True))


def final_answer(response: str) -> int | None:
    """The integer after the response's last ``=`` (the whole response if it has none), or ``None``
    when that text is not a canonical integer. Says nothing about whether the steps were right."""
    last = response.rsplit("=", 1)[-1]
    if not _INTEGER.fullmatch(last) or last == "-0":
        return None
    return int(last)


@dataclass(frozen=True)
class PrefixState:
    """Where a response prefix stands in the derivations of a problem (immutable, cheap to fork).

    ``expression`` is the last complete expression (the problem itself at the start), ``partial``
    the text written since the last ``=``, and ``candidates`` the next steps of ``expression`` that
    start with ``partial``. The prefix is valid iff ``candidates`` is non-empty: then it extends to a
    correct derivation. :meth:`feed` returns ``None`` at the first character that breaks validity.
    """

    expression: str
    partial: str
    candidates: tuple[str, ...]

    @classmethod
    def start(cls, prompt: str) -> PrefixState:
        """The state before the first response character."""
        problem = str(_problem(prompt))
        return cls(problem, "", _next_steps(problem))

    def step(self, char: str) -> PrefixState | None:
        """The state after one more character, or ``None`` if the prefix stops being valid.

        Mid-number a digit may still be valid (after ``6+2`` comes ``0`` when ``6+20`` is a next step);
        ``=`` is valid only right after a whole next step that still has something to reduce.
        """
        if char == "=":
            if self.partial in self.candidates:
                following = _next_steps(self.partial)
                if following:
                    return PrefixState(self.partial, "", following)
            return None
        partial = self.partial + char
        kept = tuple(c for c in self.candidates if c.startswith(partial))
        return PrefixState(self.expression, partial, kept) if kept else None

    def feed(self, text: str) -> PrefixState | None:
        """The state after ``text``, or ``None`` if some character of it breaks validity."""
        state: PrefixState | None = self
        for char in text:
            state = state.step(char)
            if state is None:
                return None
        return state

    def next_characters(self) -> str:
        """Every character that keeps the prefix valid, in :data:`ALPHABET` order (for constrained
        decoding or for inspecting a branching point); see :attr:`complete` for the end of the response."""
        return "".join(char for char in ALPHABET if self.step(char) is not None)

    @property
    def complete(self) -> bool:
        """True when the response so far is a whole correct derivation (it may end here: EOS is valid)."""
        return self.partial in self.candidates and not _next_steps(self.partial)


def first_invalid_index(prompt: str, response: str) -> int | None:
    """Index of the first character of ``response`` after which it is no longer a prefix of a
    correct derivation of ``prompt``; ``None`` when the whole response is such a prefix."""
    state: PrefixState | None = PrefixState.start(prompt)
    for i, char in enumerate(response):
        state = state.step(char)
        if state is None:
            return i
    return None


def is_valid_prefix(prompt: str, response_prefix: str) -> bool:
    """True when ``response_prefix`` can still be completed to a correct derivation of ``prompt``."""
    return PrefixState.start(prompt).feed(response_prefix) is not None


def is_complete(prompt: str, response: str) -> bool:
    """True when ``response`` is a whole correct derivation of ``prompt`` (every step valid, ending in
    the value)."""
    state = PrefixState.start(prompt).feed(response)
    return state is not None and state.complete
