"""The objective on hidden states and lm_heads (``HiddenStreamInputs``: the fused-linear engine) against a plain
float64 reference of Eq. 3–4 and against the same objective on materialised logits (``StreamInputs``)."""

from __future__ import annotations

import pytest
import torch

import vcrd_core
from vcrd_core.decision_points import DecisionPoints
from vcrd_core.errors import VcrdError
from vcrd_core.losses.objective import HiddenStreamInputs, LMHead, StreamInputs, StreamLoss, VCRDObjective

B, L, H_S, H_T, V_S, V_T, VOCAB = 3, 9, 12, 20, 40, 44, 37


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def stream_batch(seed: int) -> dict[str, torch.Tensor]:
    """Hidden states, weights and masks of one stream; sequence 2 has no decision point."""
    attention = torch.ones(B, L, dtype=torch.long)
    attention[1, 7:] = 0
    response = torch.zeros(B, L, dtype=torch.long)
    response[0, 3:] = 1
    response[1, 4:7] = 1
    return {
        "teacher_hidden": randn(B, L, H_T, seed=seed),
        "student_hidden": randn(B, L, H_S, seed=seed + 1),
        "weights": randn(B, L, seed=seed + 2).abs() * 2,
        "points": DecisionPoints.from_masks(attention, response),
    }


class Heads:
    def __init__(self, seed: int = 50) -> None:
        self.student_weight = randn(V_S, H_S, seed=seed, scale=3.0 / H_S**0.5)
        self.student_bias = randn(V_S, seed=seed + 1)
        self.teacher_weight = randn(V_T, H_T, seed=seed + 2, scale=3.0 / H_T**0.5)
        self.teacher_bias = randn(V_T, seed=seed + 3)


def objective(reduction: str, **kwargs: object) -> VCRDObjective:
    skl = vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {})
    srkl = vcrd_core.create(vcrd_core.DIVERGENCES, "srkl", {})
    return VCRDObjective(StreamLoss(skl, 0.7), StreamLoss(srkl, 1.3), reduction=reduction, vocab_size=VOCAB, **kwargs)  # type: ignore[arg-type]


