"""Hook specifications of the ``vcrd`` plugin project (markers and specs only)."""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "vcrd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vcrd_register_divergences() -> list[type]:
    """Return divergence classes (subclasses of :class:`vcrd_core.Divergence`)."""


@hookspec
def vcrd_register_weighting() -> list[type]:
    """Return weighting-rule classes (subclasses of :class:`vcrd_core.WeightingRule`)."""


@hookspec
def vcrd_register_judges() -> list[type]:
    """Return judge classes (subclasses of :class:`vcrd_core.Judge`)."""


@hookspec
def vcrd_register_evaluators() -> list[type]:
    """Return evaluator classes (subclasses of :class:`vcrd_core.evaluation.evaluator.Evaluator`)."""


@hookspec
def vcrd_register_generators() -> list[type]:
    """Return rollout-generator classes (subclasses of :class:`vcrd_core.rollouts.generator.Generator`)."""


@hookspec
def vcrd_register_mixing() -> list[type]:
    """Return mixing-rule classes (subclasses of :class:`vcrd_core.rollouts.mixing.MixingRule`): where each
    micro-batch's student-prefix sequences come from under ``on_policy`` (fresh, replayed, or the data)."""


@hookspec
def vcrd_on_run_start(config: Any, output_dir: str) -> None:
    """Called once when a run starts, with the resolved config and its output directory."""


@hookspec
def vcrd_on_step_end(step: int, metrics: dict[str, float]) -> None:
    """Called after every optimizer step with that step's metrics (for loggers)."""


@hookspec
def vcrd_on_evaluation_end(step: int, results: dict[str, float]) -> None:
    """Called after every evaluation with its results (for loggers)."""


@hookspec
def vcrd_on_run_end(output_dir: str, summary: dict[str, Any]) -> None:
    """Called once when a run ends, with its summary."""
