"""A rollout as the trainer and the scorer read it, and :class:`StreamBatch`: one stream's padded batch, the typed
object that flows from the collator (or the offline scorer) through the training step into
:class:`vcrd_core.JudgeRequest` unchanged."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from vcrd_core.data.examples import Example
from vcrd_core.decision_points import DecisionPoints
from vcrd_core.errors import VcrdError
from vcrd_core.losses.sparse import SparseTeacher


@dataclass
class RolloutSequence:
    """One rollout: its prompt and response token ids, (offline) one weight per response token, the example
    (prompt text, reference, ...) it was generated for and (``training.teacher_cache``) the teacher's top-k
    distribution at its decision points, one row per response token."""

    prompt: list[int]
    response: list[int]
    weights: list[float] | None = None
    example: Example | None = None
    teacher_topk: SparseTeacher | None = None


@dataclass
class StreamBatch:
    """One stream's sequences, right-padded: ``[B, L]`` ``input_ids``, ``attention_mask`` and ``response_mask`` (1 on
    the response tokens, EOS included), ``prompt_lengths`` ``[B]``, the :class:`~vcrd_core.DecisionPoints` of the
    batch, each sequence's :class:`~vcrd_core.data.examples.Example` (None where unknown), ``index`` ``[B]`` (the
    sequences' dataset indices, or ``0..B-1``) and, when every sequence carries them (offline scores, the static
    cache), ``weights`` ``[B, L]`` at the response tokens (0 elsewhere) and ``teacher_topk``, the teacher's top-k at
    the decision points in their order (a :class:`~vcrd_core.losses.sparse.SparseTeacher` read from the teacher
    cache)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    points: DecisionPoints
    examples: list[Example | None]
    index: torch.Tensor
    weights: torch.Tensor | None = None
    teacher_topk: SparseTeacher | None = None

    @classmethod
    def of(
        cls, seqs: Sequence[RolloutSequence], pad_token_id: int, *, index: Sequence[int] | None = None
    ) -> StreamBatch:
        """Pad ``seqs`` (prompt + response) on the right with ``pad_token_id``; ``index``: their dataset indices."""
        length = max(len(s.prompt) + len(s.response) for s in seqs)
        n = len(seqs)
        ids = torch.full((n, length), pad_token_id, dtype=torch.long)
        attention = torch.zeros(n, length, dtype=torch.long)
        response = torch.zeros(n, length, dtype=torch.long)
        weights = torch.zeros(n, length, dtype=torch.float32) if all(s.weights is not None for s in seqs) else None
        for b, s in enumerate(seqs):
            p, r = len(s.prompt), len(s.response)
            ids[b, : p + r] = torch.tensor(s.prompt + s.response, dtype=torch.long)
            attention[b, : p + r] = 1
            response[b, p : p + r] = 1
            if weights is not None and r:
                weights[b, p : p + r] = torch.tensor(s.weights, dtype=torch.float32)
        points = DecisionPoints.from_masks(attention, response)
        return cls(
            input_ids=ids,
            attention_mask=attention,
            response_mask=response,
            prompt_lengths=torch.tensor([len(s.prompt) for s in seqs], dtype=torch.long),
            points=points,
            examples=[s.example for s in seqs],
            index=torch.tensor(list(range(n)) if index is None else list(index), dtype=torch.long),
            weights=weights,
            teacher_topk=_joined_topk(seqs, points) if all(s.teacher_topk is not None for s in seqs) else None,
        )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StreamBatch:
        """This batch on ``device`` (accelerate's and ``Trainer``'s device placement call it)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            response_mask=move(self.response_mask),
            prompt_lengths=move(self.prompt_lengths),
            points=self.points.to(device),
            index=move(self.index),
            weights=move(self.weights),
            teacher_topk=None if self.teacher_topk is None else self.teacher_topk.to(device),
        )


def _joined_topk(seqs: Sequence[RolloutSequence], points: DecisionPoints) -> SparseTeacher:
    """The sequences' cached top-k rows, each cut to its decision points in the batch, joined in the points'
    order (sequence by sequence, position by position)."""
    parts = []
    for b, (seq, count) in enumerate(zip(seqs, points.counts.tolist(), strict=True)):
        topk = seq.teacher_topk
        assert topk is not None
        if len(topk) < count:
            raise VcrdError(f"sequence {b}: the teacher cache holds {len(topk)} decision points, the batch has {count}")
        parts.append(topk)
    counts = points.counts.tolist()
    return SparseTeacher(  # widened here, per batch: the cache keeps its compact dtypes in memory
        torch.cat([t.ids[:c] for t, c in zip(parts, counts, strict=True)]).long(),
        torch.cat([t.logp[:c] for t, c in zip(parts, counts, strict=True)]).float(),
        torch.cat([t.tail[:c] for t, c in zip(parts, counts, strict=True)]).float(),
        parts[0].temperature,
    )


class TrainBatch(Mapping[str, StreamBatch]):
    """A training batch: the :class:`StreamBatch` of every computed stream, keyed by stream name
    (``teacher_prefix``, ``student_prefix``). A mapping so that ``Trainer`` and accelerate hand it through unchanged
    (they rebuild mappings item by item and move each :class:`StreamBatch` with its ``to``)."""

    def __init__(self, streams: Mapping[str, StreamBatch] | None = None) -> None:
        self.streams: dict[str, StreamBatch] = dict(streams or {})

    def __getitem__(self, stream: str) -> StreamBatch:
        return self.streams[stream]

    def __iter__(self) -> Iterator[str]:
        return iter(self.streams)

    def __len__(self) -> int:
        return len(self.streams)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        return TrainBatch({k: b.to(device, non_blocking) for k, b in self.streams.items()})

    def __repr__(self) -> str:
        sizes: dict[str, Any] = {k: tuple(b.input_ids.shape) for k, b in self.streams.items()}
        return f"TrainBatch({sizes})"
