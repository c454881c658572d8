"""The ``teacher_likelihood`` judge (VCRD-Prob, paper §4.6 / §10.4) against plain float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vcrd_judges.teacher_likelihood import TeacherLikelihoodJudge

import vcrd_core
from vcrd_core import ConfigError, DecisionPoints, JudgeContext, JudgeRequest, Need, Stream, VcrdError


def make_judge(vocab_size: int | None = None, **params: object) -> TeacherLikelihoodJudge:
    judge = TeacherLikelihoodJudge(TeacherLikelihoodJudge.Params(**params))
    if vocab_size is not None:
        judge.load(JudgeContext(vocab_size=vocab_size))
    return judge


def row_scores(
    judge: TeacherLikelihoodJudge, logits: torch.Tensor, proposals: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's scores of ``proposals`` ``[...]`` under rows of ``logits`` ``[..., V]``, through
    :meth:`RowJudge.score` (one decision point per sequence, at position 1: its distribution is row 0)."""
    lead, vocab = proposals.shape, logits.shape[-1]
    flat, props = logits.reshape(-1, vocab), proposals.reshape(-1)
    n = props.numel()
    wide = torch.zeros(n, 2, vocab, dtype=logits.dtype)
    wide[:, 0] = flat
    greedy = torch.zeros(n, 2, dtype=torch.long)
    greedy[:, 1] = props
    decision = torch.zeros(n, 2, dtype=torch.bool)
    decision[:, 1] = True
    scores = judge.score(request_for(Stream.TEACHER_PREFIX, wide, greedy, decision))
    return scores.r_s[:, 1].reshape(lead), scores.r_t[:, 1].reshape(lead)


