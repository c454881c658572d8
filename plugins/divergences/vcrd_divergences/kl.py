"""Forward and reverse KL: the KD and reverse-KD baselines."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

import vcrd_core
from vcrd_divergences.mixture import kl_rows


class ForwardKL(vcrd_core.Divergence):
    r"""Forward KL: KL(p || q), the KD baseline.

    :math:`\mathrm{KL}(p\,\|\,q) = \sum_a p(a)\log\frac{p(a)}{q(a)}`. Mass-covering: the student is
    pushed to put probability wherever the teacher does. It is SKL (paper Eq. 2) at
    :math:`\alpha = 0`.
    """

    name: ClassVar[str] = "fkl"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        return kl_rows(teacher_logp, student_logp)


class ReverseKL(vcrd_core.Divergence):
    r"""Reverse KL: KL(q || p), the reverse-KD baseline.

    :math:`\mathrm{KL}(q\,\|\,p) = \sum_a q(a)\log\frac{q(a)}{p(a)}`. Mode-seeking: the student is
    penalised for mass where the teacher has little. It is SRKL (paper Eq. 2) at
    :math:`\alpha = 0`. Infinite where the teacher gives probability 0 to a token the student does not.
    """

    name: ClassVar[str] = "rkl"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        return kl_rows(student_logp, teacher_logp)
