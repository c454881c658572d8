"""vcrd: Validity-Calibrated Reasoning Distillation — the core engine.

Stable public API: :func:`available`, :func:`create`, the component base classes and the kinds.
"""

from __future__ import annotations

from vcrd_core.decision_points import IGNORE_INDEX, DecisionPoints, Stream
from vcrd_core.errors import ConfigError, ParamError, PluginError, VcrdError
from vcrd_core.hookspecs import hookimpl
from vcrd_core.judging.judge import Judge, JudgeContext, JudgeRequest, JudgeScores, Need, RowJudge, TokenJudge
from vcrd_core.losses.divergence import Divergence
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

__version__ = "0.1.0"

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
