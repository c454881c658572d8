"""The validity-weighted objective (vcrd_core.losses.objective) against a plain float64 reference."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import vcrd_core
from tests.fakes import ForwardKL, ReverseKL
from vcrd_core import DecisionPoints, VcrdError
from vcrd_core.losses.objective import (
    ObjectiveOutput,
    Reduction,
    StreamInputs,
    StreamLoss,
    VCRDObjective,
    VcrdWeightWarning,
)

REDUCTIONS = list(Reduction)
P = DecisionPoints.from_mask
Ref = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ref_fkl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    return (logp.exp() * (logp - logq)).sum()


def ref_rkl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    return (logq.exp() * (logq - logp)).sum()


@dataclass
class Batch:
    teacher: torch.Tensor  # [B, L, Vt]
    student: torch.Tensor  # [B, L, Vs], a float32 leaf requiring grad
    attention: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor


def make_batch(
    lengths: list[tuple[int, int]],
    *,
    vt: int = 11,
    vs: int = 11,
    left_pad: bool = False,
    seed: int = 0,
) -> Batch:
    """Sequences of (prompt length, response length); padding left or right; random logits and weights."""
    g = torch.Generator().manual_seed(seed)
    b, length = len(lengths), max(p + r for p, r in lengths) + 1
    attention = torch.zeros(b, length, dtype=torch.long)
    response = torch.zeros(b, length, dtype=torch.long)
    for i, (p, r) in enumerate(lengths):
        start = length - (p + r) if left_pad else 0
        attention[i, start : start + p + r] = 1
        response[i, start + p : start + p + r] = 1
    teacher = torch.randn(b, length, vt, generator=g) * 2
    student = (torch.randn(b, length, vs, generator=g) * 2).requires_grad_(True)
    weights = torch.rand(b, length, generator=g) * 3  # attenuation and amplification
    return Batch(teacher, student, attention, response, DecisionPoints.from_masks(attention, response).mask, weights)


def reference_stream(
    ref: Ref,
    teacher: torch.Tensor,
    student64: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None,
    reduction: Reduction,
    vocab: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The stream's loss written the plain way: loops over sequences and decision points, float64."""
    per_sequence, all_points = [], []
    for b in range(mask.shape[0]):
        terms = []
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            logp = torch.log_softmax(teacher[b, t - 1, :vocab].double() / temperature, -1)
            logq = torch.log_softmax(student64[b, t - 1, :vocab] / temperature, -1)
            w = 1.0 if weights is None else float(weights[b, t])
            terms.append(w * ref(logp, logq))
        all_points += terms
        if not terms:
            continue  # a sequence without decision points is not counted
        seq = sum(terms)
        per_sequence.append(seq / len(terms) if reduction is Reduction.SEQUENCE_MEAN else seq)
    if reduction is Reduction.TOKEN_MEAN:
        return sum(all_points) / len(all_points) if all_points else torch.zeros((), dtype=torch.float64)
    return sum(per_sequence) / len(per_sequence) if per_sequence else torch.zeros((), dtype=torch.float64)


LENGTHS_A = [(2, 3), (3, 0), (1, 4), (2, 2)]  # the second sequence has no decision point
LENGTHS_B = [(1, 2), (2, 4), (4, 1)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_objective_equals_float64_reference_in_values_and_gradients(reduction: Reduction) -> None:
    a, b = make_batch(LENGTHS_A, seed=1), make_batch(LENGTHS_B, seed=2)
    objective = VCRDObjective(StreamLoss(ForwardKL(), 0.7), StreamLoss(ReverseKL(), 1.9), reduction=reduction)
    out = objective(
        teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights),
        student_prefix=StreamInputs(b.teacher, b.student, P(b.mask), b.weights),
    )
    loss = out.loss()
    loss.backward()

    a64 = a.student.detach().double().requires_grad_(True)
    b64 = b.student.detach().double().requires_grad_(True)
    expected = 0.7 * reference_stream(ref_fkl, a.teacher, a64, a.mask, a.weights, reduction, 11) + 1.9 * (
        reference_stream(ref_rkl, b.teacher, b64, b.mask, b.weights, reduction, 11)
    )
    expected.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.student.grad.double(), a64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.student.grad.double(), b64.grad, rtol=1e-4, atol=1e-6)


