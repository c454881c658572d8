"""The chunked divergence engine equals the straightforward float64 autograd computation.

The reference (``reference``) flattens the logits, slices the real vocabulary, applies the temperature
and log-softmax in float64, calls the same ``value`` on the whole ``[N, V]`` block and differentiates
with plain autograd. Tolerances: float32 engine vs float64 reference rtol 1e-5 / atol 1e-6 on values and
atol 1e-6 on gradients (their entries are O(1/V)); bf16 student logits: rtol 2e-2, since the engine
reads the rounded bf16 logits (the reference reads the same rounded values) and the gradient is
rounded to bf16 (8 mantissa bits, relative error ≤ 2^-8 per entry).
"""

from __future__ import annotations

import pytest
import torch

import vcrd_core
from tests.fakes import RecordingKL
from vcrd_core.errors import VcrdError
from vcrd_core.losses.chunked import chunked_divergence
from vcrd_core.losses.inputs import default_chunk_size


def reference(
    divergence: vcrd_core.Divergence,
    teacher: torch.Tensor,
    student: torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    vocab: int | None = None,
    temperature: float = 1.0,
    upstream: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and d(sum upstream * values)/d student, the plain float64 way (no chunks)."""
    vocab = vocab or teacher.shape[-1]
    s = student.detach().double().requires_grad_(True)
    t = teacher.detach().double()
    lp = torch.log_softmax(t[..., :vocab] / temperature, -1).reshape(-1, vocab)
    lq = torch.log_softmax(s[..., :vocab] / temperature, -1).reshape(-1, vocab)
    if rows is not None:
        lp, lq = lp[rows], lq[rows]
    values = divergence.value(lp, lq)
    weights = torch.ones_like(values) if upstream is None else upstream.double()
    (grad,) = torch.autograd.grad((values * weights).sum(), s)
    return values.detach(), grad


def engine(
    divergence: vcrd_core.Divergence,
    teacher: torch.Tensor,
    student: torch.Tensor,
    upstream: torch.Tensor | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    s = student.detach().clone().requires_grad_(True)
    values = chunked_divergence(divergence, teacher, s, **kwargs)
    weights = torch.ones_like(values) if upstream is None else upstream
    (values * weights).sum().backward()
    assert s.grad is not None
    return values.detach(), s.grad


def logits(*shape: int, seed: int, scale: float = 3.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 24, 1000, None])
def test_values_and_gradients_equal_unchunked_computation_for_any_chunk_size(chunk_size: int | None) -> None:
    t, s = logits(2, 12, 50, seed=0), logits(2, 12, 50, seed=1)
    upstream = logits(24, seed=2, scale=1.0)
    div = RecordingKL()
    values, grad = engine(div, t, s, upstream, chunk_size=chunk_size)
    ref_values, ref_grad = reference(div, t, s, upstream=upstream)
    assert values.dtype == torch.float32 and values.shape == (24,)
    assert_close(values, ref_values)
    assert_close(grad, ref_grad)


def test_each_chunk_has_at_most_chunk_size_rows() -> None:
    div = RecordingKL()
    engine(div, logits(23, 10, seed=0), logits(23, 10, seed=1), chunk_size=5)
    assert div.rows_seen == [5, 5, 5, 5, 3]


def test_default_chunk_bounds_a_float32_block_to_about_128_mib() -> None:
    assert default_chunk_size(151_936) == 2**25 // 151_936
    assert default_chunk_size(151_936) * 151_936 * 4 <= 2**27
    assert default_chunk_size(2**30) == 1


def test_default_chunk_size_is_used_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    import vcrd_core.losses.inputs

    monkeypatch.setattr(vcrd_core.losses.inputs, "DEFAULT_BLOCK_ELEMENTS", 100)  # 100 // 30 = 3 rows per chunk
    div = RecordingKL()
    engine(div, logits(10, 30, seed=0), logits(10, 30, seed=1))
    assert div.rows_seen == [3, 3, 3, 1]


def test_rows_select_decision_points_and_other_rows_get_zero_gradient() -> None:
    t, s = logits(3, 8, 40, seed=3), logits(3, 8, 40, seed=4)
    rows = torch.tensor([17, 2, 9, 23, 0, 11, 5])
    upstream = logits(7, seed=5, scale=1.0)
    div = RecordingKL()
    values, grad = engine(div, t, s, upstream, rows=rows, chunk_size=3)
    ref_values, ref_grad = reference(div, t, s, rows=rows, upstream=upstream)
    assert_close(values, ref_values)
    assert_close(grad, ref_grad)
    unselected = torch.ones(24, dtype=torch.bool)
    unselected[rows] = False
    assert torch.all(grad.reshape(24, 40)[unselected] == 0)


def test_empty_rows_give_empty_values_and_zero_gradient() -> None:
    values, grad = engine(
        RecordingKL(), logits(4, 6, seed=0), logits(4, 6, seed=1), rows=torch.tensor([], dtype=torch.long)
    )
    assert values.shape == (0,)
    assert torch.all(grad == 0)


def test_padded_vocabulary_columns_are_ignored_and_get_zero_gradient() -> None:
    t, s = logits(2, 5, 37, seed=6), logits(2, 5, 41, seed=7)
    # Padded columns hold huge logits: using them would change every value.
    t[..., 30:] = 50.0
    s[..., 30:] = 50.0
    div = RecordingKL()
    values, grad = engine(div, t, s, vocab_size=30, chunk_size=4)
    ref_values, ref_grad = reference(div, t, s, vocab=30)
    assert_close(values, ref_values)
    assert_close(grad, ref_grad)
    assert grad.shape == s.shape
    assert torch.all(grad[..., 30:] == 0)


def test_different_vocab_sizes_without_vocab_size_are_refused() -> None:
    with pytest.raises(VcrdError, match=r"different vocabulary sizes \(37 vs 41.*pass vocab_size"):
        chunked_divergence(RecordingKL(), logits(3, 37, seed=0), logits(3, 41, seed=1))


@pytest.mark.parametrize("vocab_size", [38, 0, -1])
def test_vocab_size_outside_the_logits_is_refused(vocab_size: int) -> None:
    with pytest.raises(VcrdError, match=r"vocab_size=.* expected an int in \[1, 37\]"):
        chunked_divergence(RecordingKL(), logits(3, 37, seed=0), logits(3, 41, seed=1), vocab_size=vocab_size)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_logits_before_log_softmax(temperature: float) -> None:
    t, s = logits(9, 30, seed=8), logits(9, 30, seed=9)
    div = RecordingKL()
    values, grad = engine(div, t, s, temperature=temperature, chunk_size=4)
    ref_values, ref_grad = reference(div, t, s, temperature=temperature)
    assert_close(values, ref_values)
    assert_close(grad, ref_grad)
    plain, _ = reference(div, t, s)
    assert not torch.allclose(values.double(), plain, rtol=1e-3)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_nonpositive_or_infinite_temperature_is_refused(temperature: float) -> None:
    with pytest.raises(VcrdError, match=r"temperature=.* expected a"):
        chunked_divergence(RecordingKL(), logits(3, 5, seed=0), logits(3, 5, seed=1), temperature=temperature)


@pytest.mark.parametrize("rows", [None, torch.tensor([20, 3, 11, 0, 7, 15, 22])])
def test_bf16_student_logits_give_float32_values_and_bf16_gradient_close_to_reference(
    rows: torch.Tensor | None,
) -> None:
    t = logits(4, 6, 64, seed=10, dtype=torch.bfloat16)
    s = logits(4, 6, 64, seed=11, dtype=torch.bfloat16)
    upstream = logits(24 if rows is None else rows.numel(), seed=12, scale=1.0)
    div = RecordingKL()
    values, grad = engine(div, t, s, upstream, rows=rows, chunk_size=5)
    ref_values, ref_grad = reference(div, t, s, rows=rows, upstream=upstream)  # reads the same bf16 logits
    assert values.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert_close(values, ref_values, rtol=1e-5, atol=1e-6)  # the chunk itself is float32
    assert_close(grad, ref_grad, rtol=2e-2, atol=1e-4)


def test_no_gradient_work_when_student_does_not_require_grad() -> None:
    t, s = logits(10, 20, seed=12), logits(10, 20, seed=13)
    div = RecordingKL()
    values = chunked_divergence(div, t, s, chunk_size=3)
    assert values.grad_fn is None and not values.requires_grad
    assert div.student_requires_grad == [False] * 4
    assert_close(values, reference(div, t, s)[0])


def test_no_gradient_work_under_no_grad_even_if_student_requires_grad() -> None:
    s = logits(5, 20, seed=13).requires_grad_(True)
    div = RecordingKL()
    with torch.no_grad():
        values = chunked_divergence(div, logits(5, 20, seed=12), s)
    assert values.grad_fn is None
    assert div.student_requires_grad == [False]


def test_teacher_that_requires_grad_is_detached_and_gets_no_gradient() -> None:
    t = logits(6, 20, seed=14).requires_grad_(True)
    values, _ = engine(RecordingKL(), t, logits(6, 20, seed=15))
    assert t.grad is None
    assert_close(values, reference(RecordingKL(), t, logits(6, 20, seed=15))[0])


def test_non_contiguous_logits_slice_gives_the_same_result() -> None:
    full_t, full_s = logits(3, 9, 25, seed=16), logits(3, 9, 25, seed=17)
    t, s = full_t[:, :-1], full_s[:, :-1]  # the usual "logits at positions t-1" slice: not viewable as [M, V]
    assert not s.is_contiguous()
    rows = torch.tensor([0, 5, 7, 20, 23])
    div = RecordingKL()
    values, grad = engine(div, t, s, rows=rows, chunk_size=2)
    ref_values, ref_grad = reference(div, t, s, rows=rows)
    assert_close(values, ref_values)
    assert_close(grad, ref_grad)


def test_gradient_reaches_the_model_through_the_logits() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 30)
    hidden = torch.randn(2, 4, 8)
    t = logits(2, 4, 30, seed=18)
    chunked_divergence(RecordingKL(), t, head(hidden), chunk_size=3).sum().backward()
    w = head.weight.detach().double().requires_grad_(True)
    b = head.bias.detach().double()
    ref = RecordingKL().value(
        torch.log_softmax(t.double(), -1).reshape(-1, 30),
        torch.log_softmax(hidden.double() @ w.T + b, -1).reshape(-1, 30),
    )
    (ref_grad,) = torch.autograd.grad(ref.sum(), w)
    assert head.weight.grad is not None
    assert_close(head.weight.grad, ref_grad, atol=1e-5)


def test_double_backward_is_refused() -> None:
    s = logits(3, 10, seed=20).requires_grad_(True)
    w = torch.ones(3, requires_grad=True)  # makes the incoming gradient part of the double-backward graph
    values = chunked_divergence(RecordingKL(), logits(3, 10, seed=19), s)
    (g,) = torch.autograd.grad((values * w).sum(), s, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_second_backward_through_the_same_result_is_refused() -> None:
    s = logits(3, 10, seed=20).requires_grad_(True)
    values = chunked_divergence(RecordingKL(), logits(3, 10, seed=19), s)
    values.sum().backward(retain_graph=True)
    with pytest.raises(VcrdError, match="single backward pass"):
        values.sum().backward()


def test_divergence_call_uses_the_engine() -> None:
    t, s = logits(7, 15, seed=21), logits(7, 18, seed=22)
    div = RecordingKL()
    values = div(t, s, vocab_size=15, temperature=1.5, chunk_size=2)
    assert div.rows_seen == [2, 2, 2, 1]
    assert_close(values, reference(div, t, s, vocab=15, temperature=1.5)[0])
    rows = torch.tensor([6, 1, 3])
    assert_close(div(t, s, rows=rows, vocab_size=15), reference(div, t, s, rows=rows, vocab=15)[0])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (torch.tensor([0, 12]), r"rows must lie in \[0, 12\)"),
        (torch.tensor([-1]), r"rows must lie in \[0, 12\)"),
        (torch.tensor([3, 3]), "duplicate"),
        (torch.tensor([[1]]), "1-D int64"),
        (torch.tensor([1.0]), "1-D int64"),
    ],
)
def test_invalid_rows_are_refused(rows: torch.Tensor, message: str) -> None:
    with pytest.raises(VcrdError, match=message):
        chunked_divergence(RecordingKL(), logits(3, 4, 8, seed=0), logits(3, 4, 8, seed=1), rows=rows)


def test_mismatched_leading_dims_are_refused() -> None:
    with pytest.raises(VcrdError, match="same leading dims"):
        chunked_divergence(RecordingKL(), logits(3, 4, 8, seed=0), logits(4, 3, 8, seed=1))


def test_divergence_returning_the_wrong_shape_is_refused() -> None:
    class Broken(vcrd_core.Divergence):
        name = "broken"

        def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
            return (teacher_logp - student_logp).sum()

    with pytest.raises(VcrdError, match=r"divergence 'broken': value\(\) must return one value per row"):
        chunked_divergence(Broken(), logits(3, 8, seed=0), logits(3, 8, seed=1).requires_grad_(True))


@pytest.mark.parametrize("name", ["skl", "srkl", "fkl", "rkl", "jsd", "ab"])
def test_real_plugin_divergences_equal_unchunked_float64_computation(name: str) -> None:
    div = vcrd_core.create(vcrd_core.DIVERGENCES, name, {})
    assert isinstance(div, vcrd_core.Divergence)
    t, s = logits(2, 9, 33, seed=23), logits(2, 9, 36, seed=24)
    rows = torch.tensor([1, 4, 8, 10, 17, 16])
    upstream = logits(6, seed=25, scale=1.0)
    values, grad = engine(div, t, s, upstream, rows=rows, vocab_size=31, temperature=1.3, chunk_size=4)
    ref_values, ref_grad = reference(div, t, s, rows=rows, vocab=31, temperature=1.3, upstream=upstream)
    assert_close(values, ref_values)
    assert_close(grad, ref_grad)
