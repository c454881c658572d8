"""Held-out accuracy on the toy task: the framework's ``exact`` evaluator plus derivation validity.

Greedy decoding and grading go through ``vcrd eval`` (:func:`vcrd_core.evaluation.run.run_evaluation`) with
the ``exact`` evaluator, whose answer extraction is the grammar's own (``extract:
vcrd_arithmetic.grammar:final_answer``, the integer after the last ``=``), so the demo grades exactly as a
user's ``vcrd eval`` does. From the same samples this module adds what ``exact`` cannot see:

* ``accuracy``: the ``exact`` score (the extracted integer equals the reference, Python's value);
* ``valid``: the whole response is a correct step-by-step derivation (:func:`grammar.is_complete`).

:func:`grid_stage` plugs it into a ``vcrd grid`` as a stage (``stages: [..., "vcrd_arithmetic.evaluate:grid_stage"]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vcrd_arithmetic.grammar import evaluate, final_answer, is_complete
from vcrd_core.config.models import RunConfig
from vcrd_core.errors import ConfigError
from vcrd_core.evaluation.run import run_evaluation
from vcrd_core.grid.spec import produces
from vcrd_core.runs.console import console

#: The ``exact`` evaluator with the task's extraction (its dataset path is filled in from ``data.eval``).
EXTRACT = "vcrd_arithmetic.grammar:final_answer"


def grade(prompt: str, response: str) -> dict[str, bool]:
    """``accuracy`` and ``valid`` of one response to one prompt (see the module docstring)."""
    return {
        "accuracy": final_answer(response) == evaluate(prompt),
        "valid": is_complete(prompt, response),
    }


def exact_evaluators(eval_file: str | Path) -> list[dict[str, Any]]:
    """``evaluation.evaluators`` of the toy task: ``exact`` with the grammar's extraction on ``eval_file``."""
    return [{"name": "exact", "params": {"extract": EXTRACT, "datasets": [{"name": "test", "path": str(eval_file)}]}}]


def held_out_accuracy(config: RunConfig, model: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """``vcrd eval`` of ``model`` with ``config.evaluation`` (``exact``), then ``accuracy``, ``valid`` and ``n``
    from its ``samples.jsonl`` in ``out_dir``."""
    run_evaluation(config, model=str(model), out_dir=str(out_dir), console=console(stderr=True, quiet=True))
    samples = [json.loads(line) for line in (Path(out_dir) / "samples.jsonl").read_text().splitlines() if line]
    if not samples:
        raise ConfigError("evaluation.evaluators", f"no sample in {out_dir}/samples.jsonl")
    n = len(samples)
    return {
        "accuracy": sum(bool(s["correct"]) for s in samples) / n,
        "valid": sum(is_complete(s["prompt"], s["output"]) for s in samples) / n,
        "n": n,
    }


@produces("accuracy", "valid", "n")
def grid_stage(config: RunConfig, cell_dir: Path) -> dict[str, Any]:
    """A ``vcrd grid`` stage: grade the cell's trained student (``<output.dir>/final``) on ``evaluation``."""
    if not config.evaluation.evaluators:
        raise ConfigError("evaluation.evaluators", "the arithmetic grading stage needs the `exact` evaluator there")
    return held_out_accuracy(config, Path(config.output.dir) / "final", Path(cell_dir) / "eval")
