"""A sparse teacher: the top-k of the teacher's distribution at each decision point and the mass of the rest.

With static rollouts the frozen teacher's distribution at every decision point never changes, so it can be
computed once (``vcrd teacher-cache``) and kept as its ``k`` most likely ids, their log-probabilities and the
log of the remaining (tail) mass. This module holds that representation and the divergence computed from it.

**The tail is one extra category.** At a decision point with teacher top-k ids ``S`` both distributions are
coarsened by the same map (an id in ``S`` stays itself; every other id becomes "tail"):

    p̃ = (p_i for i in S, p_tail = Σ_{j∉S} p_j),    q̃ = (q_i for i in S, q_tail = Σ_{j∉S} q_j)

and the divergence plugin's ``value(teacher_logp, student_logp)`` is called on the two ``[n, k + 1]``
log-probability tensors, as on any chunk: divergence plugins need no change. ``p_tail`` is the teacher's exact
tail mass (a log-sum-exp over the non-top-k ids when the cache is made); ``q_tail`` is the student's, a
log-sum-exp over the same ids, so the student's gradient still pushes its tail mass toward the teacher's. For
an f-divergence (KL either way, the skew KLs, JSD) the coarsened value is at most the exact one (the data
processing inequality) and equals it when the student's tail is proportional to the teacher's. When the cache
holds every id (``k`` = the vocabulary) there is no tail column and the value is exact.

The alternatives, not taken: renormalising the top-k (drops the tail mass: the student is never told how much
mass belongs outside the top-k) and the student's own distribution on the tail (a teacher that agrees with
the student where it is unknown: no tail gradient at all).

The cache stores log-probabilities at one temperature ``τ`` (the top-k ids do not depend on it, the values and
the tail do), so a run whose objective temperature differs is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vcrd_core.errors import VcrdError
from vcrd_core.losses.chunked import TeacherRows, divergence_over_rows
from vcrd_core.losses.inputs import (
    DivergenceValue,
    FlatRows,
    check_rows,
    check_temperature_and_chunk_size,
    default_chunk_size,
)


@dataclass(frozen=True)
class SparseTeacher:
    """The teacher at ``n`` decision points: ``ids`` ``[n, k]`` (its ``k`` most likely ids, distinct, over the real
    vocabulary; int64, or int32 as the cache keeps them), ``logp`` ``[n, k]`` (their log-probabilities at
    ``temperature``; float32, or float16 as cached) and ``tail`` ``[n]`` float32 (the log of the remaining mass;
    ``-inf`` when ``k`` is the whole vocabulary)."""

    ids: torch.Tensor
    logp: torch.Tensor
    tail: torch.Tensor
    temperature: float = 1.0

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def tail_mass(self) -> torch.Tensor:
        """``[n]``: the share of the teacher's probability outside its top-k."""
        return self.tail.exp()

    def dense_logp(self, start: int, stop: int, vocab: int) -> torch.Tensor:
        """Rows ``start:stop`` as full ``[c, vocab]`` float32 log-probabilities, the tail mass spread evenly over the
        ``vocab - k`` ids outside the top-k (each gets ``log(p_tail / (vocab - k))``, never above the k-th
        probability, so the top-k of the result is the cached one). What a judge that reads teacher logits (a
        ``RowJudge`` in the fused pass: ``teacher_likelihood``) gets from a cache: exact at the top-k ids."""
        ids, logp = self.ids[start:stop].long(), self.logp[start:stop].float()
        rest = vocab - self.k
        tail = self.tail[start:stop].float()
        fill = tail - math.log(rest) if rest > 0 else torch.full_like(tail, float("-inf"))
        return fill[:, None].expand(ids.shape[0], vocab).clone().scatter_(1, ids, logp)

    def to(self, device: torch.device | str) -> SparseTeacher:
        return SparseTeacher(self.ids.to(device), self.logp.to(device), self.tail.to(device), self.temperature)


