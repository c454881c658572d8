"""The fused-linear divergence equals the plain full-tensor float64 computation, from hidden states and lm_heads.

``reference`` builds the logits the plain way (``h @ W.T + b`` over the whole padded lm_head, then the real
columns ``[:V]``), applies temperature and log-softmax in float64, selects the rows, calls the same
divergence ``value`` on the whole block and differentiates ``Σ c_n D_n`` with plain autograd w.r.t. the
student hidden states, lm_head weight and bias. Tolerances: float32 inputs vs the float64 reference rtol 1e-5
/ atol 1e-5 (values and gradients are O(1) here); bf16 inputs: the logits are rounded to bf16 (8 mantissa bits)
before the float32 softmax, and the gradients are bf16, so rtol/atol of a few 1e-2.
"""

from __future__ import annotations

import pytest
import torch

import vcrd_core
from tests.fakes import RecordingKL
from vcrd_core.errors import VcrdError
from vcrd_core.losses.chunked import chunked_divergence
from vcrd_core.losses.fused_linear import FusedLinearOutput, RowChunk, RowExtras, fused_linear_divergence
from vcrd_core.losses.inputs import default_chunk_size
from vcrd_core.losses.reduction import row_coefficients

DIVERGENCES = ["skl", "srkl", "fkl", "rkl", "jsd", "ab"]


