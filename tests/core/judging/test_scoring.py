"""Proposals, scores and weights of one batch (vcrd_core.judging.scoring), against plain references."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from tests.fakes import NoParams, PlainRatio
from vcrd_core import DecisionPoints, Judge, JudgeRequest, JudgeScores, Need, Stream, TokenJudge, VcrdError
from vcrd_core.judging.scoring import propose, propose_at, score_batch


class IdJudge(TokenJudge):
    """r(c, a) = a / 100: a token judge whose scores reveal which token it saw."""

    name: ClassVar[str] = "test_id_judge"
    Params = NoParams

    def score_positions(self, input_ids, attention_mask, alt_ids, score_mask=None):  # type: ignore[override]
        mask = score_mask if score_mask is not None else attention_mask.bool()
        zero = torch.zeros(input_ids.shape)
        return torch.where(mask, input_ids / 100, zero), torch.where(mask, alt_ids / 100, zero)


class Constant(PlainRatio):
    name: ClassVar[str] = "test_constant"

    def uses_scores(self) -> bool:
        return False

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return torch.full_like(r_student, 2.0)


def batch(vocab: int = 12, padded: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    response = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
    ids = torch.randint(0, vocab, attention.shape, generator=g)
    points = DecisionPoints.from_masks(attention, response)
    teacher = torch.randn(2, 6, padded, generator=g)
    student = torch.randn(2, 6, padded, generator=g)
    teacher[..., vocab:] = student[..., vocab:] = 50.0  # padded lm_head columns: never proposed
    return ids, attention, points, teacher, student


def test_greedy_proposals_are_the_argmax_over_real_ids_at_row_t_minus_1() -> None:
    _ids, _attention, points, _teacher, student = batch()
    got = propose_at(points, student, "greedy", vocab_size=12)
    for b, t in zip(points.batch.tolist(), points.position.tolist(), strict=True):
        assert got[b, t] == int(student[b, t - 1, :12].argmax())
    assert (got[~points.mask] == 0).all()


def test_sampled_proposals_follow_the_tempered_distribution_and_are_seeded() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 9.0]]).expand(40000, 5)
    draws = propose(logits, "sample", vocab_size=4, temperature=2.0, generator=torch.Generator().manual_seed(1))
    again = propose(logits, "sample", vocab_size=4, temperature=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)
    assert int(draws.max()) < 4  # the padded column (logit 9) is never drawn
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=torch.float64) / 2.0, dim=0)
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def test_top_p_keeps_the_smallest_nucleus_reaching_the_mass() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    logits = probs.log().float().expand(20000, 4)
    draws = propose(logits, "sample", top_p=0.8, generator=torch.Generator().manual_seed(2))
    assert set(draws.unique().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8: ids 2 and 3 are cut
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    torch.testing.assert_close(freq[:2], torch.tensor([0.5 / 0.8, 0.3 / 0.8], dtype=torch.float64), atol=0.015, rtol=0)
    tiny = propose(logits[:5], "sample", top_p=0.1, generator=torch.Generator().manual_seed(2))
    assert tiny.tolist() == [0] * 5  # the most likely id always stays


@pytest.mark.parametrize("stream", list(Stream))
def test_roles_proposals_same_token_and_weights_per_stream(stream: Stream) -> None:
    ids, attention, points, teacher, student = batch()
    other = student if stream is Stream.TEACHER_PREFIX else teacher
    expected_proposals = propose_at(points, other, "greedy", vocab_size=12)
    ids = ids.clone()
    ids[0, 3] = expected_proposals[0, 3]  # one point where both proposals are the same token
    out = score_batch(
        stream, ids, attention, points, teacher, student, IdJudge(), PlainRatio(), proposal="greedy", vocab_size=12
    )
    assert torch.equal(out.proposals, expected_proposals)
    assert out.same_token.tolist() == (points.mask & (ids == expected_proposals)).tolist()
    assert bool(out.same_token[0, 3])
    rollout, proposed = ids.double() / 100, expected_proposals.double() / 100
    if stream is Stream.TEACHER_PREFIX:  # the rollout token is the teacher's, the proposal the student's
        r_s, r_t = proposed, rollout
    else:
        r_s, r_t = rollout, proposed
    m = points.mask
    torch.testing.assert_close(out.r_s[m].double(), r_s[m], rtol=0, atol=1e-7)
    torch.testing.assert_close(out.r_t[m].double(), r_t[m], rtol=0, atol=1e-7)
    # PlainRatio states no parity weight: its own formula everywhere, also at the same-token point
    torch.testing.assert_close(out.weights[m].double(), r_s[m] / (r_t[m] + 1e-8), rtol=1e-5, atol=0)
    assert (out.weights[~m] == 0).all()


def test_sampled_proposals_are_reproducible_with_the_same_generator() -> None:
    ids, attention, points, teacher, student = batch()

    def run() -> torch.Tensor:
        g = torch.Generator().manual_seed(7)
        out = score_batch(Stream.TEACHER_PREFIX, ids, attention, points, teacher, student, IdJudge(), PlainRatio(),
                          vocab_size=12, temperature=1.0, generator=g)  # fmt: skip
        return out.proposals

    assert torch.equal(run(), run())
    assert int(run().max()) < 12


def test_a_rule_without_scores_needs_no_judge_and_proposes_nothing() -> None:
    ids, attention, points, _teacher, _student = batch()
    out = score_batch(Stream.STUDENT_PREFIX, ids, attention, points, None, None, None, Constant())
    assert out.proposals is None and out.r_s is None
    assert out.weights.tolist() == (points.mask.float() * 2).tolist()


class LogitsJudge(Judge):
    """Reads only the teacher logits and the student's greedy tokens (like teacher_likelihood)."""

    name: ClassVar[str] = "test_logits_judge"
    Params = NoParams
    needs: ClassVar[frozenset[Need]] = frozenset({Need.TEACHER_LOGITS, Need.STUDENT_GREEDY})
    parity_on_same_token: ClassVar[bool] = False

    def score(self, request: JudgeRequest) -> JudgeScores:
        p = torch.softmax(request.points.logits_at(request.teacher_logits)[:, :12], dim=-1)
        greedy = request.points.gather(request.student_greedy)
        r_s = p.gather(1, greedy[:, None]).squeeze(1)
        return JudgeScores(r_s=request.points.scatter(r_s), r_t=request.points.scatter(p.max(-1).values))


