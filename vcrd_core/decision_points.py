"""Decision points: the one place that knows which logits row belongs to which response token.

A *decision point* is a response token position ``t`` of a rollout (the token that ends the response,
EOS, included; prompt tokens and padding never). At ``t`` both models' next-token distributions
``p(·|c_{t-1})`` and ``q(·|c_{t-1})`` are the logits at row ``t - 1`` (a causal LM's row ``i`` predicts
token ``i + 1``), the divergence of that point is computed from that row, and a judge scores the
rollout's token ``y_t`` and the other model's proposal ``alt_t`` after the prefix ``y_{<t}``.

:class:`DecisionPoints` holds them for a padded ``[B, L]`` batch, built once from either

* an attention mask and a response mask (:meth:`DecisionPoints.from_masks`), or
* HF-style ``labels`` with ``-100`` where a position is not a decision point
  (:meth:`DecisionPoints.from_labels`), as transformers' ``Trainer`` and TRL use them,

and the objective, every judge, the score checks and the score records take it. Nothing else in
vcrd re-derives "row ``t - 1``": they ask this object for :attr:`DecisionPoints.rows` (flat logits
rows) or :meth:`DecisionPoints.logits_at`.

Refused, each with one line: a decision point at position 0 (no row predicts it) when given
explicitly, and a decision point whose row ``t - 1`` is padding (a right-padded prompt concatenated
with its response: that row is not the prefix's distribution).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from vcrd_core.errors import VcrdError

#: The ``labels`` value that marks a position as not a decision point (HF / PyTorch ``ignore_index``).
IGNORE_INDEX = -100


class Stream(str, enum.Enum):
    """Which rollout the prefixes come from: the teacher's (SKL stream) or the student's (SRKL stream)."""

    TEACHER_PREFIX = "teacher_prefix"
    STUDENT_PREFIX = "student_prefix"

    @property
    def role(self) -> str:
        """Whose rollouts give this stream's prefixes (``teacher`` / ``student``, the rollout store's roles)."""
        return "teacher" if self is Stream.TEACHER_PREFIX else "student"

    @classmethod
    def of_role(cls, role: str) -> Stream:
        """The stream whose prefixes ``role``'s rollouts give."""
        return cls.TEACHER_PREFIX if role == "teacher" else cls.STUDENT_PREFIX


def _refuse_after_padding(mask: torch.Tensor, attention_mask: torch.Tensor, where: str) -> None:
    follows_pad = mask[:, 1:] & ~attention_mask[:, :-1].bool()
    if bool(follows_pad.any()):
        b, t = (int(v) for v in follows_pad.nonzero()[0])
        raise VcrdError(
            f"{where}: decision point (row {b}, position {t + 1}) follows padding at position {t}, so its logits "
            "row is not the prefix's; pack each sequence as prompt + response and pad only at the ends"
        )


