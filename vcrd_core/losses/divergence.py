"""The divergence base class: a plugin states its value on one chunk of float32 log-probabilities.

The core owns log-softmax, temperature, vocabulary slicing, chunking and gradients
(:mod:`vcrd_core.losses.chunked`); a plugin implements only :meth:`Divergence.value`. The dependency goes one
way: this base class calls the engine, and the engines read a divergence only through
:class:`vcrd_core.losses.inputs.DivergenceValue` (a protocol), never importing this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from vcrd_core.losses.chunked import chunked_divergence
from vcrd_core.plugins.component import Component
from vcrd_core.plugins.kinds import DIVERGENCES


@dataclass(frozen=True)
class SequenceStats:
    """What a divergence with per-sequence parameters reads of one stream's batch (DESIGN.md §1.4), all
    detached, per decision point ``[n]`` in the points' order: ``teacher_logp`` / ``student_logp``, the
    log-probability of the rollout's own token ``y_t`` under the teacher and the student (at the objective's
    temperature, over the real vocabulary), and ``sequence``, the point's row in the ``[B, L]`` batch."""

    teacher_logp: torch.Tensor
    student_logp: torch.Tensor
    sequence: torch.Tensor
    num_sequences: int

    def sequence_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of per-point ``values`` ``[n]`` over each sequence's points, ``[B]`` float32 (0 for a sequence
        without points; :meth:`has_points` tells which)."""
        sums = torch.zeros(self.num_sequences, dtype=torch.float32, device=values.device)
        sums.index_add_(0, self.sequence, values.float())
        counts = torch.bincount(self.sequence, minlength=self.num_sequences).to(sums.dtype)
        return sums / counts.clamp_min(1.0)

    def has_points(self) -> torch.Tensor:
        """``[B]`` bool: the sequences that have at least one decision point."""
        return torch.bincount(self.sequence, minlength=self.num_sequences) > 0

    def at_points(self, per_sequence: torch.Tensor) -> torch.Tensor:
        """A per-sequence ``[B]`` value broadcast to the points, ``[n]``."""
        return per_sequence[self.sequence]


class Divergence(Component):
    """Base of divergences ``D(p, q)`` between teacher ``p`` and student ``q`` at one decision point.

    A divergence whose parameters differ per sequence (DistiLLM-2's adaptive α) sets ``uses_sequence_stats`` and
    implements :meth:`row_parameters`: the core then computes the stream's :class:`SequenceStats` once per batch
    and passes each chunk's slice of the returned per-point tensors to :meth:`value` as keyword arguments.
    """

    kind: ClassVar[str] = DIVERGENCES
    #: :meth:`row_parameters` is used (the logits engine computes the token log-probabilities it reads).
    uses_sequence_stats: ClassVar[bool] = False

    def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor, **row_params: torch.Tensor) -> torch.Tensor:
        """``D`` per row of ``[n, V]`` float32 log-probabilities -> ``[n]`` (differentiable in ``student_logp``);
        ``row_params``: this chunk's rows of :meth:`row_parameters`' tensors (none unless ``uses_sequence_stats``)."""
        raise NotImplementedError

    def row_parameters(self, stats: SequenceStats) -> Mapping[str, torch.Tensor]:
        """Per-decision-point parameters ``{name: [n] float32}`` of one stream's batch, detached (never
        differentiated), called once per batch before any chunk; only when ``uses_sequence_stats``."""
        return {}

    def __call__(
        self,
        teacher_logits: torch.Tensor,
        student_logits: torch.Tensor,
        *,
        rows: torch.Tensor | None = None,
        vocab_size: int | None = None,
        temperature: float = 1.0,
        chunk_size: int | None = None,
        row_params: Mapping[str, torch.Tensor] | None = None,
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
            row_params=row_params,
        )
