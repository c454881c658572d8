"""``RowJudge``: a judge that reads one logits row per decision point. Its derived ``score`` against a float64
reference, and ``RowWeights`` (the fused-linear pass's scoring) against ``score_batch`` on the same logits."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import vcrd_core
from vcrd_core import DecisionPoints, JudgeContext, JudgeRequest, RowJudge, Stream, VcrdError
from vcrd_core.judging.scoring import RowWeights, score_batch
from vcrd_core.losses.fused_linear import RowChunk

B, L, V, V_REAL = 3, 8, 30, 26


class MaxProb(RowJudge):
    """A third-party row judge: r_s = p(greedy token), r_t = max p (the teacher's own mode)."""

    name: ClassVar[str] = "max_prob"

    def score_rows(
        self, teacher_logits: torch.Tensor, student_greedy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(teacher_logits, -1)
        return p.gather(1, student_greedy[:, None]).squeeze(1), p.max(-1).values


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, DecisionPoints, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(B, L, V, generator=g) * 3
    student = torch.randn(B, L, V, generator=g) * 3
    attention = torch.ones(B, L, dtype=torch.long)
    response = torch.zeros(B, L, dtype=torch.long)
    response[:, 3:] = 1
    response[2] = 0  # a sequence without decision points
    ids = torch.randint(0, V_REAL, (B, L), generator=g)
    return teacher, student, DecisionPoints.from_masks(attention, response), ids


def loaded(judge: RowJudge) -> RowJudge:
    judge.load(JudgeContext(vocab_size=V_REAL))
    return judge


def test_the_derived_score_matches_a_float64_reference_at_every_decision_point() -> None:
    teacher, student, points, ids = batch()
    greedy = student[..., :V_REAL].argmax(-1)
    judge = loaded(MaxProb())
    judge.row_block = 2  # type: ignore[misc]  # several blocks
    scores = judge.score(
        JudgeRequest(
            Stream.TEACHER_PREFIX, ids, torch.ones_like(ids), points, student_greedy=greedy, teacher_logits=teacher
        )
    )
    p = torch.softmax(teacher[..., :V_REAL].double(), -1)
    for b, t in zip(points.batch.tolist(), points.position.tolist(), strict=True):
        row = p[b, t - 1]
        assert scores.r_s[b, t].item() == pytest.approx(row[greedy[b, t]].item(), rel=1e-5)
        assert scores.r_t[b, t].item() == pytest.approx(row.max().item(), rel=1e-5)
    assert torch.all(scores.r_s[~points.mask] == 0) and torch.all(scores.r_t[~points.mask] == 0)


@pytest.mark.parametrize("stream", [Stream.TEACHER_PREFIX, Stream.STUDENT_PREFIX])
@pytest.mark.parametrize("name", ["teacher_likelihood", "max_prob"])
def test_row_weights_equal_score_batch_on_the_same_logits(stream: Stream, name: str) -> None:
    teacher, student, points, ids = batch(1)
    judge = loaded(MaxProb() if name == "max_prob" else vcrd_core.create(vcrd_core.JUDGES, name, {}))  # type: ignore[arg-type]
    rule = vcrd_core.create(vcrd_core.WEIGHTING, "log_clamp", {})
    expected = score_batch(stream, ids, torch.ones_like(ids), points, teacher, student, judge, rule, vocab_size=V_REAL)
    row = RowWeights(judge, rule, stream)
    rows = points.rows
    t_rows, s_rows = teacher.reshape(-1, V)[rows, :V_REAL], student.reshape(-1, V)[rows, :V_REAL]
    got = torch.cat(
        [
            row(
                RowChunk(
                    a,
                    min(a + 4, len(rows)),
                    rows[a : a + 4],
                    student_greedy=s_rows[a : a + 4].argmax(-1),
                    teacher_logits=t_rows[a : a + 4],
                )
            )
            for a in range(0, len(rows), 4)
        ]
    )
    row.finish()
    torch.testing.assert_close(got, points.gather(expected.weights), rtol=1e-6, atol=0)
    assert row.nonfinite == 0 and (got != 1).any()


def test_row_weights_zero_unscorable_rows_and_count_them() -> None:
    teacher, _, points, _ = batch(2)
    judge, rule = loaded(MaxProb()), vcrd_core.create(vcrd_core.WEIGHTING, "ratio", {})
    rows = teacher.reshape(-1, V)[points.rows[:5], :V_REAL].clone()
    rows[1, 3], rows[3, 0] = float("nan"), float("inf")
    row = RowWeights(judge, rule, "teacher_prefix")
    w = row(RowChunk(0, 5, points.rows[:5], student_greedy=torch.zeros(5, dtype=torch.long), teacher_logits=rows))
    row.finish()
    assert row.nonfinite == 2 and w[1] == 0 and w[3] == 0 and torch.isfinite(w).all() and (w[[0, 2, 4]] > 0).all()


class Broken(RowJudge):
    name: ClassVar[str] = "broken"

    def score_rows(
        self, teacher_logits: torch.Tensor, student_greedy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = student_greedy.shape[0]
        return torch.full((n,), 1.5), torch.full((n,), 0.5)


def test_row_weights_refuse_out_of_range_scores_and_non_row_judges_in_one_line() -> None:
    teacher, _, points, _ = batch(3)
    rule = vcrd_core.create(vcrd_core.WEIGHTING, "ratio", {})
    row = RowWeights(loaded(Broken()), rule, "student_prefix")
    chunk = RowChunk(
        0, 2, points.rows[:2], student_greedy=torch.zeros(2, dtype=torch.long), teacher_logits=teacher[0, :2]
    )
    w = row(chunk)  # nothing is read back per chunk: refused after the pass
    assert torch.all(w == 0)
    with pytest.raises(
        VcrdError, match=r"judge 'broken' \(student_prefix stream\): score_rows returned scores outside \[0, 1\] at 2"
    ):
        row.finish()
    with pytest.raises(VcrdError, match="judge 'oracle' is not a RowJudge"):
        RowWeights(vcrd_core.create(vcrd_core.JUDGES, "oracle", {}), rule, "teacher_prefix")
