"""The weighting-rule base class and the core's guarantees around every rule.

A plugin implements :meth:`WeightingRule.weight`; calling the rule goes through
:meth:`WeightingRule.__call__`, which guarantees: no gradient, non-negative weights, and
``w = 1`` exactly where both proposals are the same token.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from vcrd_core import kinds as K
from vcrd_core.component import Component


class WeightingRule(Component):
    """Base of weighting rules ``w = f(r_s, r_t)`` (SPEC "Weighting rules")."""

    kind: ClassVar[str] = K.WEIGHTING

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        """The rule's formula, elementwise."""
        raise NotImplementedError

    def may_be_nonpositive(self) -> bool:
        """Whether, with these params, the rule can give ``w <= 0`` for scores with ``r_s > 0``.

        ``log_clamp`` refuses such an inner rule at config time. Default: True (conservative).
        """
        return True

    def __call__(
        self,
        r_student: torch.Tensor,
        r_teacher: torch.Tensor,
        same_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError  # implemented with the core guarantees (weights issue work)
