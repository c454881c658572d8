"""Components written in the tests, so that core tests do not depend on the built-in plugins.

They are used directly (never registered); the plugins' own tests cover the real ones.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

import vcrd_core


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ForwardKL(vcrd_core.Divergence):
    """KL(p || q), written plainly."""

    name: ClassVar[str] = "test_fkl"
    Params = NoParams

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)


class ReverseKL(vcrd_core.Divergence):
    """KL(q || p), written plainly."""

    name: ClassVar[str] = "test_rkl"
    Params = NoParams

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)


class PlainRatio(vcrd_core.WeightingRule):
    """r_s / (r_t + 1e-8), written plainly."""

    name: ClassVar[str] = "test_plain_ratio"
    Params = NoParams

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return r_student / (r_teacher + 1e-8)