def reference(
    obj: VCRDObjective, batches: dict[str, dict[str, torch.Tensor]], heads: Heads, weighted: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 4 in float64 from the definitions: loss and its gradients w.r.t. the student's hidden states and head."""
    w_s = heads.student_weight.double().requires_grad_(True)
    b_s = heads.student_bias.double().requires_grad_(True)
    total = torch.zeros((), dtype=torch.float64)
    hidden: dict[str, torch.Tensor] = {}
    for name, batch in batches.items():
        h = batch["student_hidden"].double().requires_grad_(True)
        hidden[name] = h
        z = (h @ w_s.T + b_s)[..., :VOCAB] / obj.temperature
        u = (batch["teacher_hidden"].double() @ heads.teacher_weight.double().T + heads.teacher_bias.double())[
            ..., :VOCAB
        ] / obj.temperature
        points: DecisionPoints = batch["points"]
        rows = points.rows
        lq = torch.log_softmax(z.reshape(-1, VOCAB), -1)[rows]
        lp = torch.log_softmax(u.reshape(-1, VOCAB), -1)[rows]
        values = obj.losses[name].divergence.value(lp, lq)
        w = points.gather(batch["weights"]).double() if weighted else torch.ones_like(values)
        terms = w * values
        seqs = sorted(set(points.batch.tolist()))
        if obj.reduction.value == "token_mean":
            loss = terms.sum() / terms.numel()
        else:
            per_seq = []
            for b in seqs:
                mine = terms[points.batch == b]
                per_seq.append(mine.mean() if obj.reduction.value == "sequence_mean" else mine.sum())
            loss = torch.stack(per_seq).sum() / len(seqs)
        total = total + obj.losses[name].lam * loss
    params = [hidden[n] for n in batches] + [w_s, b_s]
    grads = torch.autograd.grad(total, params)
    named = {f"hidden/{n}": g for n, g in zip(batches, grads, strict=False)}
    named.update({"weight": grads[-2], "bias": grads[-1]})
    return total.detach(), named


def run_hidden(
    obj: VCRDObjective, batches: dict[str, dict[str, torch.Tensor]], heads: Heads, weighted: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    w_s = heads.student_weight.clone().requires_grad_(True)
    b_s = heads.student_bias.clone().requires_grad_(True)
    inputs, hidden = {}, {}
    for name, batch in batches.items():
        h = batch["student_hidden"].clone().requires_grad_(True)
        hidden[name] = h
        inputs[name] = HiddenStreamInputs(
            batch["teacher_hidden"],
            h,
            LMHead(heads.teacher_weight, heads.teacher_bias),
            LMHead(w_s, b_s),
            batch["points"],
            batch["weights"] if weighted else None,
        )
    loss = obj(**inputs).loss()
    loss.backward()
    grads = {f"hidden/{n}": hidden[n].grad for n in batches}
    grads.update({"weight": w_s.grad, "bias": b_s.grad})
    return loss.detach(), grads  # type: ignore[return-value]


BATCHES = {"teacher_prefix": stream_batch(0), "student_prefix": stream_batch(10)}


@pytest.mark.parametrize("reduction", ["sequence_mean", "sequence_sum", "token_mean"])
@pytest.mark.parametrize("weighted", [True, False])
def test_hidden_inputs_match_the_float64_reference_loss_and_gradients(reduction: str, weighted: bool) -> None:
    heads, obj = Heads(), objective(reduction, chunk_size=4, temperature=1.3)
    loss, grads = run_hidden(obj, BATCHES, heads, weighted)
    ref_loss, ref_grads = reference(obj, BATCHES, heads, weighted)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    for key, ref in ref_grads.items():
        torch.testing.assert_close(grads[key].double(), ref, rtol=1e-4, atol=1e-6, msg=key)
    assert torch.all(grads["weight"][VOCAB:] == 0)  # padded lm_head rows are not compared


def test_hidden_inputs_equal_the_logits_inputs_counts_and_weight_statistics() -> None:
    heads, obj = Heads(), objective("sequence_mean")
    hidden_out = obj(
        **{
            n: HiddenStreamInputs(
                b["teacher_hidden"],
                b["student_hidden"],
                LMHead(heads.teacher_weight, heads.teacher_bias),
                LMHead(heads.student_weight, heads.student_bias),
                b["points"],
                b["weights"],
            )
            for n, b in BATCHES.items()
        }
    )
    logits_out = obj(
        **{
            n: StreamInputs(
                b["teacher_hidden"] @ heads.teacher_weight.T + heads.teacher_bias,
                b["student_hidden"] @ heads.student_weight.T + heads.student_bias,
                b["points"],
                b["weights"],
            )
            for n, b in BATCHES.items()
        }
    )
    assert hidden_out.counts() == logits_out.counts() == {"teacher_prefix": 2, "student_prefix": 2}
    torch.testing.assert_close(hidden_out.loss(), logits_out.loss(), rtol=1e-6, atol=1e-7)
    for name in BATCHES:
        assert hidden_out.streams[name].weight_stats == logits_out.streams[name].weight_stats
        assert hidden_out.streams[name].num_points == logits_out.streams[name].num_points == 9


def test_under_bf16_autocast_the_lm_head_runs_in_bf16_as_the_models_own_would() -> None:
    """float32 weights under bf16 autocast: the logits path's lm_head runs in bf16; the fused one must too."""
    heads, obj = Heads(), objective("token_mean")
    b = BATCHES["teacher_prefix"]
    results = []
    for fused in (True, False):
        w = heads.student_weight.clone().requires_grad_(True)
        h = b["student_hidden"].clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                inputs = HiddenStreamInputs(
                    b["teacher_hidden"], h, LMHead(heads.teacher_weight), LMHead(w), b["points"], b["weights"]
                )
            else:
                t = torch.nn.functional.linear(b["teacher_hidden"], heads.teacher_weight)
                inputs = StreamInputs(t, torch.nn.functional.linear(h, w), b["points"], b["weights"])  # type: ignore[assignment]
            one = VCRDObjective(obj.losses["teacher_prefix"], None, reduction="token_mean", vocab_size=VOCAB)
            loss = one(teacher_prefix=inputs).loss()
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    (fl, fh, fw), (ll, lh, lw) = results
    assert fw is not None and fw.dtype == torch.float32 and fh is not None
    torch.testing.assert_close(fl, ll, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fw, lw, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(fh.float(), lh.float(), rtol=2e-2, atol=2e-3)
    # and not what float32 logits give: the bf16 rounding is really there
    w32 = heads.student_weight.clone().requires_grad_(True)
    one = VCRDObjective(obj.losses["teacher_prefix"], None, reduction="token_mean", vocab_size=VOCAB)
    exact = one(
        teacher_prefix=HiddenStreamInputs(
            b["teacher_hidden"],
            b["student_hidden"],
            LMHead(heads.teacher_weight),
            LMHead(w32),
            b["points"],
            b["weights"],
        )
    ).loss()
    assert not torch.equal(exact.detach(), fl)


def test_a_stream_without_decision_points_gives_a_zero_that_backpropagates() -> None:
    heads = Heads()
    one = VCRDObjective(StreamLoss(vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {})), None, vocab_size=VOCAB)
    h = randn(2, 5, H_S, seed=3).requires_grad_(True)
    w = heads.student_weight.clone().requires_grad_(True)
    points = DecisionPoints.from_masks(torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    out = one(
        teacher_prefix=HiddenStreamInputs(randn(2, 5, H_T, seed=4), h, LMHead(heads.teacher_weight), LMHead(w), points)
    )
    loss = out.loss()
    loss.backward()
    assert float(loss.detach()) == 0.0 and out.counts() == {"teacher_prefix": 0}
    assert h.grad is not None and torch.all(h.grad == 0)
    assert w.grad is not None and torch.all(w.grad == 0)  # a zero gradient, as the logits path gives: not None


def test_bad_hidden_inputs_are_refused_in_one_line() -> None:
    heads, b = Heads(), BATCHES["teacher_prefix"]
    one = VCRDObjective(StreamLoss(vcrd_core.create(vcrd_core.DIVERGENCES, "skl", {})), None, vocab_size=VOCAB)
    head_t, head_s = LMHead(heads.teacher_weight), LMHead(heads.student_weight)
    with pytest.raises(VcrdError, match=r"student_hidden must be \[B, L, H\], got \(27, 12\)"):
        one(teacher_prefix=HiddenStreamInputs(b["teacher_hidden"], b["student_hidden"].reshape(-1, H_S), head_t,
                                              head_s, b["points"]))  # fmt: skip
    with pytest.raises(VcrdError, match=r"teacher_hidden has shape \(3, 8, 20\), but the decision points"):
        one(teacher_prefix=HiddenStreamInputs(b["teacher_hidden"][:, :8], b["student_hidden"], head_t, head_s,
                                              b["points"]))  # fmt: skip
    with pytest.raises(VcrdError, match=r"student_head must be a vcrd_core\.losses\.objective\.LMHead"):
        HiddenStreamInputs(b["teacher_hidden"], b["student_hidden"], head_t, heads.student_weight, b["points"])  # type: ignore[arg-type]
    with pytest.raises(VcrdError, match="exactly one of points"):
        HiddenStreamInputs(b["teacher_hidden"], b["student_hidden"], head_t, head_s)
    with pytest.raises(VcrdError, match=r"expected a torch\.nn\.Linear lm_head, got Embedding"):
        LMHead.of(torch.nn.Embedding(4, 2))
    linear = torch.nn.Linear(3, 5)
    head = LMHead.of(linear)
    assert head.weight is linear.weight and head.bias is linear.bias


@pytest.mark.parametrize("reduction", ["sequence_mean", "sequence_sum", "token_mean"])
def test_weights_made_in_the_pass_equal_the_same_weights_given_as_a_tensor(reduction: str) -> None:
    heads, obj = Heads(), objective(reduction, chunk_size=4)
    b = BATCHES["teacher_prefix"]
    points: DecisionPoints = b["points"]
    flat = points.gather(b["weights"])
    one = VCRDObjective(obj.losses["teacher_prefix"], None, reduction=reduction, vocab_size=VOCAB, chunk_size=4)
    results = []
    for given in (b["weights"], lambda chunk: flat[chunk.start : chunk.stop].clone()):
        inputs = HiddenStreamInputs(b["teacher_hidden"], b["student_hidden"], LMHead(heads.teacher_weight),
                                    LMHead(heads.student_weight), points, given)  # fmt: skip
        results.append(one(teacher_prefix=inputs))
    tensor_out, callable_out = results
    torch.testing.assert_close(callable_out.loss(), tensor_out.loss(), rtol=1e-6, atol=0)
    assert callable_out.streams["teacher_prefix"].weight_stats == tensor_out.streams["teacher_prefix"].weight_stats