def randn(*shape: int, seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


class Case:
    """Student/teacher hidden states and (padded) lm_heads; logits of scale ~3 like a real model's."""

    def __init__(
        self,
        lead: tuple[int, ...] = (2, 7),
        h_s: int = 16,
        h_t: int = 24,
        v_s: int = 60,
        v_t: int = 64,
        *,
        bias: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.student_hidden = randn(*lead, h_s, seed=seed, dtype=dtype)
        self.student_weight = randn(v_s, h_s, seed=seed + 1, scale=3.0 / h_s**0.5, dtype=dtype)
        self.teacher_hidden = randn(*lead, h_t, seed=seed + 2, dtype=dtype)
        self.teacher_weight = randn(v_t, h_t, seed=seed + 3, scale=3.0 / h_t**0.5, dtype=dtype)
        self.student_bias = randn(v_s, seed=seed + 4, dtype=dtype) if bias else None
        self.teacher_bias = randn(v_t, seed=seed + 5, dtype=dtype) if bias else None

    def run(
        self,
        divergence: vcrd_core.Divergence,
        *,
        weight_grad: bool = True,
        hidden_grad: bool = True,
        upstream: float = 1.0,
        **kwargs: object,
    ) -> tuple[FusedLinearOutput, dict[str, torch.Tensor | None]]:
        h = self.student_hidden.clone().requires_grad_(hidden_grad)
        w = self.student_weight.clone().requires_grad_(weight_grad)
        b = None if self.student_bias is None else self.student_bias.clone().requires_grad_(weight_grad)
        out = fused_linear_divergence(
            divergence,
            h,
            w,
            self.teacher_hidden,
            self.teacher_weight,
            student_bias=b,
            teacher_bias=self.teacher_bias,
            **kwargs,  # type: ignore[arg-type]
        )
        if out.loss.requires_grad:
            (out.loss * upstream).backward()
        return out, {"hidden": h.grad, "weight": w.grad, "bias": None if b is None else b.grad}

    def reference(
        self,
        divergence: vcrd_core.Divergence,
        *,
        rows: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        vocab_size: int | None = None,
        temperature: float = 1.0,
        upstream: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | None], torch.Tensor, torch.Tensor]:
        """Values, gradients of ``upstream * Σ c D``, and the full float64 student/teacher logits ``[M, V]``."""
        vocab = vocab_size or self.student_weight.shape[0]
        h = self.student_hidden.detach().double().requires_grad_(True)
        w = self.student_weight.detach().double().requires_grad_(True)
        b = None if self.student_bias is None else self.student_bias.detach().double().requires_grad_(True)
        z = h @ w.T + (0 if b is None else b)
        u = self.teacher_hidden.double() @ self.teacher_weight.double().T
        if self.teacher_bias is not None:
            u = u + self.teacher_bias.double()
        z, u = z.reshape(-1, z.shape[-1])[:, :vocab], u.reshape(-1, u.shape[-1])[:, :vocab]
        lq = torch.log_softmax(z / temperature, -1)
        lp = torch.log_softmax(u / temperature, -1)
        if rows is not None:
            lq, lp = lq[rows], lp[rows]
        values = divergence.value(lp, lq)
        c = torch.ones_like(values) if weights is None else weights.double()
        inputs = [t for t in (h, w, b) if t is not None]
        grads = torch.autograd.grad(upstream * (c * values).sum(), inputs)
        named = {"hidden": grads[0], "weight": grads[1], "bias": grads[2] if b is not None else None}
        return values.detach(), named, z.detach(), u.detach()


def assert_close(actual: torch.Tensor | None, expected: torch.Tensor | None, rtol: float = 1e-5, atol: float = 1e-5):
    assert actual is not None and expected is not None
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def check_against_reference(
    case: Case,
    divergence: vcrd_core.Divergence,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    weight_grad: bool = True,
    upstream: float = 1.0,
    chunk_size: int | None = None,
    **kwargs: object,
) -> FusedLinearOutput:
    out, grads = case.run(divergence, weight_grad=weight_grad, upstream=upstream, chunk_size=chunk_size, **kwargs)
    ref_values, ref_grads, _, _ = case.reference(divergence, upstream=upstream, **kwargs)  # type: ignore[arg-type]
    assert out.values.dtype == torch.float32 and out.loss.dtype == torch.float32 and out.loss.dim() == 0
    assert not out.values.requires_grad
    assert_close(out.values, ref_values, rtol, atol)
    weights = kwargs.get("weights")
    c = torch.ones_like(ref_values) if weights is None else weights.double()  # type: ignore[union-attr]
    assert_close(out.loss, (c * ref_values).sum(), rtol, atol)
    assert_close(grads["hidden"], ref_grads["hidden"], rtol, atol)
    if weight_grad:
        assert_close(grads["weight"], ref_grads["weight"], rtol, atol)
        if case.student_bias is not None:
            assert_close(grads["bias"], ref_grads["bias"], rtol, atol)
    else:
        assert grads["weight"] is None and grads["bias"] is None
    return out


ROWS = torch.tensor([13, 1, 4, 8, 10, 0, 6, 11])


@pytest.mark.parametrize("name", DIVERGENCES)
def test_fused_linear_builtin_divergence_matches_float64_reference_values_and_gradients(name: str) -> None:
    div = vcrd_core.create(vcrd_core.DIVERGENCES, name, {})
    check_against_reference(
        Case(seed=10),
        div,
        rows=ROWS,
        weights=randn(8, seed=3).abs() + 0.1,
        vocab_size=57,  # V_s = 60, V_t = 64: both lm_heads padded
        temperature=1.3,
        chunk_size=3,
    )


@pytest.mark.parametrize("name", DIVERGENCES)
def test_fused_linear_builtin_divergence_without_bias_at_temperature_one_over_all_rows(name: str) -> None:
    div = vcrd_core.create(vcrd_core.DIVERGENCES, name, {})
    case = Case(v_s=40, v_t=40, bias=False, seed=20)
    check_against_reference(case, div, chunk_size=5, weights=randn(14, seed=4))


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 8, 1000, None])
def test_values_and_gradients_do_not_depend_on_chunk_size(chunk_size: int | None) -> None:
    div = RecordingKL()
    check_against_reference(Case(seed=30), div, rows=ROWS, vocab_size=50, chunk_size=chunk_size)
    expected = chunk_size or default_chunk_size(50)
    engine_chunks = div.rows_seen[:-1]  # the last call is the reference's whole block
    assert all(r <= expected for r in engine_chunks) and sum(engine_chunks) == 8


def test_each_chunk_has_at_most_chunk_size_rows() -> None:
    div = RecordingKL()
    Case(lead=(23,), seed=1).run(div, chunk_size=5, vocab_size=60)
    assert div.rows_seen == [5, 5, 5, 5, 3]