def test_counts_and_points_follow_the_reduction() -> None:
    a = make_batch(LENGTHS_A)
    inputs = StreamInputs(a.teacher, a.student, P(a.mask), a.weights)
    for reduction, count in ((Reduction.SEQUENCE_MEAN, 3), (Reduction.SEQUENCE_SUM, 3), (Reduction.TOKEN_MEAN, 9)):
        out = VCRDObjective(StreamLoss(ForwardKL()), None, reduction=reduction)(teacher_prefix=inputs)
        assert out.streams["teacher_prefix"].count == count
        assert out.streams["teacher_prefix"].num_points == 9


def test_a_sequence_without_decision_points_contributes_nothing_and_is_not_counted() -> None:
    a = make_batch(LENGTHS_A, seed=3)
    keep = [0, 2, 3]
    for reduction in REDUCTIONS:
        objective = VCRDObjective(StreamLoss(ForwardKL()), None, reduction=reduction)
        full = objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights))
        kept = objective(
            teacher_prefix=StreamInputs(a.teacher[keep], a.student[keep], P(a.mask[keep]), a.weights[keep])
        )
        torch.testing.assert_close(full.loss(), kept.loss())
        assert full.counts() == kept.counts()


def test_sequence_mean_divides_by_the_number_of_points_not_the_sum_of_weights() -> None:
    a = make_batch(LENGTHS_B, seed=4)
    objective = VCRDObjective(StreamLoss(ForwardKL()), None, reduction="sequence_mean")
    unweighted = objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), None)).loss()
    doubled = objective(
        teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), torch.full_like(a.weights, 2))
    ).loss()
    torch.testing.assert_close(doubled, 2 * unweighted)


def test_left_and_right_padding_give_the_same_loss_and_gradients() -> None:
    lengths = [(2, 3), (4, 1), (1, 5)]
    right = make_batch(lengths, seed=5)
    left = make_batch(lengths, left_pad=True, seed=6)
    # Copy each real token's logits to its left-padded position (the padding logits stay random garbage).
    with torch.no_grad():
        for i, (p, r) in enumerate(lengths):
            shift = right.mask.shape[1] - (p + r)
            left.teacher[i, shift : shift + p + r] = right.teacher[i, : p + r]
            left.student[i, shift : shift + p + r] = right.student[i, : p + r]
            left.weights[i, shift : shift + p + r] = right.weights[i, : p + r]
    for reduction in REDUCTIONS:
        objective = VCRDObjective(None, StreamLoss(ReverseKL()), reduction=reduction)
        right.student.grad = left.student.grad = None
        lr = objective(student_prefix=StreamInputs(right.teacher, right.student, P(right.mask), right.weights)).loss()
        ll = objective(student_prefix=StreamInputs(left.teacher, left.student, P(left.mask), left.weights)).loss()
        lr.backward()
        ll.backward()
        torch.testing.assert_close(ll, lr)
        for i, (p, r) in enumerate(lengths):
            shift = right.mask.shape[1] - (p + r)
            torch.testing.assert_close(left.student.grad[i, shift : shift + p + r], right.student.grad[i, : p + r])


def test_padded_vocabularies_use_only_the_real_columns() -> None:
    a = make_batch(LENGTHS_A, vt=13, vs=12, seed=7)
    objective = VCRDObjective(StreamLoss(ForwardKL()), None, reduction="token_mean", vocab_size=10)
    loss = objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights)).loss()
    loss.backward()
    a64 = a.student.detach().double().requires_grad_(True)
    expected = reference_stream(ref_fkl, a.teacher, a64, a.mask, a.weights, Reduction.TOKEN_MEAN, 10)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.student.grad.double(), a64.grad, rtol=1e-4, atol=1e-6)
    assert torch.count_nonzero(a.student.grad[..., 10:]) == 0

    with torch.no_grad():  # whatever sits in the padded columns does not matter
        a.teacher[..., 10:] = 1e4
        a.student[..., 10:] = -1e4
    again = objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights)).loss()
    torch.testing.assert_close(again, loss)


