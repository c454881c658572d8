"""The weighting-rule base class and the core's guarantees around every rule.

A plugin implements :meth:`WeightingRule.weight`; calling the rule goes through
:meth:`WeightingRule.__call__`, which guarantees: no gradient, non-negative weights, and
the rule's :meth:`~WeightingRule.parity_weight` where both proposals are the same token.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from vcrd_core.errors import VcrdError
from vcrd_core.plugins.component import Component
from vcrd_core.plugins.kinds import WEIGHTING


def invalid_weight_counts(w: torch.Tensor) -> torch.Tensor:
    """How many of ``w`` are NaN, negative, and infinite (``+inf``): an int64 ``[3]`` on ``w``'s device (no host
    synchronisation; callers pack it with what else they read back)."""
    negative = w < 0
    return torch.stack([torch.isnan(w).sum(), negative.sum(), (torch.isinf(w) & ~negative).sum()])


def check_weight_counts(counts: list[int], total: int, who: str) -> None:
    """The one check that weights are finite and ``>= 0``: refuse (one line naming ``who`` and the counts) when any
    of :func:`invalid_weight_counts`' ``counts`` is not 0. Used by every rule call, the fused pass's in-pass weights
    and the objective."""
    if not any(counts):
        return
    parts = [f"{int(n)} {what}" for n, what in zip(counts, ("NaN", "negative", "infinite"), strict=True) if n]
    raise VcrdError(
        f"{who} {', '.join(parts)} weight(s) out of {total}; weights at decision points must be finite and >= 0 "
        "(VCRD never reverses the direction of supervision)"
    )


class WeightingRule(Component):
    """Base of weighting rules ``w = f(r_s, r_t)`` (DESIGN.md §1.3).

    The paper's rule (Eq. 1) is :math:`w_t = r(c_{t-1}, a^S_t) / (r(c_{t-1}, a^T_t) + \\varepsilon)`:
    ``r_s`` scores the student's proposal and ``r_t`` the teacher's, both at the same prefix, so a
    rule never needs to know which stream it weights. Weights scale the divergence of a decision
    point and are never differentiated (they are targets of calibration, not of learning).
    """

    kind: ClassVar[str] = WEIGHTING

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        """The rule's formula, elementwise on float32 scores (called under ``torch.no_grad()``)."""
        raise NotImplementedError

    def may_be_nonpositive(self) -> bool:
        """Whether, with these params, the rule can give ``w <= 0`` for scores with ``r_s > 0``.

        ``log_clamp`` refuses such an inner rule at config time. Default: True (conservative).
        """
        return True

    def uses_scores(self) -> bool:
        """Whether the rule reads judge scores; a run whose every rule does not needs no judge."""
        return True

    def parity_weight(self, r: torch.Tensor) -> torch.Tensor:
        """The weight where both proposals are the same token (the judge scored it ``r`` for both).

        Default: the rule's own formula at ``r_s = r_t = r``, so that the rule a config names is the
        rule that runs everywhere. ``ratio`` overrides it with exactly ``1`` (parity by definition,
        where ``r / (r + ε)`` would drift below 1 for tiny ``r``); rules wrapping another rule
        (``clamp``, ``log_clamp``) apply themselves to the inner rule's parity weight.
        """
        return self.weight(r, r)

    def __call__(
        self,
        r_student: torch.Tensor,
        r_teacher: torch.Tensor,
        same_token: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weights for scores ``r_s``, ``r_t`` of the same shape, with the core's guarantees.

        * computed by :meth:`weight` under ``torch.no_grad()`` on detached float32 copies, and
          returned detached (float32, the scores' shape and device);
        * where ``same_token`` is True (both proposals are the same token) the weight is the rule's
          :meth:`parity_weight` of ``r_s``: by default the rule's own formula at ``r_s = r_t``; exactly
          ``1`` for ``ratio`` (parity by definition, whereas :math:`r / (r + \\varepsilon)` drifts from 1
          when ``r`` is tiny);
        * every weight is finite and ``>= 0`` (VCRD never reverses the direction of supervision):
          a rule returning a negative, NaN or infinite weight raises :class:`VcrdError` naming the
          rule and how many weights were wrong.

        ``mask`` (optional, bool, the scores' shape) marks the positions whose weights are used
        (the decision points); elsewhere the weight is set to 0 and not checked, so scores of
        padding never raise.
        """
        if not isinstance(r_student, torch.Tensor) or not isinstance(r_teacher, torch.Tensor):
            raise VcrdError(f"weighting rule '{self.name}': r_student and r_teacher must be torch tensors")
        if r_student.shape != r_teacher.shape:
            raise VcrdError(
                f"weighting rule '{self.name}': r_student has shape {tuple(r_student.shape)} but r_teacher has "
                f"shape {tuple(r_teacher.shape)}; they must be equal"
            )
        shape = r_student.shape
        for label, extra in (("same_token", same_token), ("mask", mask)):
            if extra is not None and extra.shape != shape:
                raise VcrdError(
                    f"weighting rule '{self.name}': {label} has shape {tuple(extra.shape)}, expected the scores' "
                    f"shape {tuple(shape)}"
                )
        with torch.no_grad():
            r_s = r_student.detach().to(torch.float32)
            r_t = r_teacher.detach().to(torch.float32)
            raw = self.weight(r_s, r_t)
            raw = torch.as_tensor(raw, dtype=torch.float32, device=r_s.device)
            try:
                w = torch.broadcast_to(raw, shape).clone()
            except RuntimeError:
                raise VcrdError(
                    f"weighting rule '{self.name}' returned weights of shape {tuple(raw.shape)}, expected "
                    f"{tuple(shape)} (the scores' shape)"
                ) from None
            if same_token is not None:
                parity = torch.as_tensor(self.parity_weight(r_s), dtype=torch.float32, device=w.device)
                w = torch.where(same_token.to(device=w.device, dtype=torch.bool), parity.expand(shape), w)
            if mask is not None:
                w = torch.where(mask.to(device=w.device, dtype=torch.bool), w, torch.zeros_like(w))
            check_weight_counts(invalid_weight_counts(w).tolist(), w.numel(), f"weighting rule '{self.name}' returned")
        return w.detach()
