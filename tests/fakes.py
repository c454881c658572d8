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


class RecordingKL(vcrd_core.Divergence):
    """KL(p || q) plus a quadratic in q (depends on both inputs, nonlinear in the student); records the rows
    of every chunk it sees and whether the student input required grad."""

    name: ClassVar[str] = "test_recording_kl"

    def __init__(self, params: object = None) -> None:
        super().__init__(None)
        self.rows_seen: list[int] = []
        self.student_requires_grad: list[bool] = []

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        self.rows_seen.append(teacher_logp.shape[0])
        self.student_requires_grad.append(student_logp.requires_grad)
        p = teacher_logp.exp()
        return (p * (teacher_logp - student_logp)).sum(-1) + 3.0 * (student_logp.exp() ** 2).sum(-1)


class PlainRatio(vcrd_core.WeightingRule):
    """r_s / (r_t + 1e-8), written plainly."""

    name: ClassVar[str] = "test_plain_ratio"
    Params = NoParams

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return r_student / (r_teacher + 1e-8)
