"""Proposals, judge scores and weights of one batch: the one implementation of both scoring modes.

Offline scoring (``vcrd score``, the rollout stage) and online scoring (the training step, every step with
the current student) call :func:`score_batch` on a padded batch of one stream:

1. **Proposals** (paper §2.1, Table 8: both proposals at the same prefix). On the teacher prefix the
   rollout token is the teacher's ``a^T_t`` and the *student* proposes ``a^S_t`` from its logits at row
   ``t-1``; on the student prefix the rollout token is ``a^S_t`` and the *teacher* proposes ``a^T_t``.
   The other model samples (``sample``: temperature and top-p of the rollouts, seeded through a
   ``torch.Generator``) or takes its argmax (``greedy``). Only the tokenizer's real ids
   (``[:vocab_size]``) can be proposed: padded lm_head columns get no mass.
2. **Scores**: the judge's ``r_s`` and ``r_t`` through :func:`vcrd_core.judging.judge.checked_scores`
   (NaN or out-of-range scores are refused before they become weights). What a judge reads is what it
   declares in ``needs``: token proposals, the teacher logits the step already has, the student's greedy
   tokens.
3. **Weights**: the weighting rule on those scores, with the rule's parity weight where both proposals
   are the same token (for judges whose ``r_t`` scores the teacher's token), 0 off the decision points.

A rule that reads no score (``constant``) needs no judge: nothing is proposed or scored then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from vcrd_core.data.examples import Example
from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.judging.judge import Judge, JudgeRequest, Need, RowJudge, checked_scores
from vcrd_core.losses.fused_linear import RowChunk, RowExtras
from vcrd_core.losses.weighting import WeightingRule, check_weight_counts, invalid_weight_counts

ProposalMode = Literal["sample", "greedy"]

#: Decision points per ``[chunk, V]`` float32 block when proposing (bounds memory at large vocabularies).
PROPOSAL_CHUNK = 256


def _real_logits(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    width = logits.shape[-1]
    if vocab_size is None:
        return logits
    if not 1 <= vocab_size <= width:
        raise VcrdError(
            f"proposals: the tokenizer has {vocab_size} ids but the logits have {width} columns; "
            "the logits must cover every real id"
        )
    return logits[..., :vocab_size]


def propose(
    logits: torch.Tensor,
    mode: ProposalMode,
    *,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One proposed token id per row of ``[n, V]`` logits (int64 ``[n]``).

    ``greedy``: the argmax over the real ids. ``sample``: a draw from ``softmax(logits / temperature)``
    restricted to the smallest set of most likely ids whose mass reaches ``top_p`` (nucleus sampling, as
    vLLM and transformers' ``TopPLogitsWarper`` do); ``temperature == 0`` is greedy.
    """
    if mode not in ("sample", "greedy"):
        raise VcrdError(f"proposals: unknown mode {mode!r}; valid: sample, greedy")
    if not 0 < top_p <= 1:
        raise VcrdError(f"proposals: top_p must lie in (0, 1], got {top_p!r}")
    if temperature < 0:
        raise VcrdError(f"proposals: temperature must be >= 0, got {temperature!r}")
    real = _real_logits(logits, vocab_size).float()
    if mode == "greedy" or temperature == 0:
        return real.argmax(dim=-1)
    probs = torch.softmax(real / temperature, dim=-1)
    if top_p < 1:
        ordered, order = probs.sort(dim=-1, descending=True)
        before = ordered.cumsum(dim=-1) - ordered  # mass of the more likely ids
        ordered = ordered.masked_fill(before >= top_p, 0.0)  # the most likely id always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def propose_at(
    points: DecisionPoints,
    logits: torch.Tensor,
    mode: ProposalMode,
    *,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    chunk_size: int = PROPOSAL_CHUNK,
) -> torch.Tensor:
    """:func:`propose` at every decision point from unshifted ``[B, L, V]`` logits (row ``t-1``), as a
    ``[B, L]`` int64 tensor (0 off the points); ``[chunk_size, V]`` at a time."""
    points.check_shape(logits, "logits", "proposals")
    out = torch.zeros(points.num_points, dtype=torch.long, device=logits.device)
    for chunk in points.chunks(chunk_size):
        out[chunk] = propose(
            points.logits_at(logits, chunk.start, chunk.stop),
            mode,
            vocab_size=vocab_size,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
        )
    return points.scatter(out)


