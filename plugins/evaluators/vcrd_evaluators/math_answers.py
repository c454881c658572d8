"""``math``: the Qwen2.5-Math protocol: the ``qwen25_math_cot`` prompt, greedy decoding, the answer extracted in
Qwen2.5-Math's order (the last ``\\boxed{}``, else what follows "the answer is", else "final answer is", else
the last number: :func:`vcrd_evaluators.answers.qwen25_math_answer`), LaTeX thousands separators joined in the
answer and the reference (``1\\,000``, ``1{,}000``), equivalence decided by ``math-verify`` (sympy: fractions,
LaTeX, intervals, units, percentages); Pass@1 per dataset and their average (paper Tables 1–2)."""

from __future__ import annotations

import threading
from typing import Any

from pydantic import Field

from vcrd_core.errors import VcrdError
from vcrd_core.evaluation.evaluator import EvalItem, Evaluator, EvaluatorParams, Verdict
from vcrd_evaluators.answers import join_thousands, qwen25_math_answer


def _math_verify() -> Any:
    try:
        import math_verify
    except ImportError:
        raise VcrdError("evaluator 'math' needs math-verify: pip install 'vcrd[eval]'") from None
    return math_verify


def equivalent(reference: Any, answer: str | None, timeout: int | None = 5) -> bool:
    """Whether ``answer`` equals ``reference`` as math-verify judges them (both read as LaTeX math, thousands
    separators joined)."""
    if answer is None or reference is None:
        return False
    reference, answer = join_thousands(str(reference)), join_thousands(answer)
    mv = _math_verify()
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    if threading.current_thread() is not threading.main_thread():
        timeout = None
    gold = mv.parse(f"${reference}$", parsing_timeout=timeout)
    pred = mv.parse(f"${answer}$", parsing_timeout=timeout)
    if not gold or not pred:
        return str(reference).strip() == answer.strip()
    return bool(mv.verify(gold, pred, timeout_seconds=timeout))


class MathEvaluator(Evaluator):
    """Math answers: last \\boxed{}, else "the answer is ...", else the last number; math-verify; Pass@1."""

    name = "math"
    template = "qwen25_math_cot"

    class Params(EvaluatorParams):
        timeout: int = Field(5, gt=0, description="Seconds math-verify may spend on one comparison.")

    def check(self) -> None:
        _math_verify()

    def grade(self, item: EvalItem, output: str) -> Verdict:
        answer = qwen25_math_answer(output)
        if item.reference is None:
            return Verdict(None, answer, f"dataset '{item.dataset}' row {item.index} has no reference answer")
        return Verdict(float(equivalent(item.reference, answer, self.params.timeout)), answer)