def test_temperature_scales_both_distributions() -> None:
    a = make_batch(LENGTHS_B, seed=8)
    objective = VCRDObjective(StreamLoss(ForwardKL()), None, temperature=2.0)
    loss = objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights)).loss()
    a64 = a.student.detach().double()
    expected = reference_stream(ref_fkl, a.teacher, a64, a.mask, a.weights, Reduction.SEQUENCE_MEAN, 11, 2.0)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_small_chunks_give_the_same_loss_and_gradients() -> None:
    a = make_batch(LENGTHS_A, seed=9)
    results = []
    for chunk in (None, 2):
        a.student.grad = None
        objective = VCRDObjective(StreamLoss(ForwardKL()), None, chunk_size=chunk)
        loss = objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights)).loss()
        loss.backward()
        results.append((loss.detach(), a.student.grad.clone()))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_accumulation_with_global_counts_equals_the_full_batch(reduction: Reduction) -> None:
    lengths = [(2, 3), (3, 0), (1, 4), (2, 2), (1, 1), (3, 0)]
    a = make_batch(lengths, seed=10)
    b = make_batch(list(reversed(lengths)), seed=11)
    objective = VCRDObjective(StreamLoss(ForwardKL(), 1.0), StreamLoss(ReverseKL(), 0.5), reduction=reduction)

    def run(part: slice) -> ObjectiveOutput:
        return objective(
            teacher_prefix=StreamInputs(a.teacher[part], a.student[part], P(a.mask[part]), a.weights[part]),
            student_prefix=StreamInputs(b.teacher[part], b.student[part], P(b.mask[part]), b.weights[part]),
        )

    full = run(slice(None))
    full_loss = full.loss()
    full_loss.backward()
    full_grads = (a.student.grad.clone(), b.student.grad.clone())
    a.student.grad = b.student.grad = None

    micro = [run(slice(0, 2)), run(slice(2, 6))]
    for name in ("teacher_prefix", "student_prefix"):
        summed = sum(m.streams[name].loss_sum for m in micro) / sum(m.streams[name].count for m in micro)
        torch.testing.assert_close(summed, full.streams[name].loss_sum / full.streams[name].count)
    global_counts = {k: sum(m.counts()[k] for m in micro) for k in full.counts()}
    assert global_counts == full.counts()
    accumulated = torch.zeros(())
    for m in micro:
        part = m.loss(counts=global_counts)
        part.backward()
        accumulated = accumulated + part.detach()
    torch.testing.assert_close(accumulated, full_loss.detach())
    torch.testing.assert_close((a.student.grad, b.student.grad), full_grads)


def test_global_counts_may_be_tensors() -> None:
    a = make_batch(LENGTHS_A, seed=12)
    out = VCRDObjective(StreamLoss(ForwardKL()), None)(
        teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights)
    )
    s = out.streams["teacher_prefix"]
    torch.testing.assert_close(out.loss(counts={"teacher_prefix": torch.tensor(6)}), s.loss_sum / 6)


def test_a_stream_with_a_zero_count_adds_zero_and_backward_still_works() -> None:
    a = make_batch([(2, 0), (3, 0)], seed=13)
    b = make_batch(LENGTHS_B, seed=14)
    objective = VCRDObjective(StreamLoss(ForwardKL()), StreamLoss(ReverseKL()))
    out = objective(
        teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights),
        student_prefix=StreamInputs(b.teacher, b.student, P(b.mask), b.weights),
    )
    assert out.counts() == {"teacher_prefix": 0, "student_prefix": 3}
    only_b = VCRDObjective(None, StreamLoss(ReverseKL()))(
        student_prefix=StreamInputs(b.teacher, b.student, P(b.mask), b.weights)
    )
    loss = out.loss()
    torch.testing.assert_close(loss, only_b.loss())
    loss.backward()
    assert torch.count_nonzero(a.student.grad) == 0
    assert out.loss(counts={"teacher_prefix": 0, "student_prefix": 0}).item() == 0.0


def test_weights_and_teacher_logits_never_get_gradient() -> None:
    a = make_batch(LENGTHS_A, seed=15)
    weights = a.weights.clone().requires_grad_(True)
    teacher = a.teacher.clone().requires_grad_(True)
    out = VCRDObjective(StreamLoss(ForwardKL()), None)(
        teacher_prefix=StreamInputs(teacher, a.student, P(a.mask), weights)
    )
    out.loss().backward()
    assert weights.grad is None
    assert teacher.grad is None
    assert a.student.grad is not None


