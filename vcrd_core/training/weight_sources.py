"""Where a stream's weights come from in a training step: four sources behind one interface.

The step asks each stream's :class:`WeightSource` for the batch's weights, after the forwards and before the
loss; the source owns the mapping from what its judge needs to what the step provides (through
:func:`vcrd_core.judging.scoring.logits_needed` and the engine's ``scoring_logits``), so the trainer never looks
at a judge's type or ``needs``. :func:`weight_source` picks the source of a stream once, when the loss engine is
known:

==========================  ==============================================================================
:class:`StoreWeights`       offline mode with a score-reading rule: the weights ``vcrd score`` wrote into the
                            rollout store, carried by the batch (``StreamBatch.weights``)
:class:`StaticCacheWeights` online with ``scoring.cache_static``, for what does not depend on the student (the
                            student-prefix stream of a judge that does not read the student's greedy tokens):
                            scored once at the start of training (:meth:`StaticCacheWeights.prepare`), then
                            read from the batch like the store's
:class:`InPassWeights`      online, fused-linear engine, a :class:`~vcrd_core.RowJudge` reading nothing else:
                            scored chunk by chunk inside the loss pass (:class:`~vcrd_core.judging.scoring.RowWeights`)
:class:`OnlineWeights`      everything else online (and score-free rules):
                            :func:`~vcrd_core.judging.scoring.score_batch` on the current student's logits, every step
==========================  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.judging.judge import Need, RowJudge
from vcrd_core.judging.scoring import RowWeights, logits_needed
from vcrd_core.losses.engines import FusedLinearEngine, LossEngine
from vcrd_core.plan import StreamPlan
from vcrd_core.rollouts.generator import derive_seed
from vcrd_core.rollouts.scoring import score_stream_batch
from vcrd_core.rollouts.sequences import StreamBatch


@dataclass
class StepState:
    """What the step hands a weight source besides the batch and the forwards: the engine (its scoring logits),
    the tokenizer's real vocabulary, the step's seeded generator per stream, and a flag a source sets when this
    step's loss must be skipped (logits that cannot be scored: an overflow)."""

    engine: LossEngine
    vocab_size: int | None
    generator: Callable[[str, torch.device], torch.Generator]
    nonfinite: bool = False


class WeightSource:
    """One stream's weights per step. ``weights`` returns ``[B, L]`` weights (0 off the decision points), or a
    per-chunk callable the fused loss pass calls (:class:`InPassWeights`); ``finish`` runs after the loss."""

    #: Whether :meth:`weights` scores (runs a judge) in the step, so that its time is the step's judge time; the
    #: store and the static cache only read, the in-pass source scores inside the loss (its time is the loss's).
    scores_in_step: ClassVar[bool] = False

    def __init__(self, plan: StreamPlan) -> None:
        self.plan = plan

    def weights(self, batch: StreamBatch, teacher_out: torch.Tensor, student_out: torch.Tensor, step: StepState) -> Any:
        raise NotImplementedError

    def finish(self, step: StepState) -> None:
        """After the loss pass. Default: nothing."""


class StoreWeights(WeightSource):
    """The weights the batch carries (the scored rollout store, offline mode)."""

    def weights(self, batch: StreamBatch, teacher_out: torch.Tensor, student_out: torch.Tensor, step: StepState) -> Any:
        if batch.weights is None:
            raise VcrdError(
                f"{self.plan.name} stream: the batch carries no weights (offline mode needs scored rollouts)"
            )
        return batch.weights


def _scorable(points: DecisionPoints, logits: torch.Tensor, chunk: int = 256) -> bool:
    """No NaN or +inf at the points' logits rows (``-inf`` is a legitimate mask), one ``[chunk, V]`` at a time."""
    for part in points.chunks(chunk):
        rows = points.logits_at(logits, part.start, part.stop)
        if bool(torch.isnan(rows).any() or torch.isposinf(rows).any()):
            return False
    return True


class OnlineWeights(WeightSource):
    """:func:`score_batch` on this step's logits: the judge reads the current student (its proposals on the teacher
    prefix, its greedy tokens), proposals drawn with the step's generator."""

    scores_in_step: ClassVar[bool] = True

    def weights(self, batch: StreamBatch, teacher_out: torch.Tensor, student_out: torch.Tensor, step: StepState) -> Any:
        plan = self.plan
        need_t, need_s = logits_needed(plan.stream, plan.judge, plan.rule)
        t_logits = step.engine.scoring_logits("teacher", teacher_out) if need_t else None
        s_logits = step.engine.scoring_logits("student", student_out) if need_s else None
        device = batch.input_ids.device
        if not all(_scorable(batch.points, x) for x in (t_logits, s_logits) if x is not None):
            # NaN / +inf logits (an overflow) cannot be scored: the non-finite guard skips this step.
            step.nonfinite = True
            return torch.zeros(batch.points.shape, device=device)
        gen = step.generator(plan.name, device) if plan.judge is not None else None
        scored = score_stream_batch(plan, batch, t_logits, s_logits, vocab_size=step.vocab_size, generator=gen)
        return scored.weights.detach()