def test_student_weight_without_requires_grad_gets_no_gradient_and_hidden_gradient_is_exact() -> None:
    check_against_reference(
        Case(seed=40), vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {}), weight_grad=False, rows=ROWS, vocab_size=57
    )


def test_only_the_lm_head_requiring_grad_gets_the_exact_weight_gradient() -> None:
    case = Case(seed=45)
    div = vcrd_core.create(vcrd_core.DIVERGENCES, "srkl", {})
    _, grads = case.run(div, hidden_grad=False, rows=ROWS, vocab_size=57, chunk_size=3)
    _, ref, _, _ = case.reference(div, rows=ROWS, vocab_size=57)
    assert grads["hidden"] is None
    assert_close(grads["weight"], ref["weight"])
    assert_close(grads["bias"], ref["bias"])


def test_padded_lm_head_rows_are_ignored_and_get_zero_gradient() -> None:
    case = Case(seed=50)
    # Padded rows would dominate every softmax if they were used.
    case.student_bias[57:] = 60.0  # type: ignore[index]
    case.teacher_bias[57:] = 60.0  # type: ignore[index]
    div = RecordingKL()
    check_against_reference(case, div, rows=ROWS, vocab_size=57, chunk_size=4)
    _, grads = case.run(div, rows=ROWS, vocab_size=57, chunk_size=4)
    assert torch.all(grads["weight"][57:] == 0) and torch.all(grads["bias"][57:] == 0)  # type: ignore[index]


@pytest.mark.parametrize("temperature", [0.7, 2.0])
def test_temperature_divides_logits_before_log_softmax(temperature: float) -> None:
    case, div = Case(seed=60), vcrd_core.create(vcrd_core.DIVERGENCES, "jsd", {})
    out = check_against_reference(case, div, rows=ROWS, vocab_size=57, temperature=temperature, chunk_size=3)
    plain, _, _, _ = case.reference(div, rows=ROWS, vocab_size=57)
    assert not torch.allclose(out.values.double(), plain, rtol=1e-3)


def test_gradients_are_scaled_by_the_downstream_factor_of_the_loss() -> None:
    """Dividing by a global count, λ per stream, accumulation: any use of the scalar is exact."""
    check_against_reference(
        Case(seed=70),
        vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {}),
        rows=ROWS,
        vocab_size=57,
        weights=randn(8, seed=5),
        upstream=-0.37,
        chunk_size=3,
    )


def test_rows_that_are_not_selected_get_zero_hidden_gradient() -> None:
    _, grads = Case(seed=80).run(RecordingKL(), rows=ROWS, vocab_size=57, chunk_size=3)
    flat = grads["hidden"].reshape(14, -1)  # type: ignore[union-attr]
    unselected = torch.ones(14, dtype=torch.bool)
    unselected[ROWS] = False
    assert torch.all(flat[unselected] == 0) and torch.all(flat[~unselected].abs().sum(-1) > 0)


def test_repeated_rows_count_once_per_occurrence() -> None:
    rows = torch.tensor([3, 5, 3, 3, 9, 5])
    check_against_reference(Case(seed=85), RecordingKL(), rows=rows, vocab_size=57, chunk_size=2)


def test_zero_rows_give_a_zero_loss_that_backpropagates_zero_gradients() -> None:
    out, grads = Case(seed=90).run(RecordingKL(), rows=torch.tensor([], dtype=torch.long), vocab_size=57)
    assert out.values.shape == (0,) and float(out.loss.detach()) == 0.0
    assert out.loss.requires_grad
    for g in grads.values():
        assert g is not None and torch.all(g == 0)


