"""The paper's weighting rules (SPEC "Weighting rules"; Eq. 1, Table 5, Table 10, Fig. 3, §10.4).

Each rule maps the judge's scores of the student's proposal ``r_s`` and of the teacher's proposal
``r_t`` (both in ``[0, 1]``, at the same prefix) to a per-decision-point weight ``w >= 0``.
The core (:meth:`vcrd_core.WeightingRule.__call__`) detaches, applies the rule's ``parity_weight``
where both proposals are the same token (its own formula at ``r_s = r_t``; exactly 1 for ``ratio``)
and refuses negative or NaN weights; these classes state only their formula.
Only the public ``vcrd_core`` API is used, as a third-party plugin would.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

import vcrd_core


def _build(spec: vcrd_core.WeightingSpec) -> vcrd_core.WeightingRule:
    """The nested rule: the instance :func:`vcrd_core.create` built (once, with its YAML path) before this one."""
    rule = spec.built
    assert isinstance(rule, vcrd_core.WeightingRule)
    return rule


class Ratio(vcrd_core.WeightingRule):
    """The VCRD rule w = r_s / (r_t + eps) (Eq. 1): < 1 attenuates, about 1 is parity, > 1 amplifies.

    .. math:: w_t = \\frac{r(c_{t-1}, a^S_t)}{r(c_{t-1}, a^T_t) + \\varepsilon}

    ``eps`` only keeps the division finite: with ``r_t -> 0`` the weight reaches ``r_s / eps``
    (``1e8`` by default), which the objective reports and warns about.
    """

    name: ClassVar[str] = "ratio"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        eps: float = Field(1e-8, gt=0, allow_inf_nan=False, description="epsilon of Eq. 1 (> 0).")

    params: Params

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return r_student / (r_teacher + self.params.eps)

    def parity_weight(self, r: torch.Tensor) -> torch.Tensor:
        """Exactly 1 where both proposals are the same token: parity by definition, where the formula
        ``r / (r + eps)`` would drift below 1 for tiny ``r``."""
        return torch.ones_like(r)

    def may_be_nonpositive(self) -> bool:
        # Zero only in the degenerate r_s = 0 case (which log_clamp maps to lo).
        return False


class Difference(vcrd_core.WeightingRule):
    """The additive rule w = max(r_s - r_t + offset, floor) (Table 10, LV-Joint-(rs-rt)).

    .. math:: w_t = \\max\\big(r_s - r_t + \\text{offset},\\ \\text{floor}\\big)

    With the defaults (offset 0, floor 0) this is the paper's literal rule: the point is dropped
    when the teacher's token is judged more valid. ``floor`` must be ``>= 0`` because weights are
    never negative (VCRD never reverses the direction of supervision).
    """

    name: ClassVar[str] = "difference"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        offset: float = Field(0.0, allow_inf_nan=False, description="added to r_s - r_t.")
        floor: float = Field(0.0, ge=0, allow_inf_nan=False, description="smallest weight (>= 0).")

    params: Params

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return torch.clamp(r_student - r_teacher + self.params.offset, min=self.params.floor)

    def may_be_nonpositive(self) -> bool:
        return self.params.floor <= 0 and self.params.offset <= 1


class StudentOnly(vcrd_core.WeightingRule):
    """The student-score rule w = r_s (Table 10, LV-Joint-rs): the teacher's score is ignored."""

    name: ClassVar[str] = "student_only"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    params: Params

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return r_student.clone()

    def may_be_nonpositive(self) -> bool:
        # Zero only in the degenerate r_s = 0 case.
        return False


class Constant(vcrd_core.WeightingRule):
    """A constant weight w = c (the paper's w = 1 baselines: SRKL and SKL+SRKL rows of Table 5)."""

    name: ClassVar[str] = "constant"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        c: float = Field(1.0, ge=0, allow_inf_nan=False, description="the weight of every decision point (>= 0).")

    params: Params

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return torch.full_like(r_student, self.params.c)

    def may_be_nonpositive(self) -> bool:
        return self.params.c <= 0

    def uses_scores(self) -> bool:
        return False


