"""The sparse (top-k + tail bucket) teacher: with k = the vocabulary it is the dense computation (values and
gradients); with a small k it is a plain float64 computation of the coarsened divergences (the tail as one
category); the top-k and the tail mass against float64; refusals in one line."""

from __future__ import annotations

import math

import pytest
import torch

import vcrd_core
from vcrd_core.errors import VcrdError
from vcrd_core.losses.chunked import chunked_divergence
from vcrd_core.losses.sparse import SparseTeacher, coarsen, sparse_divergence, topk_teacher

V = 23
B, L = 3, 7
ROWS = torch.tensor([0, 2, 3, 5, 8, 9, 13, 17, 20])
NAMES = ["skl", "srkl", "jsd", "fkl", "rkl", "ab"]


def logits(*shape: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def run(fn, student: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    s = student.detach().clone().requires_grad_(True)
    values = fn(s)
    (values * upstream).sum().backward()
    assert s.grad is not None
    return values.detach(), s.grad


@pytest.mark.parametrize("temperature", [1.0, 1.7])
@pytest.mark.parametrize("name", NAMES)
def test_with_k_equal_to_the_vocabulary_it_is_the_dense_computation(name: str, temperature: float) -> None:
    div = vcrd_core.create(vcrd_core.DIVERGENCES, name, {})
    teacher, student = logits(B, L, V + 5, seed=1), logits(B, L, V + 5, seed=2)  # padded lm_head columns
    upstream = torch.rand(ROWS.numel(), generator=torch.Generator().manual_seed(3))
    sparse = topk_teacher(teacher, ROWS, V, vocab_size=V, temperature=temperature)
    assert sparse.k == V and torch.isneginf(sparse.tail).all()
    got, got_grad = run(
        lambda s: sparse_divergence(div, sparse, s, rows=ROWS, vocab_size=V, temperature=temperature, chunk_size=4),
        student,
        upstream,
    )
    want, want_grad = run(
        lambda s: chunked_divergence(div, teacher, s, rows=ROWS, vocab_size=V, temperature=temperature),
        student,
        upstream,
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    assert got_grad[..., V:].abs().max() == 0  # padded columns get no gradient


def coarsened_reference(
    teacher: torch.Tensor, student: torch.Tensor, ids: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain float64: p̃ and q̃ over the top-k ids and one tail category, as probabilities (q̃ differentiable)."""
    p = torch.softmax(teacher.double()[:, :V] / temperature, -1)
    q = torch.softmax(student[:, :V] / temperature, -1)
    in_top = torch.zeros_like(p, dtype=torch.bool).scatter(1, ids, True)
    p_t = torch.cat([p.gather(1, ids), (p * ~in_top).sum(1, keepdim=True)], 1)
    q_t = torch.cat([q.gather(1, ids), (q * ~in_top).sum(1, keepdim=True)], 1)
    return p_t, q_t


def skl64(p: torch.Tensor, q: torch.Tensor, a: float = 0.1) -> torch.Tensor:
    return (p * (p / (a * p + (1 - a) * q)).log()).sum(1)


def srkl64(p: torch.Tensor, q: torch.Tensor, a: float = 0.1) -> torch.Tensor:
    return (q * (q / ((1 - a) * p + a * q.detach())).log()).sum(1)


def jsd64(p: torch.Tensor, q: torch.Tensor, b: float = 0.5) -> torch.Tensor:
    m = b * p + (1 - b) * q
    return b * (p * (p / m).log()).sum(1) + (1 - b) * (q * (q / m).log()).sum(1)


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize(("name", "reference"), [("skl", skl64), ("srkl", srkl64), ("jsd", jsd64)])
def test_with_a_small_k_it_is_the_float64_divergence_of_the_coarsened_distributions(
    name: str, reference, k: int
) -> None:  # type: ignore[no-untyped-def]
    temperature = 1.3
    div = vcrd_core.create(vcrd_core.DIVERGENCES, name, {})
    teacher, student = logits(B * L, V, seed=10 + k), logits(B * L, V, seed=20 + k)
    rows = torch.arange(B * L)
    upstream = torch.rand(B * L, generator=torch.Generator().manual_seed(k))
    sparse = topk_teacher(teacher, rows, k, vocab_size=V, temperature=temperature)
    got, got_grad = run(
        lambda s: sparse_divergence(div, sparse, s, rows=rows, vocab_size=V, temperature=temperature, chunk_size=5),
        student,
        upstream,
    )
    z = student.double().requires_grad_(True)
    p_t, q_t = coarsened_reference(teacher, z, sparse.ids, temperature)
    want = reference(p_t, q_t)
    (want_grad,) = torch.autograd.grad((want * upstream.double()).sum(), z)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-6)
    # the data processing inequality: the coarsened value never exceeds the exact one
    exact = chunked_divergence(div, teacher, student, vocab_size=V, temperature=temperature)
    assert (got <= exact + 1e-5).all()


def test_topk_ids_log_probabilities_and_the_tail_mass_match_float64() -> None:
    teacher = logits(B, L, V + 2, seed=4, scale=5.0)
    sparse = topk_teacher(teacher, ROWS, 5, vocab_size=V, temperature=0.8, chunk_size=2)
    lp = torch.log_softmax(teacher.double()[..., :V] / 0.8, -1).reshape(-1, V)[ROWS]
    top = lp.topk(5, -1)
    assert torch.equal(sparse.ids, top.indices)
    torch.testing.assert_close(sparse.logp.double(), top.values, rtol=0, atol=1e-5)
    rest = lp.exp().sum(-1) - top.values.exp().sum(-1)
    torch.testing.assert_close(sparse.tail_mass().double(), rest, rtol=1e-4, atol=1e-7)
    # a peaked teacher: the tail is a log-sum-exp over the other ids, exact where 1 - sum(p) would round to 0
    peaked = torch.zeros(1, V)
    peaked[0, 0] = 60.0
    tail = topk_teacher(peaked, torch.tensor([0]), 1, vocab_size=V).tail
    assert torch.isfinite(tail).all()
    assert tail.item() == pytest.approx(math.log(V - 1) - 60.0, abs=1e-3)  # log of (V-1) e^0 / (e^60 + (V-1))


def test_coarsen_puts_the_students_other_mass_in_the_last_column() -> None:
    lq = torch.log_softmax(logits(4, V, seed=9), -1)
    ids = torch.tensor([[0, 5], [3, 1], [22, 7], [2, 4]])
    out = coarsen(lq, ids)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(4))
    torch.testing.assert_close(out[:, :2], lq.gather(1, ids))


def test_refusals_are_one_line() -> None:
    div = vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {})
    teacher, student = logits(6, V, seed=1), logits(6, V, seed=2)
    rows = torch.arange(6)
    sparse = topk_teacher(teacher, rows, 4, vocab_size=V)
    with pytest.raises(VcrdError, match=r"made at temperature 1, the objective runs at 2"):
        sparse_divergence(div, sparse, student, rows=rows, vocab_size=V, temperature=2.0)
    with pytest.raises(VcrdError, match=r"has 6 rows but 3 decision points"):
        sparse_divergence(div, sparse, student, rows=rows[:3], vocab_size=V)
    bad = SparseTeacher(sparse.ids + V, sparse.logp, sparse.tail)
    with pytest.raises(VcrdError, match=r"holds id \d+ >= vocab_size 23"):
        sparse_divergence(div, bad, student, rows=rows, vocab_size=V)
    with pytest.raises(VcrdError, match=r"k=0 is invalid"):
        topk_teacher(teacher, rows, 0, vocab_size=V)


# ---- the fused-linear engine reads the same sparse teacher ----


def fused_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, L, 8, generator=g)
    w = torch.randn(V + 3, 8, generator=g)  # a padded student lm_head
    th = torch.randn(B, L, 12, generator=g)
    tw = torch.randn(V + 1, 12, generator=g) * 0.8
    return h, w, th, tw


def fused_grads(fn, h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    h, w = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = fn(h, w)
    loss.backward()
    assert h.grad is not None and w.grad is not None
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("k", [4, V])
@pytest.mark.parametrize("name", ["skl", "srkl", "jsd"])
def test_the_fused_engine_with_a_sparse_teacher_equals_the_logits_engine_and_at_k_v_the_dense_fused_one(
    name: str, k: int
) -> None:
    from vcrd_core.losses.fused_linear import fused_linear_divergence

    div = vcrd_core.create(vcrd_core.DIVERGENCES, name, {})
    h, w, th, tw = fused_case(seed=k)
    coeff = torch.rand(ROWS.numel(), generator=torch.Generator().manual_seed(1))
    teacher_logits = th @ tw.T
    sparse = topk_teacher(teacher_logits, ROWS, k, vocab_size=V, temperature=1.2)
    fused = fused_grads(
        lambda h_, w_: fused_linear_divergence(
            div, h_, w_, None, None, rows=ROWS, weights=coeff, vocab_size=V, temperature=1.2, chunk_size=4,
            sparse_teacher=sparse,
        ).loss,
        h, w,
    )  # fmt: skip

    def through_logits(h_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return (coeff * sparse_divergence(div, sparse, h_ @ w_.T, rows=ROWS, vocab_size=V, temperature=1.2)).sum()

    via_logits = fused_grads(through_logits, h, w)
    for got, want in zip(fused, via_logits, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if k == V:  # no tail: the dense fused computation from the teacher's hidden states and lm_head
        dense = fused_grads(
            lambda h_, w_: fused_linear_divergence(
                div, h_, w_, th, tw, rows=ROWS, weights=coeff, vocab_size=V, temperature=1.2, chunk_size=4
            ).loss,
            h, w,
        )  # fmt: skip
        for got, want in zip(fused, dense, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_fused_engine_refuses_what_a_sparse_teacher_cannot_give_and_hands_row_judges_its_dense_view() -> None:
    from vcrd_core.losses.fused_linear import RowExtras, fused_linear_divergence

    div = vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {})
    h, w, th, tw = fused_case(seed=0)
    sparse = topk_teacher(th @ tw.T, ROWS, 4, vocab_size=V)
    with pytest.raises(VcrdError, match="not both"):
        fused_linear_divergence(div, h, w, th, tw, rows=ROWS, vocab_size=V, sparse_teacher=sparse)
    with pytest.raises(VcrdError, match="compile is not available with a sparse teacher"):
        fused_linear_divergence(div, h, w, None, None, rows=ROWS, vocab_size=V, sparse_teacher=sparse, compile=True)
    seen = []

    def weights(chunk):  # type: ignore[no-untyped-def]  # a row judge's view: the cached distribution, dense
        seen.append(chunk.teacher_logits.clone())
        return torch.ones(chunk.stop - chunk.start)

    fused_linear_divergence(
        div, h, w, None, None, rows=ROWS, vocab_size=V, sparse_teacher=sparse, weights=weights, chunk_size=4,
        want=RowExtras(teacher_logits=True),
    )  # fmt: skip
    torch.testing.assert_close(torch.cat(seen), sparse.dense_logp(0, len(sparse), V))
    with pytest.raises(VcrdError, match="teacher_hidden and teacher_weight are needed"):
        fused_linear_divergence(div, h, w, None, None, rows=ROWS, vocab_size=V)


def test_the_dense_view_of_a_sparse_teacher_spreads_the_tail_evenly_and_keeps_the_top_k() -> None:
    teacher = logits(5, V, seed=12)
    rows = torch.arange(5)
    sparse = topk_teacher(teacher, rows, 6, vocab_size=V)
    dense = sparse.dense_logp(1, 4, V)
    assert dense.shape == (3, V)
    exact = torch.log_softmax(teacher.double(), -1)[1:4]
    top = exact.topk(6, -1)
    torch.testing.assert_close(dense.double().gather(1, top.indices), top.values, rtol=0, atol=1e-5)
    outside = torch.ones(3, V, dtype=torch.bool).scatter(1, top.indices, False)
    tail = (exact.exp() * outside).sum(-1)  # each other id gets tail / (V - k)
    torch.testing.assert_close(dense.double().exp()[outside].view(3, -1), (tail / (V - 6))[:, None].expand(3, V - 6))
    torch.testing.assert_close(dense.double().exp().sum(-1), torch.ones(3, dtype=torch.float64))
    assert torch.equal(dense.topk(6, -1).indices.sort(-1).values, top.indices.sort(-1).values)
    full = topk_teacher(teacher, rows, V, vocab_size=V).dense_logp(0, 5, V)  # no tail: the exact distribution
    torch.testing.assert_close(full.double(), torch.log_softmax(teacher.double(), -1), rtol=0, atol=1e-5)
