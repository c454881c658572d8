r"""Fused-linear validity-weighted divergences: the loss from hidden states, never a ``[tokens, V]`` logits tensor.

:func:`fused_linear_divergence` takes the student's and the teacher's final hidden states and their lm_head
weights, and walks the selected rows (decision points) chunk by chunk. For one chunk it computes the logits
``h @ W[:V].T (+ b)`` of both models, the float32 log-softmax at temperature ``τ``, the divergence's value
(``divergence.value(log p, log q)``, the same plugin method :mod:`vcrd_core.losses.chunked` calls) and,
inside the forward pass (a custom :class:`torch.autograd.Function`, as Liger-Kernel's fused-linear losses
do), the gradient of the chunk's weighted values with respect to the student hidden rows, the student
lm_head weight and bias. Then the chunk is freed. Beyond the inputs, the weights, the gradient buffers
(``[*, H_s]`` like the hidden states, ``[V_s, H_s]`` like the lm_head weight if it requires grad) and a few
``[n]`` vectors, at most one ``[chunk, V]`` block per intermediate tensor of one chunk is live (about a
dozen float32 blocks for ``jsd``: ~1 GiB at 128 rows and V = 151,936; see ``chunk_size``), whatever the
number of rows. The ``[V_s, H_s]`` weight gradient (0.87 GiB in float32 for Qwen2.5-1.5B) exists only when
the lm_head requires grad.

For a selected row ``n`` with student hidden ``h_n``, teacher hidden ``g_n``:

.. math::

    z_n = W_s[:V]\,h_n (+ b_s[:V]),\quad u_n = W_t[:V]\,g_n (+ b_t[:V]),\quad
    D_n = \mathrm{divergence}\big(\log\mathrm{softmax}(u_n/τ),\ \log\mathrm{softmax}(z_n/τ)\big),

    \mathrm{loss} = \sum_n c_n D_n .

Design choice for the gradients (why a weighted *scalar*, not per-row values, is differentiable):
``∂L/∂W_s = Σ_n (∂L/∂D_n) (∂D_n/∂z_n)^T h_n`` mixes every row's ``[V]`` gradient with the downstream
factor ``∂L/∂D_n``. A function that returned differentiable per-row ``D_n`` would learn those factors only
in ``backward``, after the chunks are gone: it would have to keep ``[n, V]`` logit gradients (the memory
this module exists to avoid) or recompute every chunk in ``backward`` (a second full pass). Every
reduction the objective uses is linear in ``D`` with detached factors, so the caller passes them as
per-row **coefficients** ``c_n`` (``weights=``: VCRD's ``w_n`` times the reduction's factor, see
:func:`row_coefficients`) and the function returns the differentiable scalar ``Σ_n c_n D_n``: its
gradient w.r.t. hidden states, lm_head weight and bias is accumulated in forward (already multiplied
by ``c_n``), and ``backward`` only multiplies by the scalar ``∂L/∂loss`` (any downstream use of the
*scalar* — dividing by a global count, ``λ`` per stream, gradient accumulation — is exact). The per-row
values ``D_n`` come back detached, for logging and statistics. Liger-Kernel makes the same choice (it
returns a scalar loss) but has no per-row coefficients.

Numerics: the logits are computed in the *compute dtype* — the autocast dtype when autocast is enabled for
the hidden states' device at the call (as the models' own lm_heads would run under mixed precision), else
each lm_head weight's own dtype — with the hidden rows and the weights cast to it; then everything per row
is float32. The gradient matmuls run in the compute dtype too (the logit gradient is rounded to it first, as
plain autograd through bf16 logits would do); the weight gradient is accumulated in place in the compute
dtype (one rounding per chunk for bf16, as Liger-Kernel does) and cast to the weight's dtype at the end, the
bias gradient in float32. Autocast itself is disabled inside.

The same pass can also hand, per row, what a weight needs from these logits (opt-in through
``want=RowExtras(...)``; the plain loss path computes none of it): the student's greedy token (argmax over the
real ids) and the chunk's teacher logits.

How to use from the objective (one stream; ``decision_mask`` ``[B, L]``, weights ``w`` ``[B, L]``)::

    seq_idx, pos_idx = decision_mask.nonzero(as_tuple=True)
    rows = seq_idx * L + (pos_idx - 1)          # logits row t-1 for decision point t
    coeff, count = row_coefficients(w[seq_idx, pos_idx], seq_idx, reduction)   # vcrd_core.losses.reduction
    out = fused_linear_divergence(
        divergence, student_hidden, student_lm_head.weight, teacher_hidden, teacher_lm_head.weight,
        rows=rows, weights=coeff, vocab_size=tokenizer_vocab, temperature=τ,
    )
    loss_sum = out.loss          # == the objective's StreamOutput.loss_sum; count == its count
    values = out.values          # detached D_n for logging / weight statistics

``student_hidden``/``teacher_hidden`` are the models' last hidden states, ``[B, L, H]``, after the final
norm (the lm_head's input): for HF causal LMs call the base model (``model.model(...).last_hidden_state``;
under PEFT ``model.get_base_model().model(...)``) so that no ``[B, L, V]`` logits are built, and pass
``model.get_output_embeddings().weight`` (with tied embeddings, e.g. Qwen2.5-1.5B, that is the embedding
matrix: its gradient lands on the one shared parameter). The teacher's hidden states come from a
``torch.no_grad()`` forward.

Weights that depend on these logits (a :class:`~vcrd_core.RowJudge`'s ``r_s``/``r_t`` feed the weighting
rule, which is elementwise) need no second pass: pass a callable as ``weights``. It is called once per chunk,
after the chunk's extras and before its gradient, with a :class:`RowChunk` (the chunk's ``[start, stop)``
slice of the selected rows and its extras), and returns the chunk's coefficients ``c_n`` ``[stop - start]``
(detached); ``out.coefficients`` holds all of them afterwards::

    factor = row_coefficients(None, seq_idx, reduction)[0]         # 1 / n_b or 1: known before the pass
    def coefficients(chunk):
        r_s, r_t = judge.score_rows(chunk.teacher_logits, chunk.student_greedy)
        return rule.weight(r_s, r_t) * factor[chunk.start:chunk.stop]
    out = fused_linear_divergence(..., weights=coefficients,
                                  want=RowExtras(student_greedy=True, teacher_logits=True))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
from vcrd_core.losses.sparse import SparseTeacher, SparseTeacherRows, check_sparse_teacher

#: One chunk's divergence values from teacher and student logits (see :func:`_compiled_values`).
_ValuesFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_WHERE = "fused_linear_divergence"


@dataclass(frozen=True)
class RowExtras:
    """What else the pass hands the ``weights`` callable per chunk, from the same logits (off by default: the loss
    path pays nothing).

    * ``student_greedy``: the student's argmax over the real ids ``[0, V)`` (int64 ``[n]``; also returned in
      :attr:`FusedLinearOutput.student_greedy`).
    * ``teacher_logits``: the chunk's teacher logits (float32 ``[stop - start, V]``, real ids only, before any
      temperature), for a :class:`vcrd_core.judging.judge.RowJudge`. They are not kept: nothing of them is returned.
    """

    student_greedy: bool = False
    teacher_logits: bool = False


@dataclass
class RowChunk:
    """One chunk as a ``weights`` callable sees it: selected rows ``[start, stop)`` (``rows``: their flat row
    indices) and the extras asked for through :class:`RowExtras` (``None`` otherwise)."""

    start: int
    stop: int
    rows: torch.Tensor
    student_greedy: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None


@dataclass
class FusedLinearOutput:
    """Result of :func:`fused_linear_divergence` for ``n`` selected rows.

    ``loss``: float32 scalar ``Σ_n c_n D_n``, differentiable w.r.t. the student hidden states, lm_head
    weight and bias (whichever require grad). ``values``: the detached float32 ``D_n``, ``[n]``.
    ``coefficients``: the float32 ``c_n`` used (given, returned by a ``weights`` callable, or 1).
    ``student_greedy``: ``None`` unless asked for through :class:`RowExtras`.
    """

    loss: torch.Tensor
    values: torch.Tensor
    coefficients: torch.Tensor
    student_greedy: torch.Tensor | None = None


def _check_matrix(what: str, hidden: object, weight: object, bias: object) -> tuple[int, int]:
    """``hidden [..., H]``, ``weight [V, H]``, ``bias [V]``; returns ``(V, H)``."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 1 or not hidden.is_floating_point():
        got = f"{hidden.dtype} {tuple(hidden.shape)}" if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise VcrdError(f"{_WHERE}: {what}_hidden must be a floating-point tensor [..., H] (got {got})")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        got = f"{weight.dtype} {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise VcrdError(f"{_WHERE}: {what}_weight must be a floating-point lm_head weight [V, H] (got {got})")
    v, h = weight.shape
    if hidden.shape[-1] != h:
        raise VcrdError(
            f"{_WHERE}: {what}_hidden has hidden size {hidden.shape[-1]} but {what}_weight is [V, H] = "
            f"{tuple(weight.shape)}; pass the lm_head weight as stored (nn.Linear.weight, not transposed)"
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (v,) or not bias.is_floating_point():
            got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise VcrdError(f"{_WHERE}: {what}_bias must be a floating-point tensor [V] = ({v},), got {got}")
    for name, t in ((f"{what}_weight", weight), (f"{what}_bias", bias)):
        if isinstance(t, torch.Tensor) and t.device != hidden.device:
            raise VcrdError(
                f"{_WHERE}: {name} is on {t.device} but {what}_hidden on {hidden.device}; move them to one device"
            )
    return v, h


def _check_extras(want: RowExtras) -> None:
    if not isinstance(want, RowExtras):
        raise VcrdError(f"{_WHERE}: want must be a RowExtras(...) or None, got {type(want).__name__}")


#: The logits' width in the matmuls is rounded up to a multiple of this many lm_head rows (where the lm_head has
#: them): a real vocabulary like Qwen2.5's 151,665 is odd, and GEMMs whose leading dimension is not a multiple of
#: 8 elements (16 bytes in bf16) miss the tensor-core kernels.
ALIGN_ROWS = 64


def _aligned(vocab: int, rows: int) -> int:
    """``vocab`` rounded up to :data:`ALIGN_ROWS`, at most the lm_head's ``rows``."""
    return min(rows, -(-vocab // ALIGN_ROWS) * ALIGN_ROWS)


def _linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return hidden @ weight.T
    return torch.addmm(bias.to(weight.dtype), hidden, weight.T)


@dataclass
class _Plan:
    """Everything of one call but the three differentiable inputs."""

    divergence: DivergenceValue
    teacher_hidden: torch.Tensor | None
    teacher_weight: torch.Tensor | None
    teacher_bias: torch.Tensor | None
    rows: torch.Tensor
    coefficients: torch.Tensor
    coefficient_fn: Callable[[RowChunk], torch.Tensor] | None
    vocab: int
    temperature: float
    chunk: int
    want: RowExtras
    compute_dtype: torch.dtype
    autocast: bool
    compiled: _ValuesFn | None = None
    #: A sparse teacher (top-k + tail bucket, :mod:`vcrd_core.losses.sparse`) instead of hidden states and lm_head.
    teacher_rows: SparseTeacherRows | None = None


def _run(
    plan: _Plan,
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    need: tuple[bool, bool, bool],
) -> tuple[FusedLinearOutput, tuple[torch.Tensor | None, ...]]:
    """The chunk loop: per-row values and extras, and (for ``need``) gradients of ``Σ c_n D_n``."""
    need_h, need_w, need_b = need
    need_any = need_h or need_w or need_b
    rows, vocab, tau, want, div = plan.rows, plan.vocab, plan.temperature, plan.want, plan.divergence
    n, device = rows.numel(), student_hidden.device
    cdtype = plan.compute_dtype
    # The matmuls use the lm_head rows up to an aligned width (see _aligned): their extra columns are dropped
    # before anything is computed from the logits, and get a zero gradient.
    vs = _aligned(vocab, student_weight.shape[0])
    ws = student_weight.detach()[:vs].to(cdtype)  # a copy only under autocast with another weight dtype
    bs = None if student_bias is None else student_bias.detach()[:vs]
    sparse = plan.teacher_rows
    wt = bt = t_rows = None
    if sparse is None:
        assert plan.teacher_weight is not None and plan.teacher_hidden is not None
        wt = plan.teacher_weight[: _aligned(vocab, plan.teacher_weight.shape[0])]
        if plan.autocast:
            wt = wt.to(cdtype)  # else the teacher's logits stay in its own dtype, as its own lm_head computes them
        bt = None if plan.teacher_bias is None else plan.teacher_bias[: wt.shape[0]]
        t_rows = FlatRows(plan.teacher_hidden)
    s_rows = FlatRows(student_hidden.detach())

    values = torch.empty(n, dtype=torch.float32, device=device)
    greedy = torch.empty(n, dtype=torch.long, device=device) if want.student_greedy else None

    grad_h = grad_w = grad_b = None
    if need_h:  # contiguous [M, H_s] buffer: zeros at unselected rows
        shape = (_numel_lead(student_hidden), student_hidden.shape[-1])
        grad_h = torch.zeros(shape, dtype=student_hidden.dtype, device=device)
    grad_w_low = None  # the accumulator in the compute dtype when it differs from the weight's
    if need_w:
        grad_w = torch.zeros_like(student_weight, memory_format=torch.contiguous_format)
        if cdtype != student_weight.dtype:
            grad_w_low = torch.zeros(ws.shape, dtype=cdtype, device=device)
    if need_b:
        assert student_bias is not None
        grad_b = torch.zeros(student_bias.shape, dtype=torch.float32, device=device)

    for start in range(0, n, plan.chunk):
        stop = min(start + plan.chunk, n)
        r = rows[start:stop]
        hs = s_rows.take(r).to(ws.dtype)
        zs = _linear(hs, ws, bs)[:, :vocab]
        if greedy is not None:
            greedy[start:stop] = zs.argmax(-1)
        s32 = zs.float()
        del zs
        t32 = None
        if sparse is None:
            assert wt is not None and t_rows is not None
            t32 = _linear(t_rows.take(r).to(wt.dtype), wt, bt)[:, :vocab].float()
        elif want.teacher_logits:  # for a row judge: the cached distribution, its tail spread evenly
            t32 = sparse.teacher.dense_logp(start, stop, vocab)
        with torch.set_grad_enabled(need_any):
            if need_any:
                s32 = s32.detach().requires_grad_(True)
            teacher_logp = None
            if sparse is not None:  # both coarsened to the teacher's top-k ids and a tail bucket
                teacher_logp, student_logp = sparse.pair(start, r, s32, tau)
                chunk_values = div.value(teacher_logp, student_logp)
            elif plan.compiled is None:
                assert t32 is not None
                teacher_logp = torch.log_softmax(t32 / tau if tau != 1.0 else t32, dim=-1)
                if not want.teacher_logits:
                    t32 = None  # before the student's log-softmax: one [chunk, V] block fewer at the peak
                student_logp = torch.log_softmax(s32 / tau if tau != 1.0 else s32, dim=-1)
                chunk_values = div.value(teacher_logp, student_logp)
            else:  # log-softmaxes + divergence (and its backward) as fused kernels
                student_logp = None
                chunk_values = plan.compiled(t32, s32)
            if not isinstance(chunk_values, torch.Tensor) or chunk_values.shape != (stop - start,):
                got = (
                    tuple(chunk_values.shape) if isinstance(chunk_values, torch.Tensor) else type(chunk_values).__name__
                )
                raise VcrdError(
                    f"divergence '{getattr(div, 'name', type(div).__name__)}': value() must return one value per row, "
                    f"shape ({stop - start},); got {got}"
                )
            chunk_values = chunk_values.float()
            if plan.coefficient_fn is not None:
                plan.coefficients[start:stop] = _chunk_coefficients(
                    plan.coefficient_fn,
                    RowChunk(
                        start,
                        stop,
                        r,
                        None if greedy is None else greedy[start:stop],
                        t32 if want.teacher_logits else None,
                    ),
                )
            t32 = None
            g = None
            if need_any and chunk_values.requires_grad:  # else: a divergence constant in the student
                weighted = (chunk_values * plan.coefficients[start:stop]).sum()
                (g,) = torch.autograd.grad(weighted, s32, allow_unused=True)
                del weighted
        values[start:stop] = chunk_values.detach()
        del teacher_logp, student_logp, chunk_values, s32
        if g is not None:
            if grad_b is not None:
                grad_b[:vocab] += g.sum(0)
            if vs == vocab:
                g_low = g.to(ws.dtype)
            else:  # zero-padded to the aligned width of ws
                g_low = torch.zeros((stop - start, vs), dtype=ws.dtype, device=device)
                g_low[:, :vocab] = g
            del g
            if grad_h is not None:
                grad_h.index_add_(0, r, (g_low @ ws).to(grad_h.dtype))
            if grad_w_low is not None:
                grad_w_low.addmm_(g_low.T, hs)
            elif grad_w is not None:
                grad_w[:vs].addmm_(g_low.T, hs)
            del g_low
        del hs

    if grad_w_low is not None:
        assert grad_w is not None
        grad_w[:vs].copy_(grad_w_low)
        del grad_w_low
    loss = (values * plan.coefficients).sum()
    out = FusedLinearOutput(
        loss=loss,
        values=values,
        coefficients=plan.coefficients,
        student_greedy=greedy,
    )
    if grad_b is not None:
        assert student_bias is not None
        grad_b = grad_b.to(student_bias.dtype)
    return out, (grad_h, grad_w, grad_b)


def _compiled_values(divergence: DivergenceValue, temperature: float) -> _ValuesFn:
    """``torch.compile`` of one chunk's ``divergence.value(log_softmax(t / τ), log_softmax(s / τ))`` (dynamic in
    the number of rows); autograd through it runs the compiled backward. Cached per divergence and ``τ``."""
    key = (id(divergence), temperature)
    found = _COMPILED.get(key)
    if found is not None and found[0] is divergence:
        return found[1]

    def values(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        if temperature != 1.0:
            teacher_logits, student_logits = teacher_logits / temperature, student_logits / temperature
        return divergence.value(torch.log_softmax(teacher_logits, -1), torch.log_softmax(student_logits, -1))

    compiled = torch.compile(values, dynamic=True)
    _COMPILED[key] = (divergence, compiled)
    return compiled


#: ``(id(divergence), τ) -> (divergence, compiled function)``: the divergence is kept, so its id stays its own.
_COMPILED: dict[tuple[int, float], tuple[Any, _ValuesFn]] = {}


def _chunk_coefficients(fn: Callable[[RowChunk], torch.Tensor], chunk: RowChunk) -> torch.Tensor:
    with torch.no_grad():
        c = fn(chunk)
    n = chunk.stop - chunk.start
    if not isinstance(c, torch.Tensor) or c.shape != (n,) or not c.is_floating_point():
        got = f"{c.dtype} {tuple(c.shape)}" if isinstance(c, torch.Tensor) else type(c).__name__
        raise VcrdError(
            f"{_WHERE}: the weights callable must return a float tensor [{n}] for rows [{chunk.start}, {chunk.stop}); "
            f"got {got}"
        )
    return c.detach().to(device=chunk.rows.device, dtype=torch.float32)


def _numel_lead(x: torch.Tensor) -> int:
    m = 1
    for d in x.shape[:-1]:
        m *= d
    return m


class _FusedLinearFunction(torch.autograd.Function):
    """Values, extras and gradients in forward; backward multiplies the stored gradients by ``∂L/∂loss``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        student_bias: torch.Tensor | None,
        plan: _Plan,
        need: tuple[bool, bool, bool],
        sink: dict[str, FusedLinearOutput],
    ) -> torch.Tensor:
        out, grads = _run(plan, student_hidden, student_weight, student_bias, need)
        sink["out"] = out
        ctx.grads = grads
        ctx.hidden_shape = student_hidden.shape
        return out.loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = ctx.grads
        if grads is None:
            raise VcrdError(
                f"{_WHERE}: its loss supports a single backward pass (the gradient buffers are scaled in place); "
                "recompute it instead of using retain_graph=True"
            )
        ctx.grads = None
        grad_h, grad_w, grad_b = grads
        if not bool(torch.equal(grad_output, torch.ones_like(grad_output))):
            for t in (grad_h, grad_w, grad_b):
                if t is not None:
                    t.mul_(grad_output)
        if grad_h is not None:
            grad_h = grad_h.view(ctx.hidden_shape)
        return grad_h, grad_w, grad_b, None, None, None


def fused_linear_divergence(
    divergence: DivergenceValue,
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    *,
    rows: torch.Tensor | None = None,
    weights: torch.Tensor | Callable[[RowChunk], torch.Tensor] | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    want: RowExtras | None = None,
    compile: bool = False,
    sparse_teacher: SparseTeacher | None = None,
) -> FusedLinearOutput:
    """Weighted divergence ``Σ_n c_n D(p_n, q_n)`` from hidden states and lm_heads, never building ``[N, V]`` logits.

    Args:
        divergence: states ``value(log p, log q) -> [n]`` on one float32 chunk (any built-in or plugin).
        student_hidden: ``[..., H_s]``, the student's last hidden states (the lm_head's input).
        student_weight: the student's lm_head weight ``[V_s, H_s]``; gets a gradient if it requires grad.
        teacher_hidden: ``[..., H_t]`` with the same leading dims; never gets a gradient (detached).
        teacher_weight: the teacher's lm_head weight ``[V_t, H_t]``; never gets a gradient.
        rows: optional 1-D int flat indices into the leading dims (the rows whose logits give the decision
            points' distributions: row ``t-1`` for decision point ``t``); default every row in order.
            Repeated indices are allowed (each occurrence counts).
        weights: optional detached per-row coefficients ``c_n`` ``[n]`` (VCRD's ``w_n`` times the
            reduction's factor, see :func:`row_coefficients`); default 1. Or a callable
            ``RowChunk -> [stop - start]`` that gives each chunk's coefficients from its extras (called
            once per chunk, before the chunk's gradient; see the module docstring).
        student_bias, teacher_bias: optional lm_head biases ``[V_s]`` / ``[V_t]``.
        vocab_size: the tokenizer's real vocabulary: only rows ``[:vocab_size]`` of the lm_heads (logit
            columns) are used. Required when ``V_t != V_s`` (padded lm_heads).
        temperature: ``τ > 0``; both distributions are ``softmax(logits / τ)``.
        chunk_size: rows per chunk; default :func:`default_chunk_size` (a ~128 MiB float32 block).
        want: per-row extras from the same logits (:class:`RowExtras`); default none.
        compile: ``torch.compile`` each chunk's log-softmaxes and divergence (forward and backward): the
            elementwise work over the vocabulary runs as a few fused kernels instead of one pass per operation.
            The first call per divergence and temperature compiles (seconds to a minute); values and gradients
            equal the eager ones up to float32 rounding.
        sparse_teacher: the teacher as its top-k at each selected row (in the rows' order) instead of
            ``teacher_hidden`` / ``teacher_weight`` (both None then): both distributions are coarsened to the top-k
            ids and a tail bucket (:mod:`vcrd_core.losses.sparse`); ``temperature`` must be the cache's; no
            ``compile``. Teacher-logit extras are the cached log-probabilities with the tail spread evenly over
            the other ids (:meth:`~vcrd_core.losses.sparse.SparseTeacher.dense_logp`).

    Returns a :class:`FusedLinearOutput`: ``loss`` (differentiable float32 scalar), ``values`` (detached
    ``D_n``) and the extras asked for. Gradients are computed in the forward pass (see the module
    docstring): the loss supports one backward pass, no double backward. If nothing that needs a gradient
    requires one (or grad mode is off), no gradient work is done and ``loss`` has no graph. Validation
    reads ``rows`` (range) on the host: one device synchronisation.
    """
    if not callable(getattr(divergence, "value", None)):
        raise VcrdError(f"{_WHERE}: divergence must be a vcrd_core.DivergenceValue, got {type(divergence).__name__}")
    v_s, _ = _check_matrix("student", student_hidden, student_weight, student_bias)
    device = student_hidden.device
    if sparse_teacher is not None:
        if teacher_hidden is not None or teacher_weight is not None:
            raise VcrdError(f"{_WHERE}: give the teacher as hidden states and lm_head or as sparse_teacher, not both")
        v_t = v_s
    else:
        if teacher_hidden is None or teacher_weight is None:
            raise VcrdError(f"{_WHERE}: teacher_hidden and teacher_weight are needed (or a sparse_teacher)")
        v_t, _ = _check_matrix("teacher", teacher_hidden, teacher_weight, teacher_bias)
        if teacher_hidden.shape[:-1] != student_hidden.shape[:-1]:
            raise VcrdError(
                f"{_WHERE}: teacher_hidden and student_hidden must have the same leading dims "
                f"(got {tuple(teacher_hidden.shape)} and {tuple(student_hidden.shape)})"
            )
        if teacher_hidden.device != device:
            raise VcrdError(
                f"{_WHERE}: teacher_hidden is on {teacher_hidden.device} but student_hidden on {device}; "
                "move both to one device"
            )
    vocab = checked_vocab(_WHERE, vocab_size, v_t, v_s, "lm_heads")
    check_temperature_and_chunk_size(_WHERE, temperature, chunk_size)
    m = check_rows(_WHERE, rows, tuple(student_hidden.shape[:-1]))
    rows = torch.arange(m, device=device) if rows is None else rows.to(device).long()
    n = rows.numel()
    teacher_rows = None
    if sparse_teacher is not None:
        check_sparse_teacher(_WHERE, sparse_teacher, n, vocab, temperature)
        if compile:
            raise VcrdError(f"{_WHERE}: compile is not available with a sparse teacher (objective.compile: false)")
        teacher_rows = SparseTeacherRows(sparse_teacher.to(device), vocab)
    coefficient_fn = None
    if weights is None:
        coefficients = torch.ones(n, dtype=torch.float32, device=device)
    elif callable(weights) and not isinstance(weights, torch.Tensor):
        coefficient_fn = weights
        coefficients = torch.zeros(n, dtype=torch.float32, device=device)
    else:
        if not isinstance(weights, torch.Tensor) or weights.shape != (n,) or not weights.is_floating_point():
            got = (
                f"{weights.dtype} {tuple(weights.shape)}"
                if isinstance(weights, torch.Tensor)
                else type(weights).__name__
            )
            raise VcrdError(
                f"{_WHERE}: weights must be a float tensor [n] = ({n},), one per selected row, or a callable; got {got}"
            )
        if weights.device != device:
            raise VcrdError(f"{_WHERE}: weights are on {weights.device} but student_hidden on {device}")
        coefficients = weights.detach().to(torch.float32)
    want = RowExtras() if want is None else want
    _check_extras(want)

    autocast = torch.is_autocast_enabled(device.type)
    plan = _Plan(
        divergence=divergence,
        teacher_hidden=None if teacher_hidden is None else teacher_hidden.detach(),
        teacher_weight=None if teacher_weight is None else teacher_weight.detach(),
        teacher_bias=None if teacher_bias is None else teacher_bias.detach(),
        rows=rows,
        coefficients=coefficients,
        coefficient_fn=coefficient_fn,
        vocab=vocab,
        temperature=float(temperature),
        chunk=chunk_size if chunk_size is not None else default_chunk_size(vocab),
        want=want,
        compute_dtype=torch.get_autocast_dtype(device.type) if autocast else student_weight.dtype,
        autocast=autocast,
        compiled=_compiled_values(divergence, float(temperature)) if compile else None,
        teacher_rows=teacher_rows,
    )
    grad_on = torch.is_grad_enabled()
    need = (
        grad_on and student_hidden.requires_grad,
        grad_on and student_weight.requires_grad,
        grad_on and student_bias is not None and student_bias.requires_grad,
    )
    with torch.autocast(device_type=device.type, enabled=False):
        if not any(need):
            with torch.no_grad():
                out, _ = _run(plan, student_hidden, student_weight, student_bias, need)
            return out
        sink: dict[str, FusedLinearOutput] = {}
        loss = _FusedLinearFunction.apply(student_hidden, student_weight, student_bias, plan, need, sink)
    out = sink["out"]
    out.loss = loss
    return out