def test_weight_statistics_match_float64_quantiles_at_decision_points() -> None:
    a = make_batch(LENGTHS_A, seed=16)
    a.weights[tuple(a.mask.nonzero()[0].tolist())] = 1.0  # one exact parity point
    out = VCRDObjective(StreamLoss(ForwardKL()), None)(
        teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights)
    )
    w = a.weights[a.mask].double()
    stats = out.streams["teacher_prefix"].weight_stats
    quantiles = torch.quantile(w, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    expected = dict(zip(("p50", "p90", "p99"), quantiles, strict=True))
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-6)
    assert stats["min"] == pytest.approx(float(w.min()))
    assert stats["max"] == pytest.approx(float(w.max()))
    assert stats["mean"] == pytest.approx(float(w.mean()))
    tol = 0.05  # vcrd_core.regimes.DEFAULT_PARITY_TOL, written out: the regimes in plain float64
    assert stats["share_parity"] == pytest.approx(float(((w - 1).abs() <= tol).double().mean()))
    assert stats["share_attenuation"] == pytest.approx(float((w < 1 - tol).double().mean()))
    assert stats["share_amplification"] == pytest.approx(float((w > 1 + tol).double().mean()))
    assert stats["share_parity"] >= 1 / w.numel()  # the exact parity point


def test_metrics_are_a_flat_dict_of_floats_per_stream() -> None:
    a, b = make_batch(LENGTHS_A, seed=17), make_batch(LENGTHS_B, seed=18)
    out = VCRDObjective(StreamLoss(ForwardKL(), 0.5), StreamLoss(ReverseKL()))(
        teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights),
        student_prefix=StreamInputs(b.teacher, b.student, P(b.mask), None),
    )
    metrics = out.metrics()
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["loss"] == pytest.approx(float(out.loss().detach()))
    t = out.streams["teacher_prefix"]
    assert metrics["teacher_prefix/loss"] == pytest.approx(float(t.loss_sum.detach()) / t.count)
    assert metrics["teacher_prefix/count"] == 3.0
    assert metrics["teacher_prefix/points"] == 9.0
    assert metrics["student_prefix/weight_max"] == 1.0  # no weights: w = 1
    assert {"teacher_prefix/weight_p99", "teacher_prefix/weight_share_amplification"} <= set(metrics)


def test_a_weight_above_weight_warn_max_warns() -> None:
    a = make_batch(LENGTHS_B, seed=19)
    first = tuple(a.mask.nonzero()[0].tolist())
    a.weights[first] = 1e8  # the ratio rule with r_t -> 0
    objective = VCRDObjective(StreamLoss(ForwardKL()), None, weight_warn_max=100.0)
    with pytest.warns(VcrdWeightWarning, match=r"teacher_prefix stream: 1 of 7 weights exceed weight_warn_max=100"):
        objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights))


@pytest.mark.parametrize("warn_max", [None, 1e9])
def test_no_warning_at_or_below_weight_warn_max(warn_max: float | None) -> None:
    a = make_batch(LENGTHS_B, seed=20)
    a.weights[tuple(a.mask.nonzero()[0].tolist())] = 1e8
    objective = VCRDObjective(StreamLoss(ForwardKL()), None, weight_warn_max=warn_max)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights))


def test_a_negative_lambda_is_refused() -> None:
    with pytest.raises(VcrdError, match=r"StreamLoss.lam must be a finite number >= 0 \(Eq. 4\), got -0.5"):
        StreamLoss(ForwardKL(), -0.5)


def test_an_objective_without_streams_is_refused() -> None:
    with pytest.raises(VcrdError, match="needs at least one stream"):
        VCRDObjective(None, None)


def test_missing_or_unexpected_stream_inputs_are_refused() -> None:
    a = make_batch(LENGTHS_B)
    inputs = StreamInputs(a.teacher, a.student, P(a.mask), a.weights)
    objective = VCRDObjective(StreamLoss(ForwardKL()), None)
    with pytest.raises(VcrdError, match="the teacher_prefix stream is configured but its StreamInputs are missing"):
        objective(student_prefix=inputs)
    with pytest.raises(VcrdError, match="got student_prefix inputs but the objective has no student_prefix stream"):
        objective(teacher_prefix=inputs, student_prefix=inputs)