class InPassWeights(WeightSource):
    """A :class:`~vcrd_core.RowJudge`'s weights made inside the fused-linear loss pass, as :func:`score_batch` would
    make them (:class:`~vcrd_core.judging.scoring.RowWeights`)."""

    #: What a row judge may read for its scores to be made in the pass (no proposals, so no parity).
    ROW_NEEDS = frozenset({Need.TEACHER_LOGITS, Need.STUDENT_GREEDY})

    def __init__(self, plan: StreamPlan) -> None:
        super().__init__(plan)
        self._pending: RowWeights | None = None

    @classmethod
    def applies(cls, plan: StreamPlan) -> bool:
        return isinstance(plan.judge, RowJudge) and plan.judge.needs <= cls.ROW_NEEDS and plan.rule.uses_scores()

    def weights(self, batch: StreamBatch, teacher_out: torch.Tensor, student_out: torch.Tensor, step: StepState) -> Any:
        self._pending = RowWeights(self.plan.judge, self.plan.rule, self.plan.stream)  # type: ignore[arg-type]
        return self._pending

    def finish(self, step: StepState) -> None:
        if self._pending is None:
            return
        row, self._pending = self._pending, None
        row.finish()
        if row.nonfinite:
            step.nonfinite = True  # NaN / +inf teacher logits could not be scored: skip this step


class StaticCacheWeights(StoreWeights):
    """Online weights that do not depend on the student, scored once for the whole dataset before training
    (:meth:`prepare`) and then read from the batch: the *student-prefix* stream when its judge reads only token ids
    and teacher logits (``oracle``, PRMs). The rollout token is the student rollout's (fixed) and the other proposal
    is the frozen teacher's, drawn once per rollout with a generator seeded by the run seed and the rollout's chunk
    (so a resumed run recomputes the same values). Processes score disjoint chunks and share the results.

    Not cached: the teacher-prefix stream (the student's proposal changes every step; the rollout token's own score
    comes out of the same judge pass, so caching it would save nothing), and judges that read the student's greedy
    tokens (``teacher_likelihood``, which also needs no extra model).

    With on-policy student rollouts (``plan.fresh``) only the store's sequences carry cached weights; a batch of
    generated (or replayed) sequences is scored online, as :class:`OnlineWeights` does."""

    def __init__(self, plan: StreamPlan) -> None:
        super().__init__(plan)
        self._online = OnlineWeights(plan) if plan.fresh else None
        if plan.fresh:
            self.scores_in_step = True  # type: ignore[misc]  # generated batches are judged in the step

    def weights(self, batch: StreamBatch, teacher_out: torch.Tensor, student_out: torch.Tensor, step: StepState) -> Any:
        if batch.weights is None and self._online is not None:
            return self._online.weights(batch, teacher_out, student_out, step)
        return super().weights(batch, teacher_out, student_out, step)

    @classmethod
    def applies(cls, plan: StreamPlan) -> bool:
        if plan.judge is None or not plan.rule.uses_scores():
            return False
        return plan.stream is Stream.STUDENT_PREFIX and Need.STUDENT_GREEDY not in plan.judge.needs

    def prepare(
        self,
        dataset: Any,
        teacher: torch.nn.Module,
        *,
        batch_size: int,
        seed: int,
        pad_token_id: int,
        vocab_size: int | None,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        gather: Callable[[list[Any]], list[Any]] | None = None,
    ) -> None:
        """Score every example of ``dataset`` (a :class:`~vcrd_core.training.data.RolloutExamples`) and install the
        weights (``dataset.set_weights``); chunks of ``batch_size`` are split over ``world`` processes and
        ``gather`` (accelerate's ``gather_object``) shares them."""
        plan = self.plan
        chunks = list(range(0, len(dataset), batch_size))
        teacher_device = next(teacher.parameters()).device
        mine: dict[int, list[float]] = {}
        for c, start in enumerate(chunks):
            if c % world != rank:
                continue
            idx = list(range(start, min(start + batch_size, len(dataset))))
            seqs = [dataset.items[i][plan.name] for i in idx]
            batch = StreamBatch.of(seqs, pad_token_id, index=idx).to(device)
            with torch.no_grad():
                out = teacher(
                    input_ids=batch.input_ids.to(teacher_device), attention_mask=batch.attention_mask.to(teacher_device)
                )
            gen = torch.Generator(device=device).manual_seed(derive_seed(seed, "static", plan.name, c))
            scored = score_stream_batch(plan, batch, out.logits.to(device), None, vocab_size=vocab_size, generator=gen)
            w = scored.weights.detach().float().cpu()
            for b, i in enumerate(idx):
                p, r = len(seqs[b].prompt), len(seqs[b].response)
                mine[i] = w[b, p : p + r].tolist()
        if world > 1 and gather is not None:
            merged: dict[int, list[float]] = {}
            for part in gather([mine]):
                merged.update(part)
            mine = merged
        dataset.set_weights(plan.name, mine)


def weight_source(plan: StreamPlan, mode: str, cache_static: bool, engine: LossEngine) -> WeightSource:
    """The source of ``plan``'s weights (see the module docstring) in scoring ``mode`` with this ``engine``."""
    if mode == "offline" and plan.rule.uses_scores():
        return StoreWeights(plan)
    if mode == "online" and cache_static and StaticCacheWeights.applies(plan):
        return StaticCacheWeights(plan)
    if isinstance(engine, FusedLinearEngine) and InPassWeights.applies(plan):
        return InPassWeights(plan)
    return OnlineWeights(plan)