@dataclass(frozen=True)
class DecisionPoints:
    """The decision points of one padded ``[B, L]`` batch, in row-major order (sequences in order).

    ``mask`` ``[B, L]`` (bool) marks them; ``batch`` and ``position`` ``[n]`` (int64) are their
    coordinates ``(b, t)``. Build it with :meth:`from_masks`, :meth:`from_labels` or :meth:`from_mask`.
    """

    mask: torch.Tensor
    batch: torch.Tensor
    position: torch.Tensor

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_mask(
        cls, mask: torch.Tensor, attention_mask: torch.Tensor | None = None, *, where: str = "decision points"
    ) -> DecisionPoints:
        """From an explicit ``[B, L]`` mask of decision points; refuses position 0 and, given the
        attention mask, points that follow padding."""
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise VcrdError(f"{where}: the decision-point mask must be a [B, L] tensor, got {got}")
        mask = mask.bool()
        if mask.shape[1] > 0 and bool(mask[:, 0].any()):
            raise VcrdError(
                f"{where}: a decision point at position 0 has no preceding logits row; build the points with "
                "DecisionPoints.from_masks(attention_mask, response_mask) or from_labels(labels)"
            )
        if attention_mask is not None:
            if attention_mask.shape != mask.shape:
                raise VcrdError(
                    f"{where}: attention_mask {tuple(attention_mask.shape)} and the decision-point mask "
                    f"{tuple(mask.shape)} must have the same [B, L] shape"
                )
            if bool((mask & ~attention_mask.bool()).any()):
                raise VcrdError(f"{where}: a decision point lies on padding (attention_mask is 0 there)")
            _refuse_after_padding(mask, attention_mask, where)
        batch, position = mask.nonzero(as_tuple=True)
        return cls(mask, batch, position)

    @classmethod
    def from_masks(cls, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> DecisionPoints:
        """Response tokens (EOS included) that are not padding, except position 0, which no row predicts.

        Works with left and right padding alike (the masks are per position).
        """
        if attention_mask.shape != response_mask.shape or attention_mask.dim() != 2:
            raise VcrdError(
                f"decision points: attention_mask {tuple(attention_mask.shape)} and response_mask "
                f"{tuple(response_mask.shape)} must both be [B, L]"
            )
        mask = attention_mask.bool() & response_mask.bool()
        mask[:, 0] = False
        return cls.from_mask(mask, attention_mask)

    @classmethod
    def from_labels(cls, labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> DecisionPoints:
        """HF-style ``labels`` ``[B, L]``: every position whose label is not ``-100`` is a decision point.

        As in transformers' causal-LM loss, the label at position 0 is never used (no row predicts it),
        so ``labels = input_ids`` with the prompt set to ``-100`` is the usual input.
        """
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise VcrdError(
                f"decision points: labels must be a [B, L] tensor with -100 at non-decision points, got {got}"
            )
        mask = labels != IGNORE_INDEX
        mask[:, 0] = False
        return cls.from_mask(mask, attention_mask)

    # -- what callers read -------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """The batch's ``(B, L)``."""
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    @property
    def num_points(self) -> int:
        return int(self.batch.numel())

    @property
    def counts(self) -> torch.Tensor:
        """Decision points per sequence ``[B]`` (int64)."""
        return torch.bincount(self.batch, minlength=self.shape[0])

    @property
    def rows(self) -> torch.Tensor:
        """Flat index of each point's logits row ``t - 1`` in the ``[B * L]`` leading dims of ``[B, L, V]``."""
        return self.batch * self.shape[1] + (self.position - 1)

    def logits_at(self, logits: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The distributions' logits ``[k, V]`` of points ``start:stop`` from unshifted ``[B, L, V]`` logits
        (advanced indexing copies only those rows)."""
        b, t = self.batch[start:stop], self.position[start:stop]
        return logits[b.to(logits.device), (t - 1).to(logits.device)]

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """``values[b, t]`` at every point, ``[n]``, from a ``[B, L]`` tensor."""
        self.check_shape(values, "values")
        return values[self.batch.to(values.device), self.position.to(values.device)]

    def scatter(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """A ``[B, L]`` tensor holding ``values`` ``[n]`` at the points and ``fill`` elsewhere."""
        if values.shape != (self.num_points,):
            raise VcrdError(f"decision points: expected {self.num_points} values, got shape {tuple(values.shape)}")
        out = torch.full(self.shape, fill, dtype=values.dtype, device=values.device)
        out[self.batch.to(values.device), self.position.to(values.device)] = values
        return out

    def chunks(self, size: int) -> Iterator[slice]:
        """Slices over the points, ``size`` at a time (memory-bounded loops over ``[size, V]`` blocks)."""
        for start in range(0, self.num_points, size):
            yield slice(start, start + size)

    def check_shape(self, tensor: torch.Tensor, what: str, where: str = "decision points") -> None:
        """Refuse a per-position tensor whose ``[B, L]`` differs from the points' batch."""
        if tuple(tensor.shape[:2]) != self.shape:
            raise VcrdError(
                f"{where}: {what} has shape {tuple(tensor.shape)}, but the decision points are of a "
                f"[B, L] = {list(self.shape)} batch"
            )

    def check_follows_tokens(self, attention_mask: torch.Tensor, where: str) -> None:
        """Refuse points whose row ``t - 1`` is padding in ``attention_mask`` (one line)."""
        self.check_shape(attention_mask, "attention_mask", where)
        _refuse_after_padding(self.mask, attention_mask.to(self.mask.device), where)

    def to(self, device: torch.device | str) -> DecisionPoints:
        return DecisionPoints(self.mask.to(device), self.batch.to(device), self.position.to(device))
