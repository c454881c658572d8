"""Evaluation: the evaluator interface (the ``evaluators`` kind), the runner and ``vcrd eval``."""
