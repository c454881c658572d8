"""Skew KL (SKL) and skew reverse KL (SRKL), the divergences of VCRD (paper Eq. 2, DistiLLM-2)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

import vcrd_core
from vcrd_divergences.mixture import kl_rows, log_mixture


class SkewKL(vcrd_core.Divergence):
    r"""Skew KL: KL(p || α p + (1-α) q), the teacher-prefix stream's loss (LV-SKL, paper Eq. 2).

    Paper Eq. 2: :math:`D^{(\alpha)}_{\mathrm{SKL}}(p\,\|\,q) = \mathrm{KL}(p\,\|\,m^{(\alpha)}_{p,q})` with
    :math:`m^{(\alpha)}_{p,q} = \alpha p + (1-\alpha) q`. Mixing some teacher mass into the target keeps
    the log-ratio bounded (:math:`\le \log(1/\alpha)`) where the student assigns little probability,
    which is why it is more stable than forward KL on prefixes the student did not write.
    :math:`\alpha = 0` is forward KL; :math:`\alpha = 1` is identically 0. The mixture is formed in log
    space, :math:`\log m = \mathrm{logsumexp}(\log\alpha + \log p,\ \log(1-\alpha) + \log q)`.
    """

    name: ClassVar[str] = "skl"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        alpha: float = Field(0.1, ge=0.0, le=1.0, description="Teacher share α of the mixture (DistiLLM-2: 0.1).")

    params: Params

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        return kl_rows(teacher_logp, log_mixture(teacher_logp, student_logp, self.params.alpha))


class SkewReverseKL(vcrd_core.Divergence):
    r"""Skew reverse KL: KL(q || (1-α) p + α q), the student-prefix stream's loss (LV-SRKL, paper Eq. 2).

    Paper Eq. 2: :math:`D^{(\alpha)}_{\mathrm{SRKL}}(p\,\|\,q) = \mathrm{KL}(q\,\|\,m^{(1-\alpha)}_{p,q})` with
    :math:`m^{(1-\alpha)}_{p,q} = (1-\alpha) p + \alpha q` (LV-SRKL). With ``detach_mixture`` (default,
    as DistiLLM-2's code does) the :math:`q` inside the mixture is a constant for autograd, so only
    the outer :math:`q` receives gradient; the value is the same either way. :math:`\alpha = 0` is
    reverse KL; :math:`\alpha = 1` is identically 0.
    """

    name: ClassVar[str] = "srkl"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        alpha: float = Field(0.1, ge=0.0, le=1.0, description="Student share α of the mixture (DistiLLM-2: 0.1).")
        detach_mixture: bool = Field(
            True, description="Treat the student q inside the mixture as a constant (DistiLLM-2)."
        )

    params: Params

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        inner = student_logp.detach() if self.params.detach_mixture else student_logp
        return kl_rows(student_logp, log_mixture(teacher_logp, inner, 1.0 - self.params.alpha))