class Clamp(vcrd_core.WeightingRule):
    """An inner rule clipped to [min, max]: w = clip(inner, min, max) (Fig. 3).

    .. math:: w_t = \\min\\big(\\max(w^{\\text{inner}}_t, \\text{min}), \\text{max}\\big)

    ``max: 1`` disables amplification (Fig. 3's "w/o amplification", read as ``min(w, 1)``);
    the ``w = 1`` row is :class:`Constant`. ``inner`` is required: ``{name: ratio}`` for VCRD.
    """

    name: ClassVar[str] = "clamp"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inner: vcrd_core.WeightingSpec = Field(description="the rule whose weights are clipped, e.g. {name: ratio}.")
        min: float = Field(0.0, ge=0, allow_inf_nan=False, description="lower bound (>= 0).")
        max: float = Field(math.inf, ge=0, description="upper bound (default +inf: no upper bound).")

        @model_validator(mode="after")
        def _min_not_above_max(self) -> Clamp.Params:
            if self.min > self.max:
                raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
            return self

    params: Params

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.inner = _build(self.params.inner)

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.inner.weight(r_student, r_teacher), min=self.params.min, max=self.params.max)

    def parity_weight(self, r: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.inner.parity_weight(r), min=self.params.min, max=self.params.max)

    def may_be_nonpositive(self) -> bool:
        return self.params.max <= 0 or (self.params.min <= 0 and self.inner.may_be_nonpositive())

    def uses_scores(self) -> bool:
        return self.inner.uses_scores()


class LogClamp(vcrd_core.WeightingRule):
    """Log-space smoothing and symmetric clamping of an inner rule (VCRD-Prob, §10.4).

    .. math:: w_t = \\exp\\big(\\operatorname{clip}(\\gamma \\log w^{\\text{inner}}_t,\\ \\log lo,\\ \\log hi)\\big)
              \\in [lo, hi]

    With the paper's γ = 0.5, lo = 0.5, hi = 2 and the ``ratio`` inner rule. An inner weight of 0
    (``r_s = 0``) gives ``lo`` (the limit of the formula) without computing ``log 0``. An inner rule
    that can give ``w <= 0`` for a valid student token is refused when the rule is built, because
    the logarithm of such weights carries no meaning.
    """

    name: ClassVar[str] = "log_clamp"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inner: vcrd_core.WeightingSpec = Field(
            default_factory=lambda: vcrd_core.WeightingSpec(name="ratio"),
            description="the rule smoothed in log space (default {name: ratio}).",
        )
        gamma: float = Field(0.5, ge=0, allow_inf_nan=False, description="scale γ of log w (>= 0).")
        lo: float = Field(0.5, gt=0, allow_inf_nan=False, description="smallest weight (> 0).")
        hi: float = Field(2.0, gt=0, allow_inf_nan=False, description="largest weight (>= lo).")

        @model_validator(mode="after")
        def _lo_not_above_hi(self) -> LogClamp.Params:
            if self.lo > self.hi:
                raise ValueError(f"lo ({self.lo}) must be <= hi ({self.hi})")
            return self

    params: Params

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.inner = _build(self.params.inner)
        if self.inner.may_be_nonpositive():
            raise vcrd_core.ParamError(
                "inner",
                f"weighting rule '{self.inner.name}' with params {self.inner.params.model_dump()} can give weights "
                f"<= 0, whose logarithm log_clamp cannot take; use a rule with positive weights (ratio, student_only, "
                f"constant with c > 0, clamp with min > 0, difference with floor > 0)",
            )

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return self._smooth(self.inner.weight(r_student, r_teacher))

    def parity_weight(self, r: torch.Tensor) -> torch.Tensor:
        return self._smooth(self.inner.parity_weight(r))

    def _smooth(self, inner: torch.Tensor) -> torch.Tensor:
        """exp(clip(γ log inner, log lo, log hi)); an inner weight of 0 gives lo."""
        positive = inner > 0
        log_w = self.params.gamma * torch.log(torch.where(positive, inner, torch.ones_like(inner)))
        log_w = torch.clamp(log_w, min=math.log(self.params.lo), max=math.log(self.params.hi))
        w = torch.where(positive, torch.exp(log_w), torch.full_like(inner, self.params.lo))
        return torch.where(torch.isnan(inner), inner, w)  # a NaN inner weight stays visible to the core's check

    def may_be_nonpositive(self) -> bool:
        return False

    def uses_scores(self) -> bool:
        return self.inner.uses_scores()


RULES: tuple[type[vcrd_core.WeightingRule], ...] = (Ratio, Difference, StudentOnly, Constant, Clamp, LogClamp)
