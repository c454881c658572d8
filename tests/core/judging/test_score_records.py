"""The on-disk format of scored rollouts: round trips, atomic writes and one-line errors naming file:line."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from vcrd_core import Stream, VcrdError
from vcrd_core.decision_points import DecisionPoints
from vcrd_core.judging.score_records import (
    ScoreRecord,
    read_records,
    record_error,
    records_from_batch,
    write_records,
)


def good(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "id": "p0/s0",
        "stream": "teacher_prefix",
        "r_s": [0.25, 1.0, 0.0],
        "r_t": [0.5, 0.75, 0.0],
        "same_token": [False, False, True],
    }
    record.update(overrides)
    return record


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_records_round_trip_through_a_file(tmp_path: Path) -> None:
    records = [
        ScoreRecord("a", Stream.TEACHER_PREFIX, (0.1, 0.2), (0.3, 1.0), (False, True)),
        ScoreRecord("a", Stream.STUDENT_PREFIX, (1 / 3,), (0.0,), (False,), weights=(33333333.3,)),
        ScoreRecord("empty", "student_prefix", (), (), ()),
    ]
    path = tmp_path / "scores.jsonl"
    assert write_records(path, records) == 3
    back = read_records(path)
    assert back == records
    assert back[2].stream is Stream.STUDENT_PREFIX
    lines = path.read_text().splitlines()
    assert json.loads(lines[1]) == {
        "id": "a",
        "stream": "student_prefix",
        "r_s": [1 / 3],
        "r_t": [0.0],
        "same_token": [False],
        "weights": [33333333.3],
    }
    assert "weights" not in json.loads(lines[0])


def test_write_is_atomic_and_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    write_records(path, [ScoreRecord("old", Stream.TEACHER_PREFIX, (0.5,), (0.5,), (True,))])
    before = path.read_bytes()

    def failing() -> Iterator[ScoreRecord]:
        yield ScoreRecord("new", Stream.TEACHER_PREFIX, (0.1,), (0.2,), (False,))
        raise RuntimeError("scoring crashed midway")

    with pytest.raises(RuntimeError, match="midway"):
        write_records(path, failing())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl"]  # no temporary file left behind


def test_write_into_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VcrdError, match=r"directory .*nope does not exist"):
        write_records(tmp_path / "nope" / "scores.jsonl", [])


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", json.dumps(good()), "", "   ", json.dumps(good(id="p1")))
    assert [r.id for r in read_records(path)] == ["p0/s0", "p1"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "stream": ', r"invalid JSON \(EOF while parsing a value at column 22\)$"),
        ("[1, 2]", r"expected a mapping \(got list\)$"),
        (json.dumps({k: v for k, v in good().items() if k != "r_t"}), r"r_t: missing required field 'r_t'$"),
        (
            json.dumps(good(extra=1)),
            r"extra: unknown key 'extra'. Valid keys: id, stream, r_s, r_t, same_token, weights.$",
        ),
        (json.dumps(good(id=7)), r"id: Input should be a valid string \(got 7\)$"),
        (
            json.dumps(good(stream="teacher")),
            r"stream: Input should be 'teacher_prefix' or 'student_prefix' \(got 'teacher'\)$",
        ),
        (json.dumps(good(r_t=[0.5, 0.5])), r"lengths differ \(r_s=3, r_t=2, same_token=3\)$"),
        (json.dumps(good(weights=[1.0])), r"lengths differ \(.*weights=1\)$"),
        (json.dumps(good(r_s=[0.5, 1.5, 0.0])), r"r_s.1: Input should be less than or equal to 1 \(got 1.5\)$"),
        (json.dumps(good(r_t=[0.5, -0.25, 0.0])), r"r_t.1: Input should be greater than or equal to 0 \(got -0.25\)$"),
        (
            '{"id": "x", "stream": "student_prefix", "r_s": [NaN], "r_t": [0.5], "same_token": [false]}',
            r"r_s.0: Input should be a finite number \(got nan\)$",
        ),
        (json.dumps(good(r_s=[0.5, True, 0.0])), r"r_s.1: Input should be a valid number \(got True\)$"),
        (json.dumps(good(r_s=["0.5", 1, 0])), r"r_s.0: Input should be a valid number \(got '0.5'\)$"),
        (json.dumps(good(r_s="0.5")), r"r_s: Input should be a valid array \(got '0.5'\)$"),
        (
            json.dumps(good(same_token=[0, 1, 0])),
            r"same_token.0: Input should be a valid boolean \(got 0\) \(and 2 more",
        ),
        (json.dumps(good(same_token=["true", True, False])), r"same_token.0: Input should be a valid boolean"),
        (
            json.dumps(good(weights=[1.0, -1.0, 0.0])),
            r"weights.1: Input should be greater than or equal to 0 \(got -1.0\)$",
        ),
        (json.dumps(good(weights=[1.0, 1e400, 0.0])), r"weights.1: Input should be a finite number \(got inf\)$"),
    ],
)
def test_bad_line_is_reported_with_file_and_line_number(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "scores.jsonl", json.dumps(good(id="fine")), line)
    with pytest.raises(VcrdError, match=message) as info:
        read_records(path)
    text = str(info.value)
    assert text.startswith(f"{path}:2: ")
    assert "\n" not in text


def test_duplicate_record_names_the_first_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "s.jsonl", json.dumps(good()), json.dumps(good(stream="student_prefix")), json.dumps(good())
    )
    with pytest.raises(
        VcrdError, match=r"s\.jsonl:3: duplicate record for id 'p0/s0', stream teacher_prefix \(first at line 1\)"
    ):
        read_records(path)


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(VcrdError, match=r"score records file not found: .*missing\.jsonl"):
        read_records(tmp_path / "missing.jsonl")


def test_record_construction_refuses_invalid_scores() -> None:
    with pytest.raises(
        VcrdError, match=r"^score record 'x' \(teacher_prefix\): r_s.0: Input should be a finite number"
    ):
        ScoreRecord("x", Stream.TEACHER_PREFIX, (math.nan,), (0.5,), (False,))
    with pytest.raises(VcrdError, match=r"\(both\): stream: Input should be 'teacher_prefix' or 'student_prefix'"):
        ScoreRecord("x", "both", (0.5,), (0.5,), (False,))  # type: ignore[arg-type]
    with pytest.raises(VcrdError, match=r"weights.0: Input should be a finite number \(got inf\)"):
        ScoreRecord("x", Stream.TEACHER_PREFIX, (0.5,), (0.5,), (False,), weights=(math.inf,))
    with pytest.raises(VcrdError, match=r"lengths differ \(r_s=1, r_t=2, same_token=1\)"):
        ScoreRecord(id="x", stream="teacher_prefix", r_s=[0.5], r_t=[0.5, 0.5], same_token=[False])


def test_record_validates_a_row_of_another_store_and_is_frozen() -> None:
    """A Parquet row (lists, Python scalars) validates as it is; a record cannot be changed afterwards."""
    row = {"id": "p", "stream": "student_prefix", "r_s": [0.5], "r_t": [1], "same_token": [True], "weights": None}
    record = ScoreRecord.model_validate(row)
    assert record == ScoreRecord("p", Stream.STUDENT_PREFIX, (0.5,), (1.0,), (True,))
    assert record.r_t == (1.0,) and record.n_points == 1
    with pytest.raises(ValidationError):
        record.r_s = (0.0,)  # type: ignore[misc]
    with pytest.raises(ValidationError) as info:
        ScoreRecord.model_validate({**row, "same_token": [1]})
    assert record_error(info.value) == "same_token.0: Input should be a valid boolean (got 1)"


def test_records_from_batch_keeps_decision_points_in_order() -> None:
    decision = torch.tensor([[False, True, True, False], [False, False, False, False], [False, False, True, True]])
    r_s = torch.tensor([[0.0, 0.1, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.25]])
    r_t = torch.tensor([[0.0, 0.3, 0.4, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.75]])
    same = torch.tensor([[False, False, True, False], [False] * 4, [False, False, False, True]])
    weights = torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.0] * 4, [0.0, 0.0, 2.0, 1.0]])
    points = DecisionPoints.from_mask(decision)
    records = records_from_batch(["a", "b", "c"], "student_prefix", r_s, r_t, points, same, weights)
    assert [r.id for r in records] == ["a", "b", "c"]
    assert all(r.stream is Stream.STUDENT_PREFIX for r in records)
    assert records[0].r_s == pytest.approx((0.1, 0.2)) and records[0].r_t == pytest.approx((0.3, 0.4))
    assert records[0].same_token == (False, True) and records[0].weights == (0.5, 1.0)
    assert records[1].n_points == 0
    assert records[2].r_s == (0.5, 0.25) and records[2].same_token == (False, True)


def test_records_from_batch_refuses_mismatched_shapes() -> None:
    decision = torch.tensor([[False, True, True]] * 2)
    points = DecisionPoints.from_mask(decision)
    with pytest.raises(VcrdError, match=r"r_t has shape \(2, 2\), expected \(2, 3\)"):
        records_from_batch(["a", "b"], Stream.TEACHER_PREFIX, torch.zeros(2, 3), torch.zeros(2, 2), points, decision)
    with pytest.raises(VcrdError, match=r"1 ids for a batch of 2 rows"):
        records_from_batch(["a"], Stream.TEACHER_PREFIX, torch.zeros(2, 3), torch.zeros(2, 3), points, decision)


def test_records_from_batch_refuses_scores_a_judge_must_not_give() -> None:
    points = DecisionPoints.from_mask(torch.tensor([[False, True, True]]))
    r_s = torch.tensor([[0.0, 0.5, float("nan")]])
    with pytest.raises(VcrdError, match=r"^score record 'a' \(teacher_prefix\): r_s.1: Input should be a finite"):
        records_from_batch(["a"], "teacher_prefix", r_s, torch.zeros(1, 3), points, torch.zeros(1, 3))