def logits_needed(stream: Stream | str, judge: Judge | None, rule: WeightingRule) -> tuple[bool, bool]:
    """Which logits :func:`score_batch` reads for ``stream``, as ``(teacher, student)``: the other model's when the
    judge scores proposals (``Need.TOKEN_IDS``), the teacher's when it reads teacher logits, the student's when it
    reads the student's greedy tokens; none for a rule that reads no score. The one mapping from what a judge
    needs to what a caller must provide."""
    if judge is None or not rule.uses_scores():
        return False, False
    needs = judge.needs
    teacher_prefix = Stream(stream) is Stream.TEACHER_PREFIX
    teacher = Need.TEACHER_LOGITS in needs or (Need.TOKEN_IDS in needs and not teacher_prefix)
    student = Need.STUDENT_GREEDY in needs or (Need.TOKEN_IDS in needs and teacher_prefix)
    return teacher, student


@dataclass
class ScoredBatch:
    """What scoring produced for one stream's batch; every tensor ``[B, L]``, meaningful at the points.

    ``proposals``: the other model's proposal (None when the judge reads none); ``student_greedy``: the
    student's argmax (None unless the judge reads it); ``same_token``: both proposals equal (None when
    parity does not apply); ``r_s``/``r_t``: the judge's scores (None without a judge); ``weights``:
    the rule's weights, 0 off the decision points.
    """

    stream: Stream
    points: DecisionPoints
    weights: torch.Tensor
    proposals: torch.Tensor | None = None
    student_greedy: torch.Tensor | None = None
    same_token: torch.Tensor | None = None
    r_s: torch.Tensor | None = None
    r_t: torch.Tensor | None = None


def score_batch(
    stream: Stream | str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    points: DecisionPoints,
    teacher_logits: torch.Tensor | None,
    student_logits: torch.Tensor | None,
    judge: Judge | None,
    rule: WeightingRule,
    *,
    proposal: ProposalMode = "sample",
    temperature: float = 1.0,
    top_p: float = 1.0,
    vocab_size: int | None = None,
    prompt_lengths: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    examples: Sequence[Example | None] | None = None,
) -> ScoredBatch:
    """Proposals, scores and weights of one stream's batch (see the module docstring).

    ``teacher_logits`` / ``student_logits`` are the models' unshifted outputs ``[B, L, V]`` on this
    batch (no gradient is needed or kept); the other model's logits are required when the judge reads
    proposals, the student's when it reads the student's greedy tokens, the teacher's when it reads
    teacher logits. ``proposal``, ``temperature`` and ``top_p`` say how the other model proposes.
    ``prompt_lengths`` and ``examples`` (each sequence's :class:`~vcrd_core.data.examples.Example`) reach the
    judge unchanged through :class:`~vcrd_core.judging.judge.JudgeRequest`.
    """
    stream = Stream(stream)
    where = f"scoring ({stream.value} stream)"
    if not rule.uses_scores():
        weights = rule(
            torch.zeros(points.shape, device=input_ids.device),
            torch.zeros(points.shape, device=input_ids.device),
            mask=points.mask.to(input_ids.device),
        )
        return ScoredBatch(stream, points, weights)
    if judge is None:
        raise VcrdError(f"{where}: the weighting rule '{rule.name}' reads judge scores, but no judge was given")
    other = student_logits if stream is Stream.TEACHER_PREFIX else teacher_logits
    needs = judge.needs
    proposals = student_greedy = same_token = None
    with torch.no_grad():
        if Need.TOKEN_IDS in needs:
            if other is None:
                who = "student" if stream is Stream.TEACHER_PREFIX else "teacher"
                raise VcrdError(f"{where}: judge '{judge.name}' scores proposals, so the {who} logits are needed")
            proposals = propose_at(
                points,
                other.detach(),
                proposal,
                vocab_size=vocab_size,
                temperature=temperature,
                top_p=top_p,
                generator=generator,
            )
        if Need.STUDENT_GREEDY in needs:
            if student_logits is None:
                raise VcrdError(
                    f"{where}: judge '{judge.name}' reads the student's greedy tokens: student logits needed"
                )
            student_greedy = propose_at(points, student_logits.detach(), "greedy", vocab_size=vocab_size)
        if Need.TEACHER_LOGITS in needs and teacher_logits is None:
            raise VcrdError(f"{where}: judge '{judge.name}' reads the teacher logits, but none were given")
        request = JudgeRequest(
            stream=stream,
            input_ids=input_ids,
            attention_mask=attention_mask,
            points=points,
            proposals=proposals,
            student_greedy=student_greedy,
            teacher_logits=None if teacher_logits is None else teacher_logits.detach(),
            prompt_lengths=prompt_lengths,
            examples=examples,
        )
        scores = checked_scores(judge, request)
        if proposals is not None and judge.parity_on_same_token:
            same_token = (proposals == input_ids.to(proposals.device)) & points.mask.to(proposals.device)
    weights = rule(scores.r_s, scores.r_t, same_token, mask=points.mask.to(scores.r_s.device))
    return ScoredBatch(stream, points, weights, proposals, student_greedy, same_token, scores.r_s, scores.r_t)


