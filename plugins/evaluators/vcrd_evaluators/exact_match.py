"""``exact``: exact or normalised match of an extracted answer against the reference.

``extract`` names a built-in extraction (:data:`vcrd_evaluators.answers.EXTRACTORS`) or any function as
``module:function`` (text -> answer or None), so that a task brings its own without code here: the toy
arithmetic task uses ``extract: vcrd_arithmetic.grammar:final_answer`` (the integer after the last ``=``).
A task may also subclass :class:`ExactEvaluator` and override :meth:`ExactEvaluator.extract`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from pydantic import Field

from vcrd_core.errors import ParamError
from vcrd_core.evaluation.evaluator import EvalItem, Evaluator, EvaluatorParams, Verdict
from vcrd_evaluators.answers import EXTRACTORS


def resolve_extractor(spec: str) -> Callable[[str], Any]:
    """A built-in extraction by name, or the function ``module:function``; a ParamError otherwise."""
    if spec in EXTRACTORS:
        return EXTRACTORS[spec]
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ParamError(
            "extract", f"'{spec}' is neither a built-in extraction ({', '.join(EXTRACTORS)}) nor 'module:function'"
        )
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ParamError("extract", f"cannot import '{spec}': {exc}") from None
    if not callable(found):
        raise ParamError("extract", f"'{spec}' is not callable")
    return found


def normalize(value: Any) -> str:
    """Case-folded, whitespace collapsed, a trailing period dropped."""
    text = re.sub(r"\s+", " ", str(value)).strip().casefold()
    return text[:-1].rstrip() if text.endswith(".") else text


class ExactEvaluator(Evaluator):
    """Exact (or normalised) match of the extracted answer; extraction pluggable (``module:function``)."""

    name = "exact"
    template = "plain"

    class Params(EvaluatorParams):
        extract: str = Field("strip", description="A built-in extraction or 'module:function' (text -> answer).")
        normalized: bool = Field(True, description="Compare case-folded with whitespace collapsed.")

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self._extract = resolve_extractor(self.params.extract)

    def extract(self, output: str) -> Any:
        """The answer in ``output`` (``None``: none found)."""
        return self._extract(output)

    def grade(self, item: EvalItem, output: str) -> Verdict:
        answer = self.extract(output)
        if item.reference is None:
            return Verdict(None, answer, f"dataset '{item.dataset}' row {item.index} has no reference answer")
        if answer is None:
            return Verdict(0.0, None)
        same = (
            normalize(answer) == normalize(item.reference)
            if self.params.normalized
            else str(answer) == str(item.reference)
        )
        return Verdict(float(same), answer)
