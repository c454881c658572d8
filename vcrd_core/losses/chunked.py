"""Memory-bounded divergence over the vocabulary: values and student gradients, one row chunk at a time.

Why a custom :class:`torch.autograd.Function` (DESIGN.md §2.5): a row-chunk loop under plain autograd
keeps every chunk's log-softmax and mixture tensors alive until ``backward`` and therefore saves
nothing. Here the forward pass computes, for each chunk of rows, the values *and* the gradient of
their sum with respect to the chunk's student logits (rows are independent, so that gradient is each
row's own gradient), writes the gradient into one buffer shaped like the student logits, and frees
the chunk before the next one. Beyond the logits and that buffer, at most one ``[chunk, V]`` float32
block per intermediate tensor of one chunk is live. ``backward`` only scales the buffer's rows by the
incoming ``∂L/∂D_n`` (the chain rule ``∂L/∂z_n = (∂L/∂D_n) ∂D_n/∂z_n``), as Liger-Kernel's chunked
distillation losses do.

For one decision point with teacher logits ``u`` and student logits ``z`` (columns ``[:V]`` of the
tokenizer's real vocabulary, DESIGN.md §2.6) and temperature ``τ``:

    log p = log_softmax(u / τ),   log q = log_softmax(z / τ),   D_n = divergence.value(log p, log q)

computed in float32 whatever the logits' dtype (paper Eq. 2 for SKL/SRKL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from vcrd_core.errors import VcrdError
from vcrd_core.losses.inputs import (
    DivergenceValue,
    FlatRows,
    check_rows,
    check_temperature_and_chunk_size,
    checked_vocab,
    default_chunk_size,
)


def _check_inputs(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    rows: torch.Tensor | None,
    vocab_size: int | None,
    temperature: float,
    chunk_size: int | None,
) -> tuple[int, int]:
    """Validate the call; returns ``(vocab, number of flattened rows)``. Errors are one line each."""
    for what, t in (("teacher_logits", teacher_logits), ("student_logits", student_logits)):
        if not isinstance(t, torch.Tensor) or t.dim() < 1:
            raise VcrdError(f"chunked_divergence: {what} must be a tensor shaped [..., V] (got {type(t).__name__})")
        if not t.is_floating_point():
            raise VcrdError(f"chunked_divergence: {what} must be floating point (got {t.dtype})")
    if teacher_logits.shape[:-1] != student_logits.shape[:-1]:
        raise VcrdError(
            "chunked_divergence: teacher_logits and student_logits must have the same leading dims "
            f"(got {tuple(teacher_logits.shape)} and {tuple(student_logits.shape)})"
        )
    if teacher_logits.device != student_logits.device:
        raise VcrdError(
            f"chunked_divergence: teacher_logits are on {teacher_logits.device} but student_logits on "
            f"{student_logits.device}; move both to one device"
        )
    where = "chunked_divergence"
    vocab = checked_vocab(where, vocab_size, teacher_logits.shape[-1], student_logits.shape[-1], "logits")
    check_temperature_and_chunk_size(where, temperature, chunk_size)
    m = check_rows(where, rows, tuple(student_logits.shape[:-1]))
    if rows is not None:
        if torch.unique(rows).numel() != rows.numel():
            raise VcrdError("chunked_divergence: rows contains duplicate indices; each decision point must appear once")
    return vocab, m


class TeacherRows:
    """Where a chunk's teacher log-probabilities come from, and how the student's are laid out beside them.

    The dense teacher (:class:`DenseTeacher`, the teacher's logits) gives ``log softmax`` over the real vocabulary
    for both; a sparse teacher (:class:`vcrd_core.losses.sparse.SparseTeacherRows`, a top-k cache) gives both
    models' distributions coarsened to the teacher's top-k ids and one tail bucket. The divergence plugin sees
    only the two ``[chunk, C]`` float32 log-probability tensors either way.
    """

    def pair(
        self, start: int, rows: torch.Tensor, student_chunk: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(teacher_logp, student_logp)`` of the chunk whose decision points are ``rows`` (flat indices; the
        chunk starts at position ``start`` of the call's rows); ``student_chunk``: the student's float32 logits
        at those rows, ``[c, V]`` (differentiable; ``student_logp`` must stay so)."""
        raise NotImplementedError


class DenseTeacher(TeacherRows):
    """The teacher's logits ``[..., Vt]``: both distributions are ``log softmax(logits / τ)`` over ``[:vocab]``."""

    def __init__(self, teacher_logits: torch.Tensor, vocab: int) -> None:
        self.rows = FlatRows(teacher_logits.detach(), vocab)

    def pair(
        self, start: int, rows: torch.Tensor, student_chunk: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        teacher_chunk = self.rows.take(rows).float()
        if temperature != 1.0:  # skipped at τ = 1: saves a [chunk, V] copy per tensor
            teacher_chunk, student_chunk = teacher_chunk / temperature, student_chunk / temperature
        return torch.log_softmax(teacher_chunk, dim=-1), torch.log_softmax(student_chunk, dim=-1)


def _chunk_values(
    divergence: DivergenceValue,
    teacher: TeacherRows,
    start: int,
    rows: torch.Tensor,
    student_chunk: torch.Tensor,
    temperature: float,
    row_params: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``D`` for one chunk, in float32 (the graph, if any, reaches ``student_chunk``); ``row_params``: the chunk's
    rows of the divergence's per-point parameters."""
    n = student_chunk.shape[0]
    teacher_logp, student_logp = teacher.pair(start, rows, student_chunk.float(), temperature)
    values = divergence.value(teacher_logp, student_logp, **(row_params or {}))
    if not isinstance(values, torch.Tensor) or values.shape != (n,):
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise VcrdError(
            f"divergence '{getattr(divergence, 'name', type(divergence).__name__)}': value() must return one value "
            f"per row, shape ({n},); got {got}"
        )
    return values.float()


class _ChunkedDivergenceFunction(torch.autograd.Function):
    """Values in forward, each row's gradient precomputed chunk by chunk; backward scales rows."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student_logits: torch.Tensor,
        teacher: TeacherRows,
        divergence: DivergenceValue,
        rows: torch.Tensor,
        all_rows: bool,
        vocab: int,
        temperature: float,
        chunk: int,
        row_params: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        n = rows.numel()
        out = torch.empty(n, dtype=torch.float32, device=student_logits.device)
        # Contiguous so that its flat [M, Vs] view always exists; zeros at unselected rows and padded columns.
        grad = torch.zeros(student_logits.shape, dtype=student_logits.dtype, device=student_logits.device)
        grad_rows = grad.view(-1, grad.shape[-1])[:, :vocab]
        student = FlatRows(student_logits, vocab)
        for start in range(0, n, chunk):
            r = rows[start : start + chunk]
            with torch.enable_grad():
                s = student.take(r).detach().float().requires_grad_(True)
                params = {k: v[start : start + chunk] for k, v in row_params.items()}
                values = _chunk_values(divergence, teacher, start, r, s, temperature, params)
                if values.requires_grad:
                    (g,) = torch.autograd.grad(values.sum(), s, allow_unused=True)
                else:  # a divergence constant in the student
                    g = None
            out[start : start + chunk] = values.detach()
            if g is not None:
                grad_rows.index_copy_(0, r, g.to(grad.dtype))
            del s, values, g
        ctx.grad = grad
        ctx.rows = None if all_rows else rows
        ctx.chunk = chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad: torch.Tensor | None = ctx.grad
        if grad is None:
            raise VcrdError(
                "chunked_divergence: its result supports a single backward pass (the gradient buffer is "
                "scaled in place); recompute the divergence instead of using retain_graph=True"
            )
        ctx.grad = None
        flat = grad.view(-1, grad.shape[-1])
        rows: torch.Tensor | None = ctx.rows
        # Scale each row by dL/dD_n in float32, one chunk at a time (bounded; one rounding to a bf16 buffer).
        for start in range(0, grad_output.numel(), ctx.chunk):
            scale = grad_output[start : start + ctx.chunk].float().unsqueeze(1)
            if rows is None:
                block = flat[start : start + ctx.chunk]
                if block.dtype == torch.float32:
                    block.mul_(scale)
                else:
                    block.copy_(block.float().mul_(scale))
            else:
                r = rows[start : start + ctx.chunk]
                flat.index_copy_(0, r, flat.index_select(0, r).float().mul_(scale).to(flat.dtype))
        return grad, None, None, None, None, None, None, None, None


def chunked_divergence(
    divergence: DivergenceValue,
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    row_params: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``D(p_n, q_n)`` for each selected row ``n``, float32 ``[n]``, differentiable w.r.t. ``student_logits``.

    Args:
        divergence: states ``value(log p, log q) -> [n]`` on one float32 chunk.
        teacher_logits: ``[..., Vt]``; never receives a gradient (one that requires grad is detached).
        student_logits: ``[..., Vs]`` with the same leading dims; any float dtype (bf16 included).
        rows: optional 1-D int64 flat indices into the leading dims (the decision points), unique;
            default: every row, in order.
        vocab_size: the tokenizer's real vocabulary; only columns ``[:vocab_size]`` are used. Required
            when ``Vt != Vs`` (padded lm_heads, DESIGN.md §2.6).
        temperature: ``τ > 0``; both distributions are ``softmax(logits / τ)``.
        chunk_size: rows per chunk; default :func:`default_chunk_size` (a ~128 MiB float32 block).
        row_params: per-row parameters of the divergence (``{name: [n]}``, aligned with ``rows``, detached):
            each chunk's slice is passed to ``divergence.value`` as keyword arguments
            (:meth:`vcrd_core.Divergence.row_parameters`).

    The gradient is computed in the forward pass (see the module docstring), so peak memory is the
    logits, one gradient buffer in the student's dtype and one chunk's intermediates. Consequences:
    double backward is unsupported (differentiating the returned gradient raises, as with any
    ``once_differentiable`` function), and the buffer is scaled in place by ``backward``, so the
    result supports a single backward pass (a second one raises :class:`VcrdError`). With bf16 student
    logits the gradient is rounded to bf16 when stored and again after scaling (≤ 2 bf16 roundings).
    If the student does not require grad (or grad mode is off), no gradient work is done at all.
    ``rows`` is checked (range, uniqueness) on the host: one device synchronisation per call.
    """
    vocab, m = _check_inputs(teacher_logits, student_logits, rows, vocab_size, temperature, chunk_size)
    return divergence_over_rows(
        divergence,
        DenseTeacher(teacher_logits, vocab),
        student_logits,
        rows=rows,
        num_rows=m,
        vocab=vocab,
        temperature=temperature,
        chunk_size=chunk_size,
        row_params=row_params,
    )


def divergence_over_rows(
    divergence: DivergenceValue,
    teacher: TeacherRows,
    student_logits: torch.Tensor,
    *,
    rows: torch.Tensor | None,
    num_rows: int,
    vocab: int,
    temperature: float,
    chunk_size: int | None,
    row_params: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The chunked computation behind :func:`chunked_divergence` for any :class:`TeacherRows` (inputs already
    checked): values, and the student logits' gradient made in the forward pass."""
    chunk = chunk_size if chunk_size is not None else default_chunk_size(vocab)
    all_rows = rows is None
    device = student_logits.device
    rows = torch.arange(num_rows, device=device) if rows is None else rows.to(device).long()
    temperature = float(temperature)
    params = _checked_row_params(row_params, rows.numel(), device)

    if not (student_logits.requires_grad and torch.is_grad_enabled()):
        out = torch.empty(rows.numel(), dtype=torch.float32, device=device)
        student = FlatRows(student_logits.detach(), vocab)
        with torch.no_grad():
            for start in range(0, rows.numel(), chunk):
                r = rows[start : start + chunk]
                sliced = {k: v[start : start + chunk] for k, v in params.items()}
                out[start : start + chunk] = _chunk_values(
                    divergence, teacher, start, r, student.take(r), temperature, sliced
                )
        return out

    return _ChunkedDivergenceFunction.apply(
        student_logits, teacher, divergence, rows, all_rows, vocab, temperature, chunk, params
    )


def _checked_row_params(
    row_params: Mapping[str, torch.Tensor] | None, n: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """The per-row parameters, detached float32 on ``device``; each must be ``[n]`` (one line otherwise)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in (row_params or {}).items():
        if not isinstance(value, torch.Tensor) or value.shape != (n,):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise VcrdError(
                f"chunked_divergence: row parameter {name!r} must be a tensor [{n}] (one per row), got {got}"
            )
        out[name] = value.detach().to(device=device, dtype=torch.float32)
    return out


def token_logprobs(
    logits: torch.Tensor,
    rows: torch.Tensor,
    tokens: torch.Tensor,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``log softmax(logits[row] / τ)[token]`` over the first ``vocab_size`` columns, per flat row, float32 ``[n]``,
    no gradient; chunked like :func:`chunked_divergence` (one ``[chunk, V]`` block live). A token outside the real
    vocabulary gets ``-inf``."""
    chunk = chunk_size if chunk_size is not None else default_chunk_size(vocab_size)
    flat = FlatRows(logits.detach(), vocab_size)
    rows = rows.to(logits.device).long()
    tokens = tokens.to(logits.device).long()
    out = torch.empty(rows.numel(), dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for start in range(0, rows.numel(), chunk):
            block = flat.take(rows[start : start + chunk]).float()
            if temperature != 1.0:
                block = block / temperature
            t = tokens[start : start + chunk]
            inside = t < vocab_size
            picked = block.gather(1, t.clamp_max(vocab_size - 1).unsqueeze(1)).squeeze(1)
            value = picked - torch.logsumexp(block, dim=-1)
            out[start : start + chunk] = value.masked_fill(~inside, float("-inf"))
    return out
