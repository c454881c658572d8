"""The judge interface: role mapping per stream and the core's refusals before scores become weights."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import vcrd_core
from tests.fakes import NoParams
from vcrd_core import DecisionPoints
from vcrd_core.judging.judge import JudgeRequest, Stream, checked_scores


class TokenIdJudge(vcrd_core.TokenJudge):
    """Scores a token by its id / 10 (so roles are easy to read off)."""

    name: ClassVar[str] = "test_token_id"
    Params = NoParams

    def score_positions(self, input_ids, attention_mask, alt_ids, score_mask=None):  # type: ignore[override]
        mask = score_mask.bool() if score_mask is not None else attention_mask.bool()
        zero = torch.zeros_like(input_ids, dtype=torch.float32)
        return torch.where(mask, input_ids / 10, zero), torch.where(mask, alt_ids / 10, zero)


def request(stream: Stream, attention: list[int]) -> JudgeRequest:
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    return JudgeRequest(
        stream=stream,
        input_ids=ids,
        attention_mask=torch.tensor([attention]),
        points=DecisionPoints.from_mask(torch.tensor([[False, False, False, True, True]])),
        proposals=torch.tensor([[0, 0, 0, 9, 8]]),
    )


def test_roles_follow_the_stream() -> None:
    judge = TokenIdJudge()
    teacher = checked_scores(judge, request(Stream.TEACHER_PREFIX, [1, 1, 1, 1, 1]))
    student = checked_scores(judge, request(Stream.STUDENT_PREFIX, [1, 1, 1, 1, 1]))
    # teacher prefix: the rollout token is the teacher's, the proposal the student's
    assert teacher.r_t[0, 3:].tolist() == pytest.approx([0.4, 0.5])
    assert teacher.r_s[0, 3:].tolist() == pytest.approx([0.9, 0.8])
    # student prefix: the other way round
    assert student.r_s[0, 3:].tolist() == pytest.approx([0.4, 0.5])
    assert student.r_t[0, 3:].tolist() == pytest.approx([0.9, 0.8])


def test_scores_for_a_decision_point_after_padding_are_refused() -> None:
    with pytest.raises(vcrd_core.VcrdError, match=r"judge 'test_token_id': decision point \(row 0, position 3\)"):
        checked_scores(TokenIdJudge(), request(Stream.TEACHER_PREFIX, [1, 1, 0, 1, 1]))


def test_scores_outside_the_unit_interval_are_refused() -> None:
    bad = request(Stream.TEACHER_PREFIX, [1, 1, 1, 1, 1])
    bad.proposals = torch.tensor([[0, 0, 0, 12, 8]])  # 1.2
    with pytest.raises(vcrd_core.VcrdError, match=r"r_s scores outside \[0, 1\] at 1 decision points"):
        checked_scores(TokenIdJudge(), bad)