@pytest.mark.parametrize("weight_grad", [True, False])
def test_bf16_hidden_and_lm_heads_match_the_float64_reference_loosely(weight_grad: bool) -> None:
    case = Case(seed=100, dtype=torch.bfloat16)
    out = check_against_reference(
        case,
        vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {}),
        rows=ROWS,
        vocab_size=57,
        temperature=1.5,
        weights=randn(8, seed=6).abs(),
        chunk_size=3,
        weight_grad=weight_grad,
        rtol=3e-2,
        atol=3e-2,
    )
    assert out.values.dtype == torch.float32
    _, grads = case.run(RecordingKL(), rows=ROWS, vocab_size=57, weight_grad=weight_grad)
    assert grads["hidden"].dtype == torch.bfloat16  # type: ignore[union-attr]
    if weight_grad:
        assert grads["weight"].dtype == torch.bfloat16 and grads["bias"].dtype == torch.bfloat16  # type: ignore[union-attr]


def test_equals_the_chunked_engine_on_materialized_logits() -> None:
    case, div = Case(seed=110), vcrd_core.create(vcrd_core.DIVERGENCES, "ab", {})
    out, grads = case.run(div, rows=ROWS, vocab_size=57, temperature=0.9, chunk_size=3)
    h = case.student_hidden.clone().requires_grad_(True)
    z = h @ case.student_weight.T + case.student_bias
    u = case.teacher_hidden @ case.teacher_weight.T + case.teacher_bias
    values = chunked_divergence(div, u, z, rows=ROWS, vocab_size=57, temperature=0.9)
    values.sum().backward()
    assert_close(out.values, values)
    assert_close(grads["hidden"], h.grad)


def test_non_contiguous_hidden_slice_gives_the_same_result() -> None:
    case = Case(lead=(3, 6), seed=120)
    sliced = Case(lead=(3, 5), seed=120)
    sliced.student_hidden = case.student_hidden[:, :-1]  # the usual "rows t-1" slice
    sliced.teacher_hidden = case.teacher_hidden[:, :-1]
    assert not sliced.student_hidden.is_contiguous()
    rows = torch.tensor([0, 4, 7, 14, 12])
    sliced.student_weight, sliced.teacher_weight = case.student_weight, case.teacher_weight
    sliced.student_bias, sliced.teacher_bias = case.student_bias, case.teacher_bias
    out = check_against_reference(sliced, RecordingKL(), rows=rows, vocab_size=57, chunk_size=2)
    assert out.values.shape == (5,)


def test_teacher_that_requires_grad_is_detached_and_gets_no_gradient() -> None:
    case = Case(seed=130)
    case.teacher_hidden.requires_grad_(True)
    case.teacher_weight.requires_grad_(True)
    case.run(RecordingKL(), vocab_size=57)
    assert case.teacher_hidden.grad is None and case.teacher_weight.grad is None


def test_no_gradient_work_under_no_grad_or_without_trainable_inputs() -> None:
    case = Case(seed=140)
    div = RecordingKL()
    with torch.no_grad():
        out, _ = case.run(div, vocab_size=57, chunk_size=5)
    assert out.loss.grad_fn is None and div.student_requires_grad == [False] * 3
    div = RecordingKL()
    out, _ = case.run(div, vocab_size=57, chunk_size=5, hidden_grad=False, weight_grad=False)
    assert out.loss.grad_fn is None and div.student_requires_grad == [False] * 3
    assert_close(out.values, case.reference(div, vocab_size=57)[0])


def test_the_plain_loss_path_computes_no_extras() -> None:
    out, _ = Case(seed=150).run(RecordingKL(), vocab_size=57)
    assert out.student_greedy is None


def test_second_backward_through_the_same_loss_is_refused() -> None:
    case = Case(seed=160)
    h = case.student_hidden.clone().requires_grad_(True)
    out = fused_linear_divergence(
        RecordingKL(), h, case.student_weight, case.teacher_hidden, case.teacher_weight, vocab_size=57
    )
    out.loss.backward(retain_graph=True)
    with pytest.raises(VcrdError, match="single backward pass"):
        out.loss.backward()


# ---- extras: the student's greedy tokens, the teacher logits of each chunk ----


