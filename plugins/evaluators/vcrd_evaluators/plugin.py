"""Entry point ``vcrd-evaluators``: the ``math``, ``code``, ``exact`` and ``pairwise`` evaluators."""

from __future__ import annotations

import vcrd_core
from vcrd_core.evaluation.evaluator import Evaluator
from vcrd_evaluators.code_exec import CodeEvaluator
from vcrd_evaluators.exact_match import ExactEvaluator
from vcrd_evaluators.math_answers import MathEvaluator
from vcrd_evaluators.pairwise_judge import PairwiseEvaluator

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_evaluators() -> list[type[Evaluator]]:
    return [MathEvaluator, CodeEvaluator, ExactEvaluator, PairwiseEvaluator]
