"""A third-party divergence, weighting rule and judge, registered exactly as the built-in ones are.

``hellinger``: the squared Hellinger distance ``H²(p, q) = 1 - Σ_v sqrt(p_v q_v)`` between the teacher's
``p`` and the student's ``q`` at one decision point (bounded, symmetric, zero iff ``p = q``).

``tempered_ratio``: ``w = (r_s / (r_t + ε))^γ`` — VCRD's ratio rule (paper Eq. 1) with its dynamic
range compressed (γ < 1) or sharpened (γ > 1); ``γ = 1`` is ``ratio``.

``no_repeat`` (in :mod:`vcrd_example_weighting.judge`): a token-scoring judge, ``r = repeat_score`` for a
token that repeats one of the previous ``window`` tokens, else 1.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

import vcrd_core
from vcrd_example_weighting.judge import NoRepeat

#: The plugin API this plugin was written against; vcrd refuses the plugin if it provides another.
VCRD_PLUGIN_API = 1


class Hellinger(vcrd_core.Divergence):
    """Squared Hellinger distance: 1 - sum_v sqrt(p_v q_v)."""

    name: ClassVar[str] = "hellinger"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        # [n, V] float32 log-probabilities -> [n]; the core owns softmax, chunking and gradients.
        return 1 - torch.exp(0.5 * (teacher_logp + student_logp)).sum(-1)


class TemperedRatio(vcrd_core.WeightingRule):
    """Tempered validity ratio: w = (r_s / (r_t + eps)) ** gamma."""

    name: ClassVar[str] = "tempered_ratio"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        gamma: float = Field(0.5, gt=0, description="Exponent; 1 gives the plain ratio.")
        eps: float = Field(1e-8, gt=0, description="Smoothing of the denominator (paper: 1e-8).")

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return (r_student / (r_teacher + self.params.eps)) ** self.params.gamma

    def may_be_nonpositive(self) -> bool:
        return False  # w > 0 wherever r_s > 0, like `ratio` (so `log_clamp` may wrap it)


@vcrd_core.hookimpl
def vcrd_register_divergences() -> list[type[vcrd_core.Divergence]]:
    return [Hellinger]


@vcrd_core.hookimpl
def vcrd_register_weighting() -> list[type[vcrd_core.WeightingRule]]:
    return [TemperedRatio]


@vcrd_core.hookimpl
def vcrd_register_judges() -> list[type[vcrd_core.Judge]]:
    return [NoRepeat]