def test_a_judge_reading_logits_gets_the_student_greedy_tokens_and_no_proposals() -> None:
    ids, attention, points, teacher, student = batch()
    out = score_batch(Stream.STUDENT_PREFIX, ids, attention, points, teacher, student, LogitsJudge(), PlainRatio(),
                      vocab_size=12)  # fmt: skip
    assert out.proposals is None and out.same_token is None
    assert torch.equal(out.student_greedy, propose_at(points, student, "greedy", vocab_size=12))
    for i, (b, t) in enumerate(zip(points.batch.tolist(), points.position.tolist(), strict=True)):
        p = torch.softmax(teacher[b, t - 1, :12].double(), dim=0)
        assert out.r_s[b, t].item() == pytest.approx(p[out.student_greedy[b, t]].item(), rel=1e-5)
        assert out.weights[b, t].item() == pytest.approx(
            p[out.student_greedy[b, t]].item() / (p.max().item() + 1e-8), rel=1e-5
        )
        assert i < points.num_points


def test_missing_inputs_are_one_line_errors() -> None:
    ids, attention, points, teacher, student = batch()
    with pytest.raises(VcrdError, match="reads judge scores, but no judge was given"):
        score_batch(Stream.TEACHER_PREFIX, ids, attention, points, teacher, student, None, PlainRatio())
    with pytest.raises(VcrdError, match="scores proposals, so the student logits are needed"):
        score_batch(Stream.TEACHER_PREFIX, ids, attention, points, teacher, None, IdJudge(), PlainRatio())
    with pytest.raises(VcrdError, match="unknown mode 'beam'"):
        propose(teacher[0], "beam")  # type: ignore[arg-type]
    with pytest.raises(VcrdError, match="the tokenizer has 20 ids but the logits have 16 columns"):
        propose(teacher[0], "greedy", vocab_size=20)