def topk_teacher(
    logits: torch.Tensor,
    rows: torch.Tensor,
    k: int,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> SparseTeacher:
    """The :class:`SparseTeacher` of ``logits`` ``[..., V]`` at the flat ``rows``: per row the ``k`` largest
    log-probabilities of ``log softmax(logits[:vocab_size] / τ)``, their ids and the exact log tail mass (a
    log-sum-exp over the other ids, not ``log(1 - Σ p)``, which loses every digit when the top-k holds almost
    all the mass). ``k`` is capped at ``vocab_size``. No gradient; one ``[chunk, V]`` block live at a time."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise VcrdError(f"topk_teacher: k={k!r} is invalid; expected an int >= 1")
    check_temperature_and_chunk_size("topk_teacher", temperature, chunk_size)
    check_rows("topk_teacher", rows, tuple(logits.shape[:-1]))
    k = min(k, vocab_size)
    chunk = chunk_size or default_chunk_size(vocab_size)
    flat = FlatRows(logits.detach(), vocab_size)
    rows = rows.to(logits.device).long()
    n = rows.numel()
    ids = torch.empty(n, k, dtype=torch.long, device=logits.device)
    logp = torch.empty(n, k, dtype=torch.float32, device=logits.device)
    tail = torch.empty(n, dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for start in range(0, n, chunk):
            block = flat.take(rows[start : start + chunk]).float()
            if temperature != 1.0:
                block = block / temperature
            block = torch.log_softmax(block, dim=-1)
            top = block.topk(k, dim=-1)
            ids[start : start + chunk] = top.indices
            logp[start : start + chunk] = top.values
            tail[start : start + chunk] = torch.logsumexp(block.scatter(1, top.indices, float("-inf")), dim=-1)
    return SparseTeacher(ids, logp, tail, float(temperature))


def coarsen(student_logp: torch.Tensor, ids: torch.Tensor, *, with_tail: bool = True) -> torch.Tensor:
    """The student's ``[c, V]`` log-probabilities at the teacher's ``ids`` ``[c, k]``, and (``with_tail``) the log
    of its mass on every other id as a last column: ``[c, k + 1]``; differentiable."""
    top = student_logp.gather(1, ids)
    if not with_tail:
        return top
    rest = torch.logsumexp(student_logp.scatter(1, ids, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([top, rest], dim=1)


class SparseTeacherRows(TeacherRows):
    """A :class:`SparseTeacher` aligned with a call's rows (row ``i`` of the teacher is the call's ``i``-th
    decision point): both distributions coarsened to the top-k ids and a tail bucket (the module docstring)."""

    def __init__(self, teacher: SparseTeacher, vocab: int) -> None:
        self.teacher = teacher
        #: No tail column when the top-k is the whole vocabulary (then the value is exact).
        self.with_tail = teacher.k < vocab

    def pair(
        self, start: int, rows: torch.Tensor, student_chunk: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stop = start + rows.numel()
        ids = self.teacher.ids[start:stop].long()
        teacher_logp = self.teacher.logp[start:stop].float()
        if self.with_tail:
            teacher_logp = torch.cat([teacher_logp, self.teacher.tail[start:stop, None].float()], dim=1)
        if temperature != 1.0:
            student_chunk = student_chunk / temperature
        student_logp = coarsen(torch.log_softmax(student_chunk, dim=-1), ids, with_tail=self.with_tail)
        return teacher_logp, student_logp


def check_sparse_teacher(where: str, teacher: SparseTeacher, n: int, vocab_size: int, temperature: float) -> None:
    """One line if ``teacher`` cannot serve ``n`` decision points over ``vocab_size`` ids at ``temperature``."""
    if not isinstance(teacher, SparseTeacher):
        raise VcrdError(f"{where}: the sparse teacher must be a SparseTeacher, got {type(teacher).__name__}")
    if len(teacher) != n:
        raise VcrdError(f"{where}: the sparse teacher has {len(teacher)} rows but {n} decision points")
    if abs(teacher.temperature - float(temperature)) > 1e-12:
        raise VcrdError(
            f"{where}: the teacher's log-probabilities were made at temperature {teacher.temperature:g}, the "
            f"objective runs at {float(temperature):g}; make the cache at the objective's temperature"
        )
    if teacher.ids.numel() and int(teacher.ids.max()) >= vocab_size:
        raise VcrdError(f"{where}: the sparse teacher holds id {int(teacher.ids.max())} >= vocab_size {vocab_size}")


def sparse_divergence(
    divergence: DivergenceValue,
    teacher: SparseTeacher,
    student_logits: torch.Tensor,
    *,
    rows: torch.Tensor,
    vocab_size: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``D(p̃_n, q̃_n)`` for each decision point ``n`` (flat ``rows`` into ``student_logits``' leading dims, aligned
    with ``teacher``'s rows), float32 ``[n]``, differentiable w.r.t. ``student_logits`` with the same memory bound
    and single-backward contract as :func:`vcrd_core.losses.chunked.chunked_divergence`. ``temperature`` must be
    the one the teacher's log-probabilities were made at."""
    where = "sparse_divergence"
    if not isinstance(student_logits, torch.Tensor) or not student_logits.is_floating_point():
        raise VcrdError(f"{where}: student_logits must be a floating-point tensor shaped [..., V]")
    check_temperature_and_chunk_size(where, temperature, chunk_size)
    m = check_rows(where, rows, tuple(student_logits.shape[:-1]))
    width = int(student_logits.shape[-1])
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= width:
        raise VcrdError(f"{where}: vocab_size={vocab_size!r} is invalid; expected an int in [1, {width}]")
    if torch.unique(rows).numel() != rows.numel():
        raise VcrdError(f"{where}: rows contains duplicate indices; each decision point must appear once")
    check_sparse_teacher(where, teacher, rows.numel(), vocab_size, temperature)
    return divergence_over_rows(
        divergence,
        SparseTeacherRows(teacher.to(student_logits.device), vocab_size),
        student_logits,
        rows=rows,
        num_rows=m,
        vocab=vocab_size,
        temperature=temperature,
        chunk_size=chunk_size,
    )