def test_different_vocabularies_without_vocab_size_are_refused() -> None:
    a = make_batch(LENGTHS_B, vt=12, vs=11)
    with pytest.raises(VcrdError, match=r"teacher vocabulary 12 != student vocabulary 11; pass vocab_size"):
        VCRDObjective(StreamLoss(ForwardKL()), None)(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask)))


def test_stream_inputs_take_decision_points_or_labels_exactly_once() -> None:
    a = make_batch(LENGTHS_B)
    with pytest.raises(VcrdError, match="pass exactly one of points"):
        StreamInputs(a.teacher, a.student)
    with pytest.raises(VcrdError, match="pass exactly one of points"):
        StreamInputs(a.teacher, a.student, P(a.mask), labels=torch.zeros(3, 7, dtype=torch.long))
    with pytest.raises(VcrdError, match=r"points must be a vcrd_core\.DecisionPoints"):
        StreamInputs(a.teacher, a.student, a.mask)


def test_negative_or_nan_weights_at_decision_points_are_refused() -> None:
    a = make_batch(LENGTHS_B)
    objective = VCRDObjective(StreamLoss(ForwardKL()), None)
    for bad in (-0.5, float("nan")):
        weights = a.weights.clone()
        weights[tuple(a.mask.nonzero()[0].tolist())] = bad
        with pytest.raises(VcrdError, match="weights at decision points must be finite and >= 0"):
            objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), weights))


def test_invalid_weights_outside_decision_points_are_ignored() -> None:
    a = make_batch(LENGTHS_B)
    weights = a.weights.clone()
    weights[~a.mask] = float("nan")
    objective = VCRDObjective(StreamLoss(ForwardKL()), None)
    clean = objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights)).loss()
    dirty = objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), weights)).loss()
    torch.testing.assert_close(dirty, clean)


def test_shape_mismatches_name_the_tensor_and_the_expected_shape() -> None:
    a = make_batch(LENGTHS_B)
    objective = VCRDObjective(StreamLoss(ForwardKL()), None)
    with pytest.raises(VcrdError, match=r"student_logits has shape \(3, 6, 11\), but .* \[B, L\] = \[3, 7\]"):
        objective(teacher_prefix=StreamInputs(a.teacher, a.student[:, :-1], P(a.mask)))
    with pytest.raises(VcrdError, match=r"weights has shape \(2, 7\), but .* \[B, L\] = \[3, 7\]"):
        objective(teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights[:2]))
    with pytest.raises(VcrdError, match=r"student_logits must be \[B, L, V\], got shape \(3, 7\)"):
        objective(teacher_prefix=StreamInputs(a.teacher, a.student[..., 0], P(a.mask)))


def test_real_skl_and_srkl_streams_equal_the_float64_reference_of_eq_2_to_4() -> None:
    alpha = 0.1
    skl = vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {"alpha": alpha})
    srkl = vcrd_core.create(vcrd_core.DIVERGENCES, "srkl", {"alpha": alpha})  # detaches q inside the mixture

    def ref_skl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
        p, q = logp.exp(), logq.exp()
        return (p * torch.log(p / (alpha * p + (1 - alpha) * q))).sum()

    def ref_srkl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
        p, q = logp.exp(), logq.exp()
        return (q * torch.log(q / ((1 - alpha) * p + alpha * q.detach()))).sum()

    a, b = make_batch(LENGTHS_A, vt=13, vs=12, seed=21), make_batch(LENGTHS_B, vt=13, vs=12, seed=22)
    objective = VCRDObjective(StreamLoss(skl, 1.0), StreamLoss(srkl, 0.3), vocab_size=10, chunk_size=3)
    loss = objective(
        teacher_prefix=StreamInputs(a.teacher, a.student, P(a.mask), a.weights),
        student_prefix=StreamInputs(b.teacher, b.student, P(b.mask), b.weights),
    ).loss()
    loss.backward()
    a64 = a.student.detach().double().requires_grad_(True)
    b64 = b.student.detach().double().requires_grad_(True)
    expected = reference_stream(ref_skl, a.teacher, a64, a.mask, a.weights, Reduction.SEQUENCE_MEAN, 10) + 0.3 * (
        reference_stream(ref_srkl, b.teacher, b64, b.mask, b.weights, Reduction.SEQUENCE_MEAN, 10)
    )
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.student.grad.double(), a64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.student.grad.double(), b64.grad, rtol=1e-4, atol=1e-6)