def test_student_greedy_is_the_argmax_over_real_ids_only() -> None:
    case = Case(seed=170)
    case.student_bias[57:] = 100.0  # type: ignore[index]  # a padded row would win every argmax
    out, _ = case.run(RecordingKL(), rows=ROWS, vocab_size=57, chunk_size=3, want=RowExtras(student_greedy=True))
    _, _, z, _ = case.reference(RecordingKL(), vocab_size=57)
    assert out.student_greedy is not None and out.student_greedy.dtype == torch.long
    assert torch.equal(out.student_greedy, z[ROWS].argmax(-1))


def test_teacher_logits_handed_to_the_weights_callable_are_the_real_columns_of_each_chunk() -> None:
    case = Case(seed=180)
    seen: list[torch.Tensor] = []

    def coefficients(chunk: RowChunk) -> torch.Tensor:
        assert chunk.teacher_logits is not None and chunk.teacher_logits.dtype == torch.float32
        seen.append(chunk.teacher_logits.clone())
        return torch.ones(chunk.stop - chunk.start)

    case.run(RecordingKL(), rows=ROWS, vocab_size=57, temperature=1.3, chunk_size=3, weights=coefficients,
             want=RowExtras(teacher_logits=True))  # fmt: skip
    _, _, _, u = case.reference(RecordingKL(), vocab_size=57)
    assert [t.shape for t in seen] == [(3, 57), (3, 57), (2, 57)]
    assert_close(torch.cat(seen), u[ROWS].float(), rtol=1e-5, atol=1e-5)  # before any temperature


# ---- weights computed per chunk from the same pass (the judge's scores feed the weighting rule) ----


def vcrd_prob_weight(r_s: torch.Tensor, r_t: torch.Tensor) -> torch.Tensor:
    """The paper's VCRD-Prob weight: exp(clip(0.5 log(r_s / (r_t + 1e-8)), log 0.5, log 2))."""
    return torch.exp(
        (0.5 * torch.log(r_s / (r_t + 1e-8))).clamp(torch.log(torch.tensor(0.5)), torch.log(torch.tensor(2.0)))
    )


def teacher_likelihood_weight(teacher_logits: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
    """VCRD-Prob's weight from teacher logits rows and the student's greedy tokens (r_s = p(greedy), r_t = Σ p²)."""
    p = torch.softmax(teacher_logits.double(), -1)
    return vcrd_prob_weight(p.gather(1, greedy[:, None]).squeeze(1), (p * p).sum(-1)).float()


def test_weights_callable_gives_the_same_loss_and_gradients_as_two_passes() -> None:
    case, div = Case(seed=220), vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {})
    want = RowExtras(student_greedy=True, teacher_logits=True)
    factor = torch.linspace(0.5, 1.5, 8)  # a reduction's per-row factor, known before the pass
    _, _, z, u = case.reference(RecordingKL(), vocab_size=57)
    w = teacher_likelihood_weight(u[ROWS].float(), z[ROWS].argmax(-1)) * factor
    assert not torch.allclose(w, torch.ones(8))
    two_pass = check_against_reference(case, div, rows=ROWS, vocab_size=57, weights=w, chunk_size=3)

    seen: list[tuple[int, int, list[int]]] = []

    def coefficients(chunk: RowChunk) -> torch.Tensor:
        seen.append((chunk.start, chunk.stop, chunk.rows.tolist()))
        assert chunk.teacher_logits is not None and chunk.student_greedy is not None
        return teacher_likelihood_weight(chunk.teacher_logits, chunk.student_greedy) * factor[chunk.start : chunk.stop]

    one_pass, grads = case.run(div, rows=ROWS, vocab_size=57, weights=coefficients, chunk_size=3, want=want)
    _, ref_grads, _, _ = case.reference(div, rows=ROWS, vocab_size=57, weights=w)
    assert seen == [(0, 3, ROWS[:3].tolist()), (3, 6, ROWS[3:6].tolist()), (6, 8, ROWS[6:].tolist())]
    assert_close(one_pass.coefficients, w, rtol=1e-5, atol=1e-6)
    assert_close(one_pass.loss, two_pass.loss)
    for key in ("hidden", "weight", "bias"):
        assert_close(grads[key], ref_grads[key])


