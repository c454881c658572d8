"""Generalized Jensen-Shannon divergence: the GKD baseline (TRL's ``generalized_jsd_loss``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

import vcrd_core
from vcrd_divergences.mixture import kl_rows, log_mixture


class GeneralizedJSD(vcrd_core.Divergence):
    r"""Generalized JSD: β KL(p || m) + (1-β) KL(q || m), m = β p + (1-β) q (the GKD baseline).

    :math:`\beta\,\mathrm{KL}(p\,\|\,m) + (1-\beta)\,\mathrm{KL}(q\,\|\,m)` with
    :math:`m = \beta p + (1-\beta) q`, as TRL's ``generalized_jsd_loss`` computes it (``beta`` default
    0.5, the symmetric JSD). At the endpoints the formula itself tends to 0 (:math:`m` becomes
    :math:`q` resp. :math:`p` and the remaining term is :math:`\mathrm{KL}(q\|q)` resp.
    :math:`\mathrm{KL}(p\|p)`); like TRL, :math:`\beta = 0` is mapped to forward
    :math:`\mathrm{KL}(p\,\|\,q)` and :math:`\beta = 1` to reverse :math:`\mathrm{KL}(q\,\|\,p)`, so the
    parameter interpolates between the two KLs. The mixture is formed in log space.
    """

    name: ClassVar[str] = "jsd"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        beta: float = Field(
            0.5, ge=0.0, le=1.0, description="Teacher share β of the mixture; 0 → KL(p||q), 1 → KL(q||p) (TRL)."
        )

    params: Params

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        beta = self.params.beta
        if beta == 0.0:
            return kl_rows(teacher_logp, student_logp)
        if beta == 1.0:
            return kl_rows(student_logp, teacher_logp)
        log_m = log_mixture(teacher_logp, student_logp, beta)
        return beta * kl_rows(teacher_logp, log_m) + (1.0 - beta) * kl_rows(student_logp, log_m)
