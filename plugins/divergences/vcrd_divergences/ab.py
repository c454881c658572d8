"""Alpha-beta divergence: the ABKD baseline (``ghwang-s/abkd``, ``distillation_llm/distillm/losses.py::ab_div``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

import vcrd_core


def _weighted_log_ratio(log_a: torch.Tensor, log_b: torch.Tensor, power: float) -> torch.Tensor:
    r""":math:`\sum_i a_i^{s}\,(\log a_i - \log b_i)` with :math:`0^{s}\log 0 = 0`, NaN-free in gradients too."""
    a_zero = torch.isneginf(log_a)
    la = log_a.masked_fill(a_zero, 0.0)
    lb = log_b.masked_fill(a_zero, 0.0)
    return (torch.exp(power * la) * (la - lb)).masked_fill(a_zero, 0.0).sum(-1)


class AlphaBetaDivergence(vcrd_core.Divergence):
    r"""Alpha-beta divergence D_AB^(α,β)(p || q), the ABKD baseline (defaults α=0.2, β=0.7).

    For :math:`\alpha, \beta \ne 0`:

    .. math::
        D = -\frac{1}{\alpha\beta}\sum_a \Big(p^\alpha q^\beta - \frac{\alpha}{\alpha+\beta} p^{\alpha+\beta}
            - \frac{\beta}{\alpha+\beta} q^{\alpha+\beta}\Big),

    every power computed as :math:`\exp(\alpha\log p + \beta\log q)` so that an underflowing or masked
    (:math:`-\infty`) probability gives 0, not a NaN gradient. The limits are those of ABKD's
    ``ab_div`` (same precedence):

    * :math:`\alpha = \beta = 0`: :math:`\tfrac12\sum_a (\log q - \log p)^2`, entries where either
      distribution is 0 excluded (``ab_div``'s ``inf_mask``);
    * :math:`\alpha = 0`:
      :math:`\tfrac1\beta\sum_a \big(q^\beta \log\tfrac{q^\beta}{p^\beta} - q^\beta + p^\beta\big)`;
    * :math:`\beta = 0`:
      :math:`\tfrac1\alpha\sum_a \big(p^\alpha \log\tfrac{p^\alpha}{q^\alpha} - p^\alpha + q^\alpha\big)`;
    * :math:`\alpha + \beta = 0` (only at :math:`\alpha = \beta = 0` in the valid range, where the first
      case applies, as in ``ab_div``).

    Note that ``ab_div``'s one-sided limits carry :math:`1/\beta` (resp. :math:`1/\alpha`) where the
    analytic limit of the general formula has :math:`1/\beta^2`; they are reproduced as ABKD trained
    with them. With them :math:`(\alpha, \beta) = (1, 0)` is :math:`\mathrm{KL}(p\|q)` and
    :math:`(0, 1)` is :math:`\mathrm{KL}(q\|p)`. Valid range: :math:`\alpha, \beta \in [0, 1]`, the square
    between those two KLs that ABKD tunes over (defaults 0.2, 0.7 as ABKD's GPT-2 scripts); there all
    powers are :math:`\le 1` and nothing overflows. Where exactly one of :math:`p_a, q_a` is 0 the exact
    formula is used (``ab_div`` masks such entries in some branches and returns NaN in others).
    The general case subtracts terms of order 1, so in float32 its absolute error is about
    :math:`10^{-7} V / (\alpha\beta)`.
    """

    name: ClassVar[str] = "ab"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        alpha: float = Field(0.2, ge=0.0, le=1.0, description="Power α of the teacher p (ABKD GPT-2: 0.2).")
        beta: float = Field(0.7, ge=0.0, le=1.0, description="Power β of the student q (ABKD GPT-2: 0.7).")

    params: Params

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        a, b = self.params.alpha, self.params.beta
        lp, lq = teacher_logp, student_logp
        if a == 0.0 and b == 0.0:
            either_zero = torch.isneginf(lp) | torch.isneginf(lq)
            diff = lq.masked_fill(either_zero, 0.0) - lp.masked_fill(either_zero, 0.0)
            return 0.5 * (diff**2).sum(-1)
        if a == 0.0:
            return _weighted_log_ratio(lq, lp, b) + (torch.exp(b * lp) - torch.exp(b * lq)).sum(-1) / b
        if b == 0.0:
            return _weighted_log_ratio(lp, lq, a) + (torch.exp(a * lq) - torch.exp(a * lp)).sum(-1) / a
        s = a + b
        terms = torch.exp(a * lp + b * lq) - (a / s) * torch.exp(s * lp) - (b / s) * torch.exp(s * lq)
        return -terms.sum(-1) / (a * b)
