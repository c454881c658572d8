"""vcrd: Validity-Calibrated Reasoning Distillation — the core engine.

Stable public API: :func:`available`, :func:`create`, the component base classes and the kinds.

Importing the package imports none of them: each name is imported from its module on first use (a module
``__getattr__``), so that ``vcrd --help`` and ``vcrd --version`` never load torch. ``vcrd_core.Judge``,
``from vcrd_core import Judge`` and ``import vcrd_core.losses.objective`` work as they always did.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "IGNORE_INDEX": "vcrd_core.decision_points",
    "DecisionPoints": "vcrd_core.decision_points",
    "Stream": "vcrd_core.decision_points",
    "ConfigError": "vcrd_core.errors",
    "ParamError": "vcrd_core.errors",
    "PluginError": "vcrd_core.errors",
    "VcrdError": "vcrd_core.errors",
    "hookimpl": "vcrd_core.hookspecs",
    "Judge": "vcrd_core.judging.judge",
    "JudgeContext": "vcrd_core.judging.judge",
    "JudgeRequest": "vcrd_core.judging.judge",
    "JudgeScores": "vcrd_core.judging.judge",
    "Need": "vcrd_core.judging.judge",
    "RowJudge": "vcrd_core.judging.judge",
    "TokenJudge": "vcrd_core.judging.judge",
    "Divergence": "vcrd_core.losses.divergence",
    "SequenceStats": "vcrd_core.losses.divergence",
    "HiddenStreamInputs": "vcrd_core.losses.objective",
    "LMHead": "vcrd_core.losses.objective",
    "ObjectiveOutput": "vcrd_core.losses.objective",
    "Reduction": "vcrd_core.losses.objective",
    "StreamInputs": "vcrd_core.losses.objective",
    "StreamLoss": "vcrd_core.losses.objective",
    "VCRDObjective": "vcrd_core.losses.objective",
    "VcrdWeightWarning": "vcrd_core.losses.objective",
    "WeightingRule": "vcrd_core.losses.weighting",
    "Component": "vcrd_core.plugins.component",
    "ComponentSpec": "vcrd_core.plugins.component",
    "DIVERGENCES": "vcrd_core.plugins.kinds",
    "EVALUATORS": "vcrd_core.plugins.kinds",
    "GENERATORS": "vcrd_core.plugins.kinds",
    "JUDGES": "vcrd_core.plugins.kinds",
    "KINDS": "vcrd_core.plugins.kinds",
    "WEIGHTING": "vcrd_core.plugins.kinds",
    "DivergenceSpec": "vcrd_core.plugins.kinds",
    "EvaluatorSpec": "vcrd_core.plugins.kinds",
    "GeneratorSpec": "vcrd_core.plugins.kinds",
    "JudgeSpec": "vcrd_core.plugins.kinds",
    "Kind": "vcrd_core.plugins.kinds",
    "WeightingSpec": "vcrd_core.plugins.kinds",
    "PLUGIN_API_VERSION": "vcrd_core.plugins.manager",
    "available": "vcrd_core.plugins.registry",
    "create": "vcrd_core.plugins.registry",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports each name on first use
    from vcrd_core.decision_points import IGNORE_INDEX, DecisionPoints, Stream
    from vcrd_core.errors import ConfigError, ParamError, PluginError, VcrdError
    from vcrd_core.hookspecs import hookimpl
    from vcrd_core.judging.judge import Judge, JudgeContext, JudgeRequest, JudgeScores, Need, RowJudge, TokenJudge
    from vcrd_core.losses.divergence import Divergence, SequenceStats
    from vcrd_core.losses.objective import (
        HiddenStreamInputs,
        LMHead,
        ObjectiveOutput,
        Reduction,
        StreamInputs,
        StreamLoss,
        VCRDObjective,
        VcrdWeightWarning,
    )
    from vcrd_core.losses.weighting import WeightingRule
    from vcrd_core.plugins.component import Component, ComponentSpec
    from vcrd_core.plugins.kinds import (
        DIVERGENCES,
        EVALUATORS,
        GENERATORS,
        JUDGES,
        KINDS,
        WEIGHTING,
        DivergenceSpec,
        EvaluatorSpec,
        GeneratorSpec,
        JudgeSpec,
        Kind,
        WeightingSpec,
    )
    from vcrd_core.plugins.manager import PLUGIN_API_VERSION
    from vcrd_core.plugins.registry import available, create


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then cached in the package)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vcrd_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "DIVERGENCES",
    "EVALUATORS",
    "GENERATORS",
    "IGNORE_INDEX",
    "JUDGES",
    "KINDS",
    "PLUGIN_API_VERSION",
    "WEIGHTING",
    "Component",
    "ComponentSpec",
    "ConfigError",
    "DecisionPoints",
    "Divergence",
    "DivergenceSpec",
    "EvaluatorSpec",
    "GeneratorSpec",
    "HiddenStreamInputs",
    "Judge",
    "JudgeContext",
    "JudgeRequest",
    "JudgeScores",
    "JudgeSpec",
    "Kind",
    "LMHead",
    "Need",
    "ObjectiveOutput",
    "ParamError",
    "PluginError",
    "Reduction",
    "RowJudge",
    "SequenceStats",
    "Stream",
    "StreamInputs",
    "StreamLoss",
    "TokenJudge",
    "VCRDObjective",
    "VcrdError",
    "VcrdWeightWarning",
    "WeightingRule",
    "WeightingSpec",
    "__version__",
    "available",
    "create",
    "hookimpl",
]