class RowWeights:
    """Weights of one stream made inside the fused-linear loss pass, for a :class:`~vcrd_core.RowJudge`: a
    callable for :class:`~vcrd_core.losses.objective.HiddenStreamInputs` ``weights`` (with :attr:`want`); call
    :meth:`finish` after the pass.

    Per chunk of decision points it reads the chunk's teacher logits and the student's greedy tokens (from the
    logits the pass computes anyway), scores them with :meth:`RowJudge.score_rows` and applies the rule's formula
    (no parity: a row judge reads no proposal, as in :func:`score_batch`). Nothing is read back to the host per
    chunk (a GPU keeps its queue full); what :func:`~vcrd_core.judging.judge.checked_scores` and the rule refuse
    is counted on the device and refused by :meth:`finish`, in one line: scores that are NaN at finite logits or
    outside ``[0, 1]``, weights that are NaN, negative or infinite. Rows whose teacher logits are NaN / +inf
    cannot be scored: their weight is 0 and :attr:`nonfinite` counts them after :meth:`finish` (the trainer then
    skips the step). The weights equal :func:`score_batch`'s on the same logits.
    """

    def __init__(self, judge: Judge, rule: WeightingRule, stream: Stream | str) -> None:
        if not isinstance(judge, RowJudge):  # the judge's type decides: one checked place
            raise VcrdError(f"RowWeights: judge '{judge.name}' is not a RowJudge (it reads more than one logits row)")
        self.judge: RowJudge = judge
        self.rule, self.stream = rule, Stream(stream)
        #: What the pass must hand to this callable.
        self.want = RowExtras(student_greedy=True, teacher_logits=True)
        self.nonfinite = 0
        self._counts: torch.Tensor | None = None  # unscorable rows, NaN scores, out-of-range scores
        self._weights: list[torch.Tensor] = []

    def __call__(self, chunk: RowChunk) -> torch.Tensor:
        logits, greedy = chunk.teacher_logits, chunk.student_greedy
        if logits is None or greedy is None:
            raise VcrdError("RowWeights: the pass must hand over teacher_logits and student_greedy (use .want)")
        bad = torch.isnan(logits).any(-1) | torch.isposinf(logits).any(-1)
        r_s, r_t = self.judge.score_rows(logits, greedy)
        where = f"judge '{self.judge.name}' ({self.stream.value} stream)"
        for role, values in (("r_s", r_s), ("r_t", r_t)):
            if not isinstance(values, torch.Tensor) or values.shape != greedy.shape:
                got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
                raise VcrdError(f"{where}: score_rows returned {role} of shape {got}, expected {tuple(greedy.shape)}")
        r_s, r_t = r_s.float(), r_t.float()
        nan = (torch.isnan(r_s) | torch.isnan(r_t)) & ~bad
        outside = ((r_s < 0) | (r_s > 1) | (r_t < 0) | (r_t > 1)) & ~bad
        counts = torch.stack([bad.sum(), nan.sum(), outside.sum()])
        self._counts = counts if self._counts is None else self._counts + counts
        with torch.no_grad():
            raw = torch.as_tensor(self.rule.weight(r_s, r_t), dtype=torch.float32, device=r_s.device)
        try:
            weights = torch.broadcast_to(raw, r_s.shape).masked_fill(bad | nan | outside, 0.0)
        except RuntimeError:
            raise VcrdError(
                f"weighting rule '{self.rule.name}' returned weights of shape {tuple(raw.shape)}, expected "
                f"{tuple(r_s.shape)} (the scores' shape)"
            ) from None
        self._weights.append(weights)
        return weights

    def finish(self) -> None:
        """After the pass: refuse invalid scores or weights (one line), count the unscorable rows."""
        if self._counts is None:
            return
        unscorable, nan, outside = (int(c) for c in self._counts.tolist())
        self.nonfinite = unscorable
        where = f"judge '{self.judge.name}' ({self.stream.value} stream)"
        if nan:
            raise VcrdError(f"{where}: score_rows returned NaN scores at {nan} decision points with finite logits; "
                            "refusing to turn them into weights")  # fmt: skip
        if outside:
            raise VcrdError(f"{where}: score_rows returned scores outside [0, 1] at {outside} decision points")
        weights = torch.cat(self._weights)
        check_weight_counts(
            invalid_weight_counts(weights).tolist(), weights.numel(), f"weighting rule '{self.rule.name}' returned"
        )
        self._weights = []
