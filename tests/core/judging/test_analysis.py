"""Validity statistics and ``vcrd analyze`` against a plain computation on synthetic score records."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests.conftest import run_vcrd
from vcrd_core import Stream, VcrdError
from vcrd_core.judging.analysis import (
    HISTOGRAM_FILE,
    STATS_FILE,
    plot_validity_histogram,
    validity_ratios,
    validity_stats,
)
from vcrd_core.judging.score_records import ScoreRecord, write_records

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_records(seed: int = 0, n_rollouts: int = 30, with_weights: bool = False) -> list[ScoreRecord]:
    """Scores with ties, zeros, ones and identical tokens, in both streams."""
    rng = random.Random(seed)
    records = []
    for i in range(n_rollouts):
        for stream in Stream:
            n = rng.randint(0, 12)
            r_s, r_t, same = [], [], []
            for _ in range(n):
                kind = rng.random()
                t = rng.choice([0.0, 1.0, rng.random(), rng.random()])
                s = t if kind < 0.15 else rng.choice([0.0, rng.random(), t * rng.uniform(0.9, 1.1)])
                r_t.append(t)
                r_s.append(min(1.0, s))
                same.append(kind < 0.1)
            weights = tuple(rng.uniform(0, 3) for _ in range(n)) if with_weights else None
            records.append(ScoreRecord(f"r{i}", stream, tuple(r_s), tuple(r_t), tuple(same), weights))
    return records


def plain_quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method), written out."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def plain_stats(records: list[ScoreRecord], tol: float) -> dict[str, float]:
    ratios, ge, r_s_all, r_t_all = [], [], [], []
    for record in records:
        for s, t, same in zip(record.r_s, record.r_t, record.same_token, strict=True):
            ratios.append(1.0 if same else s / (t + 1e-8))
            ge.append(same or s >= t)
            r_s_all.append(s)
            r_t_all.append(t)
    n = len(ratios)
    return {
        "n": n,
        "attenuation": sum(r < 1 - tol for r in ratios) / n,
        "parity": sum(abs(r - 1) <= tol for r in ratios) / n,
        "amplification": sum(r > 1 + tol for r in ratios) / n,
        "ge": sum(ge) / n,
        "mean_r_s": sum(r_s_all) / n,
        "mean_r_t": sum(r_t_all) / n,
        "median": plain_quantile(ratios, 0.5),
        "q05": plain_quantile(ratios, 0.05),
        "q95": plain_quantile(ratios, 0.95),
    }


def test_ratio_is_one_exactly_for_identical_tokens_and_uses_eps_otherwise() -> None:
    record = ScoreRecord(
        "x", Stream.TEACHER_PREFIX, (1e-9, 0.3, 0.0, 0.6), (1e-9, 0.6, 0.0, 0.0), (True, False, False, False)
    )
    ratio = validity_ratios(record)
    assert ratio[0] == 1.0
    assert ratio[1] == pytest.approx(0.3 / (0.6 + 1e-8), rel=1e-15)
    assert ratio[2] == 0.0
    assert ratio[3] == pytest.approx(0.6 / 1e-8, rel=1e-15)


@pytest.mark.parametrize("tol", [0.05, 0.2])
def test_stats_match_a_plain_computation_per_stream_and_pooled(tol: float) -> None:
    records = synthetic_records()
    stats = validity_stats(records, parity_tol=tol)
    assert list(stats.streams) == ["teacher_prefix", "student_prefix", "all"]
    for name, chosen in [
        ("teacher_prefix", [r for r in records if r.stream is Stream.TEACHER_PREFIX]),
        ("student_prefix", [r for r in records if r.stream is Stream.STUDENT_PREFIX]),
        ("all", records),
    ]:
        got, want = stats.streams[name], plain_stats(chosen, tol)
        assert got.n_records == len(chosen)
        assert got.n_points == want["n"]
        assert got.n_same_token == sum(sum(r.same_token) for r in chosen)
        assert got.share_attenuation == pytest.approx(want["attenuation"], abs=1e-12)
        assert got.share_parity == pytest.approx(want["parity"], abs=1e-12)
        assert got.share_amplification == pytest.approx(want["amplification"], abs=1e-12)
        assert got.share_student_at_least_teacher == pytest.approx(want["ge"], abs=1e-12)
        assert got.mean_r_s == pytest.approx(want["mean_r_s"], rel=1e-12)
        assert got.mean_r_t == pytest.approx(want["mean_r_t"], rel=1e-12)
        assert got.ratio_quantiles is not None
        assert got.ratio_quantiles["0.5"] == pytest.approx(want["median"], rel=1e-12)
        assert got.ratio_quantiles["0.05"] == pytest.approx(want["q05"], rel=1e-12, abs=1e-15)
        assert got.ratio_quantiles["0.95"] == pytest.approx(want["q95"], rel=1e-12)
        total = got.share_attenuation + got.share_parity + got.share_amplification
        assert total == pytest.approx(1.0, abs=1e-12)


def test_tied_scores_count_as_student_at_least_teacher_and_parity() -> None:
    # r_s = r_t for different tokens: r_s/(r_t+ε) is just below 1, but the paper's "equal or higher" holds.
    record = ScoreRecord("x", Stream.STUDENT_PREFIX, (0.9, 0.1, 0.9), (0.9, 0.9, 0.1), (False, False, False))
    st = validity_stats([record]).streams["student_prefix"]
    assert st.share_student_at_least_teacher == pytest.approx(2 / 3)
    assert (st.share_attenuation, st.share_parity, st.share_amplification) == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_recorded_weights_are_summarised_when_every_record_has_them() -> None:
    records = synthetic_records(seed=1, with_weights=True)
    st = validity_stats(records).streams["all"]
    weights = [w for r in records for w in (r.weights or ())]
    assert st.mean_weight == pytest.approx(sum(weights) / len(weights), rel=1e-12)
    assert st.weight_quantiles is not None
    assert st.weight_quantiles["0.5"] == pytest.approx(plain_quantile(weights, 0.5), rel=1e-12)
    assert validity_stats(synthetic_records(seed=1)).streams["all"].weight_quantiles is None


def test_stream_without_decision_points_has_no_shares() -> None:
    stats = validity_stats([ScoreRecord("x", Stream.TEACHER_PREFIX, (), (), ())])
    st = stats.streams["teacher_prefix"]
    assert st.n_records == 1 and st.n_points == 0
    assert st.share_parity is None and st.ratio_quantiles is None
    assert "student_prefix" not in stats.streams


@pytest.mark.parametrize("tol", [0.0, 0.6, 0.95, 1.0, -0.1])
def test_parity_tolerance_outside_its_range_is_refused(tol: float) -> None:
    with pytest.raises(VcrdError, match=r"parity tolerance must lie in \(0, 0.5\]"):
        validity_stats(synthetic_records(n_rollouts=2), parity_tol=tol)


def test_no_records_is_refused() -> None:
    with pytest.raises(VcrdError, match="no score records"):
        validity_stats([])


def test_histogram_is_a_valid_png_with_one_panel_per_stream(tmp_path: Path) -> None:
    from PIL import Image

    both = plot_validity_histogram(synthetic_records(), tmp_path / "both.png")
    one = plot_validity_histogram(
        [r for r in synthetic_records() if r.stream is Stream.TEACHER_PREFIX], tmp_path / "one.png"
    )
    for path in (both, one):
        assert path.stat().st_size > 0
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(both) as a, Image.open(one) as b:
        a.verify()
        assert a.width > b.width  # two panels are wider than one


def test_histogram_handles_zero_and_huge_ratios(tmp_path: Path) -> None:
    record = ScoreRecord("x", Stream.TEACHER_PREFIX, (0.0, 1.0, 0.5), (0.5, 0.0, 0.5), (False, False, True))
    path = plot_validity_histogram([record], tmp_path / "h.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_cli_writes_stats_json_and_histogram(tmp_path: Path) -> None:
    records = synthetic_records(seed=2)
    scores = tmp_path / "scores.jsonl"
    write_records(scores, records)
    out = tmp_path / "report"
    result = run_vcrd("analyze", str(scores), "--out", str(out), "--parity-tol", "0.1", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    saved = json.loads((out / STATS_FILE).read_text())
    assert printed == saved
    expected = validity_stats(records, parity_tol=0.1).to_dict()
    assert saved["parity_tol"] == 0.1
    assert saved["streams"] == json.loads(json.dumps(expected["streams"]))
    assert (out / HISTOGRAM_FILE).read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_cli_table_and_default_output_next_to_the_input(tmp_path: Path) -> None:
    scores = tmp_path / "scores.jsonl"
    write_records(scores, synthetic_records(seed=3))
    result = run_vcrd("analyze", str(scores))
    assert result.returncode == 0, result.stderr
    for label in ("attenuation", "parity", "amplification", "r_s ≥ r_t", "teacher_prefix", "student_prefix"):
        assert label in result.stdout
    assert (tmp_path / STATS_FILE).is_file() and (tmp_path / HISTOGRAM_FILE).is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, (), r"^error: score records file not found: .*missing\.jsonl$"),
        (
            '{"id": "a", "stream": "teacher_prefix", "r_s": [], "r_t": [], "same_token": []}\n{oops\n',
            (),
            r"^error: .*scores\.jsonl:2: invalid JSON",
        ),
        ("\n", (), r"^error: .*no score records in the file"),
        (
            '{"id": "a", "stream": "teacher_prefix", "r_s": [], "r_t": [], "same_token": []}\n',
            ("--parity-tol", "0"),
            r"^error: parity tolerance",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, content: str | None, args: tuple[str, ...], message: str
) -> None:
    scores = tmp_path / ("missing.jsonl" if content is None else "scores.jsonl")
    if content is not None:
        scores.write_text(content)
    result = run_vcrd("analyze", str(scores), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / STATS_FILE).exists()