def test_given_or_default_coefficients_are_returned() -> None:
    out, _ = Case(seed=230).run(RecordingKL(), rows=ROWS, vocab_size=57)
    assert torch.equal(out.coefficients, torch.ones(8))
    w = torch.arange(8, dtype=torch.float64)
    out, _ = Case(seed=230).run(RecordingKL(), rows=ROWS, vocab_size=57, weights=w)
    assert out.coefficients.dtype == torch.float32 and torch.equal(out.coefficients, w.float())


def test_weights_callable_returning_the_wrong_shape_is_refused() -> None:
    with pytest.raises(VcrdError, match=r"the weights callable must return a float tensor \[3\] for rows \[0, 3\)"):
        Case(seed=240).run(RecordingKL(), rows=ROWS, vocab_size=57, chunk_size=3, weights=lambda chunk: torch.ones(2))


# ---- coefficients for the objective's reductions ----


@pytest.mark.parametrize("reduction", ["sequence_mean", "sequence_sum", "token_mean"])
def test_row_coefficients_give_the_objectives_loss_sum_and_count(reduction: str) -> None:
    seq = torch.tensor([0, 0, 0, 2, 2, 3])  # sequence 1 has no decision point
    w = torch.tensor([0.5, 1.0, 2.0, 1.5, 1.0, 0.7])
    d = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    c, count = row_coefficients(w, seq, reduction)
    per_seq = torch.zeros(4).index_add(0, seq, w * d)
    points = torch.bincount(seq, minlength=4)
    if reduction == "sequence_mean":
        expected, expected_count = (per_seq[points > 0] / points[points > 0]).sum(), 3
    elif reduction == "sequence_sum":
        expected, expected_count = per_seq.sum(), 3
    else:
        expected, expected_count = (w * d).sum(), 6
    assert count == expected_count
    assert_close((c * d).sum(), expected)


def test_row_coefficients_accept_the_objectives_reduction_enum_and_default_weights() -> None:
    from vcrd_core.losses.reduction import Reduction

    c, count = row_coefficients(None, torch.tensor([1, 1, 4]), Reduction.SEQUENCE_MEAN)
    assert_close(c, torch.tensor([0.5, 0.5, 1.0])) and count == 2
    with pytest.raises(VcrdError, match="reduction='mean' is unknown"):
        row_coefficients(None, torch.tensor([0]), "mean")


# ---- one-line errors ----


def call(case: Case, **kwargs: object) -> FusedLinearOutput:
    args = {
        "student_hidden": case.student_hidden,
        "student_weight": case.student_weight,
        "teacher_hidden": case.teacher_hidden,
        "teacher_weight": case.teacher_weight,
        "vocab_size": 57,
    }
    args.update(kwargs)
    return fused_linear_divergence(RecordingKL(), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"student_weight": torch.zeros(60, 15)}, r"student_hidden has hidden size 16 but student_weight is \[V, H\]"),
        ({"teacher_weight": torch.zeros(24, 64)}, "teacher_hidden has hidden size 24"),
        ({"teacher_hidden": torch.zeros(2, 6, 24)}, "same leading dims"),
        ({"student_weight": torch.zeros(60)}, r"student_weight must be a floating-point lm_head weight \[V, H\]"),
        ({"student_hidden": torch.zeros(2, 7, 16, dtype=torch.long)}, "student_hidden must be a floating-point"),
        ({"student_bias": torch.zeros(59)}, r"student_bias must be a floating-point tensor \[V\] = \(60,\)"),
        ({"vocab_size": None}, r"different vocabulary sizes \(64 vs 60.*pass vocab_size"),
        ({"vocab_size": 61}, r"vocab_size=61 is invalid; expected an int in \[1, 60\]"),
        ({"vocab_size": 0}, r"vocab_size=0 is invalid"),
        ({"temperature": 0.0}, "temperature=0.0 is invalid"),
        ({"temperature": float("nan")}, "temperature=nan is invalid"),
        ({"chunk_size": 0}, "chunk_size=0 is invalid"),
        ({"rows": torch.tensor([0, 14])}, r"rows must lie in \[0, 14\)"),
        ({"rows": torch.tensor([[1]])}, "rows must be a 1-D int64"),
        ({"rows": torch.tensor([1.0])}, "rows must be a 1-D int64"),
        (
            {"weights": torch.ones(13)},
            r"weights must be a float tensor \[n\] = \(14,\), one per selected row, or a callable",
        ),
        (
            {
                "teacher_hidden": torch.zeros(2, 7, 24, device="meta"),
                "teacher_weight": torch.zeros(64, 24, device="meta"),
            },
            "teacher_hidden is on meta but student_hidden on cpu",
        ),
        ({"student_weight": torch.zeros(60, 16, device="meta")}, "student_weight is on meta but student_hidden on cpu"),
        ({"want": {"student_greedy": True}}, "want must be a RowExtras"),
    ],
)
def test_mistakes_are_refused_with_one_line_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(VcrdError, match=message) as info:
        call(Case(seed=0), **kwargs)
    assert "\n" not in str(info.value)


