"""DistiLLM-2's per-sequence adaptive α (``skl_adaptive`` / ``srkl_adaptive``) through the public objective,
against a float64 re-implementation of ``get_batch_logps``' formula (alpha detached), and the core's per-sequence
parameters: computed once per batch from the rollout tokens' log-probabilities, refused by the fused engine."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vcrd_core
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.losses.objective import HiddenStreamInputs, LMHead, StreamInputs, StreamLoss, VCRDObjective

B, L, V = 4, 9, 23
LENGTHS = [5, 3, 7, 0]  # response lengths (the last sequence has no decision point: counted nowhere)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, vcrd_core.DecisionPoints]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2
    # the student near the teacher on some sequences, far on others: gaps of both signs
    student = teacher * torch.tensor([1.0, 0.2, -0.5, 1.0], dtype=torch.float64)[:, None, None]
    student = student + torch.randn(B, L, V, generator=g, dtype=torch.float64) * 0.3
    ids = torch.randint(0, V, (B, L), generator=g)
    response = torch.zeros(B, L, dtype=torch.bool)
    for b, n in enumerate(LENGTHS):
        response[b, L - n :] = True
    points = vcrd_core.DecisionPoints.from_masks(torch.ones(B, L, dtype=torch.long), response)
    return teacher, student, ids, points


def reference(
    teacher: torch.Tensor, student: torch.Tensor, ids: torch.Tensor, *, skl: bool, anchor: Any = "batch"
) -> torch.Tensor:
    """float64, the straightforward way: per sequence p_bar, q_bar, the gap, alpha = clip(1 - 0.9 m / (gap +
    1e-5), 0.01, 0.1) (alpha a constant), the skew divergence per token, and the sequence mean."""
    lp, lq = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
    rows = []
    for b, n in enumerate(LENGTHS):
        if n == 0:
            continue
        t = torch.arange(L - n, L)
        y = ids[b, t]
        p, q = lp[b, t - 1], lq[b, t - 1]
        p_bar = p.gather(-1, y[:, None]).mean().exp()
        q_bar = q.gather(-1, y[:, None]).mean().exp()
        gap = (p_bar - q_bar) if skl else (q_bar - p_bar)
        rows.append((p, q, float(gap.detach())))
    m = sum(g for *_, g in rows) / len(rows) if anchor == "batch" else anchor
    total = torch.zeros((), dtype=torch.float64)
    for p, q, gap in rows:
        a = min(max(1 - 0.9 * m / (gap + 1e-5), 0.01), 0.1)
        if skl:
            mix = torch.log(a * p.exp() + (1 - a) * q.exp())
            d = (p.exp() * (p - mix)).sum(-1)
        else:
            mix = torch.log((1 - a) * p.exp() + a * q.detach().exp())
            d = (q.exp() * (q - mix)).sum(-1)
        total = total + d.mean()
    return total / len(rows)


def objective(name: str, **params: Any) -> VCRDObjective:
    div = vcrd_core.create(vcrd_core.DIVERGENCES, name, params)
    loss = StreamLoss(div)  # type: ignore[arg-type]
    return VCRDObjective(loss, None) if name.startswith("skl") else VCRDObjective(None, loss)


@pytest.mark.parametrize("name", ["skl_adaptive", "srkl_adaptive"])
@pytest.mark.parametrize("anchor", ["batch", "fixed"])
def test_value_and_gradient_match_the_float64_formula(name: str, anchor: Any) -> None:
    teacher, student64, ids, points = batch(0)
    if anchor == "fixed":  # the gaps here are about 0.002, 0.032 and 0.034 (sign by stream): two alphas unclipped
        anchor = -0.034 if name == "skl_adaptive" else 0.034
    student = student64.float().requires_grad_(True)
    obj = objective(name, anchor=anchor)
    inputs = StreamInputs(teacher.float(), student, points, input_ids=ids)
    stream = "teacher_prefix" if name == "skl_adaptive" else "student_prefix"
    out = obj(**{stream: inputs})
    loss = out.loss()
    loss.backward()
    ref_student = student64.clone().requires_grad_(True)
    want = reference(teacher, ref_student, ids, skl=name == "skl_adaptive", anchor=anchor)
    want.backward()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert torch.allclose(student.grad.double(), ref_student.grad, rtol=1e-4, atol=1e-7)
    stats = out.streams[stream].parameter_stats
    # the alphas differ between sequences and stay in the clip's range (float32)
    assert 0.01 - 1e-8 <= stats["alpha_min"] < stats["alpha_max"] <= 0.1 + 1e-8


def test_chunks_see_their_own_rows_of_alpha() -> None:
    teacher, student, ids, points = batch(1)
    whole = objective("skl_adaptive")(StreamInputs(teacher.float(), student.float(), points, input_ids=ids))
    div = vcrd_core.create(vcrd_core.DIVERGENCES, "skl_adaptive", {})
    tiny = VCRDObjective(StreamLoss(div), None, chunk_size=2)  # type: ignore[arg-type]
    chunked = tiny(StreamInputs(teacher.float(), student.float(), points, input_ids=ids))
    assert float(chunked.loss()) == pytest.approx(float(whole.loss()), rel=1e-6)


def test_a_clip_pinned_at_alpha_is_the_plain_skew_divergence() -> None:
    teacher, student, ids, points = batch(2)
    inputs = StreamInputs(teacher.float(), student.float(), points, input_ids=ids)
    pinned = objective("skl_adaptive", alpha=0.1, min_alpha=0.1)(inputs)
    plain = VCRDObjective(StreamLoss(vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {"alpha": 0.1})), None)(inputs)  # type: ignore[arg-type]
    assert float(pinned.loss()) == pytest.approx(float(plain.loss()), rel=1e-6)


def test_without_the_tokens_or_under_the_fused_engine_it_is_one_line() -> None:
    teacher, student, _, points = batch(3)
    obj = objective("skl_adaptive")
    with pytest.raises(VcrdError, match=r"reads the log-probabilities of the rollout's own tokens; pass StreamInputs"):
        obj(StreamInputs(teacher.float(), student.float(), points))
    hidden = torch.randn(B, L, 5)
    head = LMHead(torch.randn(V, 5))
    with pytest.raises(VcrdError, match=r"per-sequence parameters .* fused-linear engine does not compute") as info:
        obj(HiddenStreamInputs(hidden, hidden, head, head, points))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"min_alpha": 0.2}, "min_alpha 0.2 must be <= alpha 0.1"), ({"anchor": "mean"}, "params.anchor")],
)
def test_bad_params_are_refused(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        vcrd_core.create(vcrd_core.DIVERGENCES, "srkl_adaptive", params)
