"""The divergence base class: a plugin states its value on one chunk of float32 log-probabilities.

The core owns log-softmax, temperature, vocabulary slicing, chunking and gradients
(:mod:`vcrd_core.losses.chunked`); a plugin implements only :meth:`Divergence.value`. The dependency goes one
way: this base class calls the engine, and the engines read a divergence only through
:class:`vcrd_core.losses.inputs.DivergenceValue` (a protocol), never importing this module.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from vcrd_core.losses.chunked import chunked_divergence
from vcrd_core.plugins.component import Component
from vcrd_core.plugins.kinds import DIVERGENCES


class Divergence(Component):
    """Base of divergences ``D(p, q)`` between teacher ``p`` and student ``q`` at one decision point."""

    kind: ClassVar[str] = DIVERGENCES

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        """``D`` per row of ``[n, V]`` float32 log-probabilities -> ``[n]`` (differentiable in ``student_logp``)."""
        raise NotImplementedError

    def __call__(
        self,
        teacher_logits: torch.Tensor,
        student_logits: torch.Tensor,
        *,
        rows: torch.Tensor | None = None,
        vocab_size: int | None = None,
        temperature: float = 1.0,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """One value per row of ``[..., V]`` logits (or per selected flat row), float32, differentiable
        w.r.t. the student logits; memory-bounded (see :func:`vcrd_core.losses.chunked.chunked_divergence`)."""
        return chunked_divergence(
            self,
            teacher_logits,
            student_logits,
            rows=rows,
            vocab_size=vocab_size,
            temperature=temperature,
            chunk_size=chunk_size,
        )
