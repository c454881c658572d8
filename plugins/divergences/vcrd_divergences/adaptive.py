r"""Skew KL / skew reverse KL with DistiLLM-2's per-sequence adaptive α (``distillm_v2``, optional in its release).

DistiLLM-2 (``jongwooko/distillm-2``, ``src/distillm_trainer.py``, ``get_batch_logps``) computes, for every
sequence, the geometric-mean probability of its own tokens under the teacher and the student,
:math:`\bar p = \exp(\tfrac1n\sum_t \log p(y_t|y_{<t}))` and :math:`\bar q` likewise, and sets

.. math::
    \alpha_1 = \mathrm{clip}\Big(1 - \frac{(1-\alpha_0)\, m_1}{\bar p - \bar q + 10^{-5}},\ 0.01,\ \alpha_0\Big)
    \qquad
    \alpha_2 = \mathrm{clip}\Big(1 - \frac{(1-\alpha_0)\, m_2}{\bar q - \bar p + 10^{-5}},\ 0.01,\ \alpha_0\Big)

for SKL on the teacher's responses (:math:`\alpha_1`) and SRKL on the student's (:math:`\alpha_2`), where the
anchor :math:`m_1` is a mean of :math:`\bar p - \bar q` over teacher responses (:math:`m_2`: of
:math:`\bar q - \bar p` over student responses). A sequence on which the student already matches the teacher
(a small gap) gets a small α, i.e. less of the teacher mixed into the target: a sharper divergence.

What is implemented, and where it departs from the release:

* The release hard-codes ``update_alpha = False``, so its α is the constant 0.1; with ``update_alpha = True``
  the anchor would be set once, from the metrics of the first logging window. Here the anchor is ``batch``
  (default): the mean gap over this stream's sequences in the micro-batch (stateless, so a resumed run is
  exact; it makes the loss depend on how a batch is split into micro-batches), or a fixed number.
* α is detached (a per-sequence schedule, never differentiated); the release lets the gradient flow through
  :math:`\bar q` into α where the clip is inactive.
* :math:`\bar p, \bar q` use the objective's temperature (1 in DistiLLM-2) over the tokenizer's real ids, and the
  stream's decision points (the response tokens, EOS included: the release's ``labels != -100``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

import vcrd_core
from vcrd_divergences.mixture import kl_rows, log_mixture


class AdaptiveAlphaParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.1, gt=0.0, lt=1.0, description="Base α0, the largest α a sequence gets (DistiLLM-2: 0.1).")
    min_alpha: float = Field(0.01, gt=0.0, lt=1.0, description="The smallest α (DistiLLM-2: 0.01).")
    anchor: Literal["batch"] | float = Field(
        "batch", description="The gap m of the formula: 'batch' (the micro-batch's mean gap) or a fixed number."
    )
    eps: float = Field(1e-5, ge=0.0, description="Added to the gap in the denominator (DistiLLM-2: 1e-5).")

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveAlphaParams:
        if self.min_alpha > self.alpha:
            raise ValueError(f"min_alpha {self.min_alpha} must be <= alpha {self.alpha} (the clip's bounds)")
        if isinstance(self.anchor, float) and not math.isfinite(self.anchor):
            raise ValueError("anchor must be 'batch' or a finite number")
        return self


def adaptive_alpha(gap: torch.Tensor, has_points: torch.Tensor, params: AdaptiveAlphaParams) -> torch.Tensor:
    """Per sequence ``[B]``: ``clip(1 - (1 - α0) m / (gap + eps), min_alpha, α0)``; ``m`` is the anchor (the mean
    gap over the sequences with decision points for ``batch``)."""
    if params.anchor == "batch":
        anchor = gap[has_points].mean() if bool(has_points.any()) else gap.new_zeros(())
    else:
        anchor = gap.new_tensor(float(params.anchor))
    alpha = 1.0 - (1.0 - params.alpha) * anchor / (gap + params.eps)
    return alpha.nan_to_num(nan=params.alpha).clamp(params.min_alpha, params.alpha)


class AdaptiveSkewKL(vcrd_core.Divergence):
    r"""SKL with DistiLLM-2's per-sequence α: KL(p || α₁ p + (1-α₁) q), α₁ from the gap p̄ − q̄ (module docstring).

    For the teacher-prefix stream (the teacher's responses). Needs the logits engine (``auto`` picks it).
    """

    name: ClassVar[str] = "skl_adaptive"
    uses_sequence_stats: ClassVar[bool] = True
    Params = AdaptiveAlphaParams
    params: AdaptiveAlphaParams

    def row_parameters(self, stats: vcrd_core.SequenceStats) -> Mapping[str, torch.Tensor]:
        gap = stats.sequence_mean(stats.teacher_logp).exp() - stats.sequence_mean(stats.student_logp).exp()
        return {"alpha": stats.at_points(adaptive_alpha(gap, stats.has_points(), self.params))}

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor, **row_params: torch.Tensor) -> torch.Tensor:
        return kl_rows(teacher_logp, log_mixture(teacher_logp, student_logp, row_params["alpha"]))


class AdaptiveSkewReverseKL(vcrd_core.Divergence):
    r"""SRKL with DistiLLM-2's per-sequence α: KL(q || (1-α₂) p + α₂ q), α₂ from the gap q̄ − p̄ (module docstring).

    For the student-prefix stream (the student's responses); the student inside the mixture is detached by
    default, as in DistiLLM-2. Needs the logits engine (``auto`` picks it).
    """

    name: ClassVar[str] = "srkl_adaptive"
    uses_sequence_stats: ClassVar[bool] = True

    class Params(AdaptiveAlphaParams):
        detach_mixture: bool = Field(
            True, description="Treat the student q inside the mixture as a constant (DistiLLM-2)."
        )

    params: Params

    def row_parameters(self, stats: vcrd_core.SequenceStats) -> Mapping[str, torch.Tensor]:
        gap = stats.sequence_mean(stats.student_logp).exp() - stats.sequence_mean(stats.teacher_logp).exp()
        return {"alpha": stats.at_points(adaptive_alpha(gap, stats.has_points(), self.params))}

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor, **row_params: torch.Tensor) -> torch.Tensor:
        inner = student_logp.detach() if self.params.detach_mixture else student_logp
        return kl_rows(student_logp, log_mixture(teacher_logp, inner, 1.0 - row_params["alpha"]))