def reference_scores(
    logits: np.ndarray, proposals: np.ndarray, vocab_size: int | None = None, k: int = 128, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Float64, one row at a time: p = softmax(z[:V] / T); r_s = p[a]; r_t = sum of the k largest p²."""
    r_s, r_t = [], []
    for z, a in zip(logits.reshape(-1, logits.shape[-1]), proposals.reshape(-1), strict=True):
        z = np.asarray(z, dtype=np.float64)[: vocab_size or len(z)] / temperature
        e = np.exp(z - z.max())
        p = e / e.sum()
        r_s.append(p[int(a)])
        r_t.append(np.sum(np.sort(p)[::-1][: min(k, len(p))] ** 2))
    return np.array(r_s).reshape(proposals.shape), np.array(r_t).reshape(proposals.shape)


def paper_weight(r_s: np.ndarray, r_t: np.ndarray) -> np.ndarray:
    """§10.4: w = exp(clip(0.5 · log(r_s / (r_t + 1e-8)), log 0.5, log 2)), float64 (r_s = 0 gives 0.5)."""
    with np.errstate(divide="ignore"):
        log_ratio = np.log(r_s / (r_t + 1e-8))
    return np.exp(np.clip(0.5 * log_ratio, math.log(0.5), math.log(2.0)))


def mixed_scale_logits(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Rows from nearly flat to very peaked, so the weights cover both clamps and the interior."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.05, 0.5, 2.0, 8.0, 30.0]).repeat(n // 5 + 1)[:n, None]
    return torch.randn(n, vocab, generator=gen) * scales


def test_scores_match_float64_reference_on_random_logits() -> None:
    logits = mixed_scale_logits(40, 300)
    proposals = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(1))
    r_s, r_t = row_scores(make_judge(), logits, proposals)
    ref_s, ref_t = reference_scores(logits.numpy(), proposals.numpy())
    assert r_s.dtype == torch.float32 and r_t.dtype == torch.float32
    np.testing.assert_allclose(r_s.numpy(), ref_s, rtol=2e-5, atol=1e-30)
    np.testing.assert_allclose(r_t.numpy(), ref_t, rtol=2e-5)


def test_paper_vcrd_prob_weight_follows_from_the_scores() -> None:
    logits = mixed_scale_logits(60, 1000, seed=3)
    # Half the proposals are the teacher's argmax (high p), half random (often tiny p).
    proposals = torch.where(
        torch.arange(60) % 2 == 0, logits.argmax(-1), torch.randint(0, 1000, (60,), generator=torch.Generator())
    )
    r_s, r_t = row_scores(make_judge(), logits, proposals)
    w = paper_weight(r_s.double().numpy(), r_t.double().numpy())
    w_ref = paper_weight(*reference_scores(logits.numpy(), proposals.numpy()))
    # The data must reach both clamps and the interior, or this test would prove little.
    assert (w_ref == 0.5).any() and (w_ref == 2.0).any() and ((w_ref > 0.5) & (w_ref < 2.0)).any()
    np.testing.assert_allclose(w, w_ref, rtol=1e-5)


def test_log_clamp_weighting_rule_reproduces_the_paper_vcrd_prob_weight() -> None:
    if "log_clamp" not in vcrd_core.available("weighting"):
        pytest.skip("the log_clamp weighting plugin is not installed yet")
    rule = vcrd_core.create("weighting", "log_clamp", {})  # defaults: inner ratio ε=1e-8, γ=0.5, [0.5, 2]
    logits = mixed_scale_logits(60, 1000, seed=4)
    proposals = torch.where(
        torch.arange(60) % 2 == 0, logits.argmax(-1), torch.randint(0, 1000, (60,), generator=torch.Generator())
    )
    r_s, r_t = row_scores(make_judge(), logits, proposals)
    w = rule(r_s, r_t)
    w_ref = paper_weight(*reference_scores(logits.numpy(), proposals.numpy()))
    assert (w_ref == 0.5).any() and (w_ref == 2.0).any()
    np.testing.assert_allclose(w.double().numpy(), w_ref, rtol=1e-5)


def test_padded_lm_head_columns_get_no_probability_mass() -> None:
    real, padded = 50, 64
    logits = torch.randn(12, padded, generator=torch.Generator().manual_seed(5))
    logits[:, real:] = 40.0  # garbage in the padding would dominate the softmax if it took part
    proposals = torch.randint(0, real, (12,), generator=torch.Generator().manual_seed(6))
    r_s, r_t = row_scores(make_judge(vocab_size=real), logits, proposals)
    ref_s, ref_t = reference_scores(logits.numpy(), proposals.numpy(), vocab_size=real)
    np.testing.assert_allclose(r_s.numpy(), ref_s, rtol=2e-5)
    np.testing.assert_allclose(r_t.numpy(), ref_t, rtol=2e-5)
    unsliced_s, _ = row_scores(make_judge(), logits, proposals)
    assert (unsliced_s < 1e-10).all()  # without the real vocabulary the padding takes all the mass


def test_extreme_logits_give_finite_scores_matching_reference() -> None:
    big = torch.finfo(torch.float32).max
    logits = torch.tensor(
        [
            [big, -big, 0.0, 1.0, 2.0],
            [1e4, 1e4 - 1.0, -1e4, 0.0, 3.0],
            [-1e4, -1e4, -1e4, -1e4, -1e4],
            [88.0, 89.0, -104.0, 0.0, 0.5],
        ]
    )
    proposals = torch.tensor([1, 1, 3, 2])
    r_s, r_t = row_scores(make_judge(), logits, proposals)
    ref_s, ref_t = reference_scores(logits.double().numpy(), proposals.numpy())
    assert torch.isfinite(r_s).all() and torch.isfinite(r_t).all()
    np.testing.assert_allclose(r_s.numpy(), ref_s, rtol=2e-5, atol=1e-38)
    np.testing.assert_allclose(r_t.numpy(), ref_t, rtol=2e-5)


def test_minus_infinity_logits_score_zero_and_do_not_make_nan() -> None:
    logits = torch.tensor([[0.0, -math.inf, 1.0, -math.inf], [-math.inf, 2.0, -math.inf, -math.inf]])
    proposals = torch.tensor([1, 1])
    r_s, r_t = row_scores(make_judge(), logits, proposals)
    assert r_s[0].item() == 0.0
    assert r_s[1].item() == 1.0 and r_t[1].item() == 1.0  # one finite logit: a point mass
    e = math.exp(-1.0)
    p0, p2 = e / (1 + e), 1 / (1 + e)
    assert r_t[0].item() == pytest.approx(p0**2 + p2**2, rel=1e-6)
    assert not torch.isnan(torch.stack([r_s, r_t])).any()


@pytest.mark.parametrize("top_k", [128, 1000])
def test_top_k_larger_than_the_real_vocabulary_is_clipped_to_it(top_k: int) -> None:
    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(7))
    logits[:, 10:] = 5.0  # padding beyond the real vocabulary of 10
    proposals = torch.zeros(6, dtype=torch.long)
    _, r_t = row_scores(make_judge(vocab_size=10, top_k=top_k), logits, proposals)
    p = torch.softmax(logits[:, :10].double(), -1)
    np.testing.assert_allclose(r_t.numpy(), (p**2).sum(-1).numpy(), rtol=2e-6)


def test_top_k_selects_only_the_k_largest_probabilities() -> None:
    logits = torch.randn(6, 30, generator=torch.Generator().manual_seed(8))
    proposals = torch.zeros(6, dtype=torch.long)
    _, r_t1 = row_scores(make_judge(top_k=1), logits, proposals)
    _, r_t5 = row_scores(make_judge(top_k=5), logits, proposals)
    p = torch.softmax(logits.double(), -1)
    np.testing.assert_allclose(r_t1.numpy(), (p.max(-1).values ** 2).numpy(), rtol=2e-6)
    np.testing.assert_allclose(r_t5.numpy(), (p.topk(5, -1).values ** 2).sum(-1).numpy(), rtol=2e-6)


def test_temperature_divides_the_teacher_logits() -> None:
    logits = torch.randn(8, 40, generator=torch.Generator().manual_seed(9)) * 3
    proposals = torch.randint(0, 40, (8,), generator=torch.Generator().manual_seed(10))
    r_s, r_t = row_scores(make_judge(temperature=2.0), logits, proposals)
    ref_s, ref_t = reference_scores(logits.numpy(), proposals.numpy(), temperature=2.0)
    np.testing.assert_allclose(r_s.numpy(), ref_s, rtol=2e-5)
    np.testing.assert_allclose(r_t.numpy(), ref_t, rtol=2e-5)


def test_bfloat16_logits_are_scored_in_float32() -> None:
    logits = (torch.randn(10, 64, generator=torch.Generator().manual_seed(11)) * 4).bfloat16()
    proposals = torch.randint(0, 64, (10,), generator=torch.Generator().manual_seed(12))
    r_s, r_t = row_scores(make_judge(), logits, proposals)
    ref_s, ref_t = reference_scores(logits.double().numpy(), proposals.numpy())
    assert r_s.dtype == torch.float32
    np.testing.assert_allclose(r_s.numpy(), ref_s, rtol=2e-5)
    np.testing.assert_allclose(r_t.numpy(), ref_t, rtol=2e-5)


def test_chunk_size_does_not_change_the_scores() -> None:
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(13))
    proposals = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(14))
    one = row_scores(make_judge(chunk_size=1), logits, proposals)
    many = row_scores(make_judge(chunk_size=1000), logits, proposals)
    assert one[0].shape == (3, 7)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def request_for(
    stream: Stream, logits: torch.Tensor, greedy: torch.Tensor, decision: torch.Tensor, **extra: object
) -> JudgeRequest:
    return JudgeRequest(
        stream=stream,
        input_ids=torch.zeros(decision.shape, dtype=torch.long),
        attention_mask=torch.ones(decision.shape, dtype=torch.long),
        points=DecisionPoints.from_mask(decision),
        teacher_logits=logits,
        student_greedy=greedy,
        **extra,
    )


@pytest.mark.parametrize("stream", list(Stream))
def test_score_reads_row_t_minus_1_and_greedy_token_at_t_only_at_decision_points(stream: Stream) -> None:
    batch, length, vocab = 3, 9, 37
    logits = torch.randn(batch, length, vocab + 3, generator=torch.Generator().manual_seed(15)) * 4
    greedy = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(16))
    decision = torch.zeros(batch, length, dtype=torch.bool)
    decision[0, 3:9] = True
    decision[1, 5:7] = True  # row 2 has no decision point at all
    greedy[~decision] = -100  # outside decision points the greedy tensor may hold anything
    scores = make_judge(vocab_size=vocab, chunk_size=3).score(request_for(stream, logits, greedy, decision))
    ref_s = np.zeros((batch, length))
    ref_t = np.zeros((batch, length))
    for b in range(batch):
        for t in range(length):
            if decision[b, t]:
                s, base = reference_scores(logits[b, t - 1 : t].numpy(), greedy[b, t : t + 1].numpy(), vocab)
                ref_s[b, t], ref_t[b, t] = s[0], base[0]
    np.testing.assert_allclose(scores.r_s.numpy(), ref_s, rtol=2e-5)
    np.testing.assert_allclose(scores.r_t.numpy(), ref_t, rtol=2e-5)
    assert (scores.r_s[~decision] == 0).all() and (scores.r_t[~decision] == 0).all()


@pytest.mark.slow
def test_score_on_tiny_hf_teacher_with_padded_head_and_real_student_greedy() -> None:
    from transformers import Qwen2ForCausalLM

    from tests.tiny_models import tiny_qwen2_config

    real_vocab = 29

    def tiny(vocab_rows: int, seed: int) -> Qwen2ForCausalLM:
        torch.manual_seed(seed)
        config = tiny_qwen2_config(vocab_rows)
        return Qwen2ForCausalLM(config).eval()

    teacher, student = tiny(32, 0), tiny(real_vocab, 1)  # the teacher's lm_head is padded to 32 rows
    ids = torch.randint(0, real_vocab, (2, 12), generator=torch.Generator().manual_seed(17))
    decision = torch.zeros(2, 12, dtype=torch.bool)
    decision[:, 4:] = True  # a 4-token prompt, then the response
    with torch.no_grad():
        t_logits = teacher(input_ids=ids).logits
        s_logits = student(input_ids=ids).logits
    greedy = torch.zeros_like(ids)
    greedy[:, 1:] = s_logits[:, :-1, :real_vocab].argmax(-1)  # the student's proposal for point t, stored at t
    scores = make_judge(vocab_size=real_vocab).score(
        request_for(Stream.TEACHER_PREFIX, t_logits, greedy, decision, proposals=greedy)
    )
    for b in range(2):
        for t in range(4, 12):
            p = torch.softmax(t_logits[b, t - 1, :real_vocab].double(), -1)
            assert scores.r_s[b, t].item() == pytest.approx(p[greedy[b, t]].item(), rel=2e-5)
            assert scores.r_t[b, t].item() == pytest.approx((p**2).sum().item(), rel=2e-5)
    assert (scores.r_s[:, :4] == 0).all()


def test_missing_teacher_logits_or_greedy_tokens_are_refused() -> None:
    decision = torch.tensor([[False, True]])
    judge = make_judge()
    with pytest.raises(VcrdError, match=r"needs the teacher logits"):
        judge.score(request_for(Stream.STUDENT_PREFIX, None, torch.zeros(1, 2, dtype=torch.long), decision))  # type: ignore[arg-type]
    with pytest.raises(VcrdError, match=r"needs the student's greedy tokens"):
        judge.score(request_for(Stream.STUDENT_PREFIX, torch.zeros(1, 2, 5), None, decision))  # type: ignore[arg-type]


def test_greedy_token_outside_the_real_vocabulary_is_refused() -> None:
    logits = torch.zeros(1, 3, 12)
    greedy = torch.tensor([[0, 10, 2]])
    decision = torch.tensor([[False, True, True]])
    with pytest.raises(VcrdError, match=r"token id 10 .* real vocabulary \[0, 10\)"):
        make_judge(vocab_size=10).score(request_for(Stream.TEACHER_PREFIX, logits, greedy, decision))


def test_logits_narrower_than_the_tokenizer_vocabulary_are_refused() -> None:
    with pytest.raises(VcrdError, match=r"tokenizer has 20 ids but the teacher logits have 16 columns"):
        row_scores(make_judge(vocab_size=20), torch.zeros(2, 16), torch.zeros(2, dtype=torch.long))


def test_registered_under_its_name_with_validated_params() -> None:
    assert "teacher_likelihood" in vcrd_core.available("judges")
    judge = vcrd_core.create("judges", "teacher_likelihood", {"top_k": 64})
    assert isinstance(judge, TeacherLikelihoodJudge) and judge.params.top_k == 64
    assert judge.needs == {Need.TEACHER_LOGITS, Need.STUDENT_GREEDY}
    with pytest.raises(ConfigError, match=r"top_k"):
        vcrd_core.create("judges", "teacher_likelihood", {"top_k": 0})
    with pytest.raises(ConfigError, match=r"temperature"):
        vcrd_core.create("judges", "teacher_likelihood", {"temperature": 0.0})
    with pytest.raises(ConfigError, match=r"unknown key 'topk'"):
        vcrd_core.create("judges", "teacher_likelihood", {"topk": 5})