def test_divergence_returning_the_wrong_shape_is_refused() -> None:
    class Broken(vcrd_core.Divergence):
        name = "broken"

        def value(self, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
            return (teacher_logp - student_logp).sum()

    case = Case(seed=0)
    with pytest.raises(VcrdError, match=r"divergence 'broken': value\(\) must return one value per row"):
        fused_linear_divergence(
            Broken(),
            case.student_hidden.requires_grad_(True),
            case.student_weight,
            case.teacher_hidden,
            case.teacher_weight,
            vocab_size=57,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU-only check)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_cuda_values_and_gradients_match_the_float64_reference(dtype: torch.dtype) -> None:
    case, div = Case(seed=250, dtype=dtype), vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {})
    h = case.student_hidden.cuda().requires_grad_(True)
    w = case.student_weight.cuda().requires_grad_(True)
    out = fused_linear_divergence(
        div,
        h,
        w,
        case.teacher_hidden.cuda(),
        case.teacher_weight.cuda(),
        rows=ROWS.cuda(),
        vocab_size=57,
        student_bias=case.student_bias.cuda(),
        teacher_bias=case.teacher_bias.cuda(),
        chunk_size=3,  # type: ignore[union-attr]
        want=RowExtras(student_greedy=True),
    )
    out.loss.backward()
    ref_values, ref, _, _ = case.reference(div, rows=ROWS, vocab_size=57)
    tol = 1e-4 if dtype == torch.float32 else 3e-2  # TF32 may be on for float32 matmuls
    assert_close(out.values.cpu(), ref_values, tol, tol)
    assert_close(h.grad.cpu(), ref["hidden"], tol, tol)  # type: ignore[union-attr]
    assert_close(w.grad.cpu(), ref["weight"], tol, tol)  # type: ignore[union-attr]


# ---- torch.compile of the per-chunk work ----


@pytest.mark.slow
@pytest.mark.parametrize("name", ["skl", "srkl", "jsd"])
def test_compiled_chunks_match_the_float64_reference_and_the_eager_engine(name: str) -> None:
    case, div = Case(seed=300), vcrd_core.create(vcrd_core.DIVERGENCES, name, {})
    kwargs = {"rows": ROWS, "vocab_size": 57, "temperature": 1.3, "weights": randn(8, seed=7).abs()}
    compiled, grads = case.run(div, compile=True, chunk_size=3, **kwargs)  # type: ignore[arg-type]
    values, ref, _, _ = case.reference(div, **kwargs)  # type: ignore[arg-type]
    assert_close(compiled.values, values)
    assert_close(compiled.loss, (kwargs["weights"].double() * values).sum())  # type: ignore[union-attr]
    for key in ("hidden", "weight", "bias"):
        assert_close(grads[key], ref[key])
    eager, eager_grads = case.run(div, chunk_size=3, **kwargs)  # type: ignore[arg-type]
    assert_close(compiled.values, eager.values, rtol=1e-6, atol=1e-6)
    assert_close(grads["weight"], eager_grads["weight"], rtol=1e-6, atol=1e-6)
    assert compiled.values.shape == (8,)  # chunks of 3, 3 and 2 rows: dynamic in the rows
