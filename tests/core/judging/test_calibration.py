"""Calibration metrics of judges against Monte-Carlo labels, checked against plain float64 loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vcrd_core import VcrdError
from vcrd_core.judging.calibration import (
    DEFAULT_BINS,
    ReliabilityBin,
    apply_temperature,
    brier_score,
    calibration_bins,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_to_logits,
    plot_reliability,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- plain references ---------------------------------------------------------------------------------------


def plain_brier(p: list[float], y: list[float]) -> float:
    return sum((a - b) ** 2 for a, b in zip(p, y, strict=True)) / len(p)


def plain_bin_of(value: float, bins: int) -> int:
    """Bin ``b`` is ``[b/B, (b+1)/B)``, the last one ``[.., 1]``, found by comparing with the edges."""
    for b in range(bins - 1):
        if b / bins <= value < (b + 1) / bins:
            return b
    return bins - 1


def plain_bins(p: list[float], y: list[float], bins: int) -> list[tuple[int, float | None, float | None]]:
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, value in enumerate(p):
        members[plain_bin_of(value, bins)].append(i)
    out = []
    for idx in members:
        if idx:
            out.append((len(idx), sum(p[i] for i in idx) / len(idx), sum(y[i] for i in idx) / len(idx)))
        else:
            out.append((0, None, None))
    return out


def plain_ece(p: list[float], y: list[float], bins: int) -> float:
    total = 0.0
    for count, mean_p, mean_y in plain_bins(p, y, bins):
        if count:
            total += count / len(p) * abs(mean_p - mean_y)
    return total


def plain_bce(q: list[float], y: list[float]) -> float:
    return -sum(b * math.log(a) + (1 - b) * math.log(1 - a) for a, b in zip(q, y, strict=True)) / len(q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def random_case(seed: int, n: int = 500) -> tuple[list[float], list[float]]:
    """Scores with exact 0, 1 and bin edges mixed in; soft labels as shares of K = 8 completions."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 1.0, n)
    p[:30] = rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], 30)
    y = rng.binomial(8, p) / 8.0
    return p.tolist(), y.tolist()


# --- Brier, bins, ECE ---------------------------------------------------------------------------------------


def test_small_case_by_hand() -> None:
    p, y = [0.05, 0.15, 0.95, 1.0], [0.0, 1.0, 1.0, 1.0]
    assert brier_score(p, y) == pytest.approx((0.0025 + 0.7225 + 0.0025 + 0.0) / 4, rel=1e-14)
    rel = calibration_bins(p, y, bins=10)
    assert len(rel) == 10
    assert [b.count for b in rel] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert rel[0] == ReliabilityBin(0.0, 0.1, 1, 0.05, 0.0)
    assert rel[1] == ReliabilityBin(0.1, 0.2, 1, 0.15, 1.0)
    assert rel[2] == ReliabilityBin(0.2, 0.3, 0, None, None)
    assert rel[9].mean_prediction == pytest.approx(0.975, rel=1e-14)
    assert rel[9].mean_label == 1.0
    assert (rel[9].lower, rel[9].upper) == (0.9, 1.0)
    # (1 * 0.05 + 1 * 0.85 + 2 * 0.025) / 4
    assert expected_calibration_error(p, y, bins=10) == pytest.approx(0.2375, rel=1e-12)


def test_edges_go_to_the_upper_bin_and_one_to_the_last() -> None:
    p = [0.0, 0.1, 0.2, 0.5, 0.9, 1.0]
    counts = [b.count for b in calibration_bins(p, [0.5] * len(p), bins=10)]
    assert counts == [1, 1, 1, 0, 0, 1, 0, 0, 0, 2]
    counts4 = [b.count for b in calibration_bins([0.25, 0.5, 0.75, 1.0], [0.0] * 4, bins=4)]
    assert counts4 == [0, 1, 1, 2]
    # 0.29 * 100 is 28.999999999999996 in floating point: flooring p * B would put it one bin too low.
    rel = calibration_bins([0.29, 0.57], [1.0, 1.0], bins=100)
    assert rel[29].count == 1 and rel[28].count == 0
    assert rel[57].count == 1 and rel[56].count == 0


def test_one_bin_is_the_gap_between_the_means() -> None:
    p, y = [0.2, 0.9, 1.0], [0.0, 0.5, 1.0]
    assert expected_calibration_error(p, y, bins=1) == pytest.approx(abs(2.1 / 3 - 1.5 / 3), rel=1e-12)
    (only,) = calibration_bins(p, y, bins=1)
    assert (only.lower, only.upper, only.count) == (0.0, 1.0, 3)


@pytest.mark.parametrize("bins", [1, 3, DEFAULT_BINS, 15, 100])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_a_plain_computation(bins: int, seed: int) -> None:
    p, y = random_case(seed)
    assert brier_score(p, y) == pytest.approx(plain_brier(p, y), rel=1e-12)
    got = calibration_bins(p, y, bins=bins)
    want = plain_bins(p, y, bins)
    assert len(got) == bins
    for b, (g, (count, mean_p, mean_y)) in enumerate(zip(got, want, strict=True)):
        assert g.lower == pytest.approx(b / bins, abs=1e-15)
        assert g.upper == pytest.approx((b + 1) / bins, abs=1e-15)
        assert g.count == count
        if count:
            assert g.mean_prediction == pytest.approx(mean_p, rel=1e-12)
            assert g.mean_label == pytest.approx(mean_y, rel=1e-12, abs=1e-15)
        else:
            assert g.mean_prediction is None and g.mean_label is None
    assert sum(g.count for g in got) == len(p)
    assert expected_calibration_error(p, y, bins=bins) == pytest.approx(plain_ece(p, y, bins), rel=1e-12, abs=1e-15)


def test_numpy_and_torch_inputs_give_the_same_numbers() -> None:
    torch = pytest.importorskip("torch")
    p, y = random_case(3, n=200)
    want = (brier_score(p, y), expected_calibration_error(p, y))
    as_numpy = (brier_score(np.array(p), np.array(y)), expected_calibration_error(np.array(p), np.array(y)))
    assert as_numpy == want
    tp = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    ty = torch.tensor(y, dtype=torch.float64)
    assert brier_score(tp, ty) == want[0]
    assert expected_calibration_error(tp, ty) == want[1]
    low = brier_score(torch.tensor(p, dtype=torch.bfloat16), torch.tensor(y, dtype=torch.bfloat16))
    assert low == pytest.approx(want[0], abs=0.01)


def test_a_calibrated_judge_has_small_ece_and_a_miscalibrated_one_does_not() -> None:
    rng = np.random.default_rng(12345)
    p = rng.uniform(0.0, 1.0, 200_000)
    y = (rng.uniform(0.0, 1.0, p.size) < p).astype(np.float64)  # Bernoulli(p)
    assert expected_calibration_error(p, y) < 0.02
    y_off = (rng.uniform(0.0, 1.0, p.size) < p**2).astype(np.float64)  # true rate p², scores say p
    assert expected_calibration_error(p, y_off) > 0.1


# --- temperature --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t_true", [0.5, 0.8, 1.3, 2.0])
def test_fit_temperature_recovers_the_generating_temperature(t_true: float) -> None:
    rng = np.random.default_rng(int(t_true * 100))
    p = rng.uniform(0.02, 0.98, 2000)
    y = sigmoid(logit(p) / t_true)
    t = fit_temperature(p, y)
    assert isinstance(t, float)
    assert t == pytest.approx(t_true, rel=0.05)
    assert t == pytest.approx(t_true, rel=1e-4)  # soft labels of exactly this form: the optimum is t_true


def test_fit_temperature_softens_over_confident_scores_and_lowers_the_loss() -> None:
    rng = np.random.default_rng(7)
    q = rng.uniform(0.05, 0.95, 5000)
    y = (rng.uniform(0.0, 1.0, q.size) < q).astype(np.float64)
    p = sigmoid(3.0 * logit(q))  # over-confident: the right temperature is about 3
    t = fit_temperature(p, y)
    assert 2.0 < t < 4.5
    before = plain_bce(p.tolist(), y.tolist())
    after = plain_bce(apply_temperature(p, t).tolist(), y.tolist())
    assert after < before - 0.01
    # a minimum of the loss: nearby temperatures are no better
    for other in (t * 1.02, t / 1.02):
        assert plain_bce(apply_temperature(p, other).tolist(), y.tolist()) >= after


def test_fit_temperature_is_one_when_the_scores_carry_no_logit() -> None:
    assert fit_temperature([0.5, 0.5, 0.5], [0.0, 1.0, 1.0]) == 1.0


def test_apply_temperature() -> None:
    p = np.array([1e-4, 0.1, 0.37, 0.5, 0.8, 0.9999])
    out = apply_temperature(p, 1.0)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, p, rtol=1e-12, atol=0)
    np.testing.assert_allclose(apply_temperature(p, 2.0), sigmoid(logit(p) / 2.0), rtol=1e-12)
    clipped = apply_temperature([0.0, 1.0], 1.0, eps=1e-3)
    np.testing.assert_allclose(clipped, [1e-3, 1 - 1e-3], rtol=1e-12)
    sharp = apply_temperature([0.0, 1.0], 1e-2)  # logits of ±13.8 / 0.01: no overflow, no NaN
    assert np.all(np.isfinite(sharp)) and sharp[0] < 1e-300 and sharp[1] == 1.0


# --- summary and plot ---------------------------------------------------------------------------------------


def test_summary_matches_numpy_and_is_json() -> None:
    p, y = random_case(5)
    summary = calibration_summary(p, y, bins=8)
    arr_y = np.array(y)
    constant = float(np.mean((arr_y - arr_y.mean()) ** 2))
    assert summary["n"] == len(p)
    assert summary["bins"] == 8
    assert summary["brier"] == pytest.approx(plain_brier(p, y), rel=1e-12)
    assert summary["ece"] == pytest.approx(plain_ece(p, y, 8), rel=1e-12)
    assert summary["mean_prediction"] == pytest.approx(sum(p) / len(p), rel=1e-12)
    assert summary["mean_label"] == pytest.approx(sum(y) / len(y), rel=1e-12)
    assert summary["brier_constant"] == pytest.approx(constant, rel=1e-12)
    assert summary["brier_skill"] == pytest.approx(1.0 - plain_brier(p, y) / constant, rel=1e-12)
    assert [b["count"] for b in summary["reliability"]] == [c for c, _, _ in plain_bins(p, y, 8)]
    assert set(summary["reliability"][0]) == {"lower", "upper", "count", "mean_prediction", "mean_label"}
    assert json.loads(json.dumps(summary)) == summary
    assert type(summary["brier"]) is float and type(summary["n"]) is int


def test_summary_skill_is_none_for_constant_labels() -> None:
    summary = calibration_summary([0.2, 0.6, 0.9], [1.0, 1.0, 1.0])
    assert summary["brier_constant"] == 0.0
    assert summary["brier_skill"] is None
    assert summary["brier"] == pytest.approx((0.64 + 0.16 + 0.01) / 3, rel=1e-12)


def test_plot_reliability_writes_a_png(tmp_path) -> None:
    from matplotlib.image import imread

    rng = np.random.default_rng(0)
    q = rng.uniform(0.0, 1.0, 3000)
    y = (rng.uniform(0.0, 1.0, q.size) < q).astype(np.float64)
    path = tmp_path / "reliability.png"
    plot_reliability(
        {"calibrated": (q, y), "over-confident": (sigmoid(3 * logit(np.clip(q, 1e-3, 1 - 1e-3))), y)}, path
    )
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert [f.name for f in tmp_path.iterdir()] == ["reliability.png"]  # no temporary file left behind


def test_plot_reliability_refuses_bad_curves_and_leaves_the_file(tmp_path) -> None:
    path = tmp_path / "reliability.png"
    path.write_bytes(b"old")
    with pytest.raises(VcrdError, match=r"curves\['bad'\]: labels has 1 values outside \[0, 1\]"):
        plot_reliability({"ok": ([0.1, 0.9], [0.0, 1.0]), "bad": ([0.1, 0.9], [0.0, 2.0])}, path)
    with pytest.raises(VcrdError, match=r"curves is empty"):
        plot_reliability({}, path)
    assert path.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["reliability.png"]


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predictions", "labels", "match"),
    [
        ([0.1, 0.2], [0.0], r"predictions and labels differ in length \(2 vs 1\)"),
        ([], [], r"predictions is empty"),
        ([0.1], [], r"labels is empty"),
        ([0.1, float("nan"), float("nan")], [0.0, 1.0, 1.0], r"predictions has 2 NaN values \(first at index 1\)"),
        ([0.1, 0.2], [0.0, float("nan")], r"labels has 1 NaN values \(first at index 1\)"),
        ([0.1, 1.5, -0.2], [0.0, 1.0, 1.0], r"predictions has 2 values outside \[0, 1\] \(first: 1.5 at index 1\)"),
        ([0.1, 0.2], [0.0, float("inf")], r"labels has 1 values outside \[0, 1\] \(first: inf at index 1\)"),
        ([[0.1, 0.2]], [[0.0, 1.0]], r"predictions must be one-dimensional.*shape \(1, 2\)"),
        (["a"], [0.0], r"predictions must be numbers in \[0, 1\]"),
    ],
)
def test_bad_inputs_raise_one_line_errors(predictions: list, labels: list, match: str) -> None:
    for call in (
        brier_score,
        calibration_bins,
        expected_calibration_error,
        fit_temperature,
        calibration_summary,
    ):
        with pytest.raises(VcrdError, match=match) as info:
            call(predictions, labels)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("bins", [0, -3, 2.5, True, "10"])
def test_bad_bins(bins: object) -> None:
    for call in (calibration_bins, expected_calibration_error, calibration_summary):
        with pytest.raises(VcrdError, match=r"bins must be an integer >= 1"):
            call([0.1, 0.9], [0.0, 1.0], bins=bins)
    with pytest.raises(VcrdError, match=r"bins must be an integer >= 1"):
        plot_reliability({"a": ([0.1], [0.0])}, "unused.png", bins=bins)


def test_bad_temperature_and_eps() -> None:
    for t in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(VcrdError, match=r"temperature must be a finite number > 0"):
            apply_temperature([0.5], t)
    with pytest.raises(VcrdError, match=r"eps must be in \(0, 0.5\)"):
        apply_temperature([0.5], 1.0, eps=0.0)
    with pytest.raises(VcrdError, match=r"eps must be in \(0, 0.5\)"):
        fit_temperature([0.5], [1.0], eps=0.7)
    with pytest.raises(VcrdError, match=r"predictions has 1 values outside \[0, 1\]"):
        apply_temperature([1.2], 1.0)


def test_fitting_the_temperature_to_logits_minimises_the_soft_bce_and_agrees_with_the_probability_fit() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(0.0, 3.0, 400)
    y = (rng.random(400) < 1 / (1 + np.exp(-z / 2.5))).astype(float)  # truly calibrated at T = 2.5
    t = fit_temperature_to_logits(z, y)

    def loss(temp: float) -> float:  # plain float64 soft BCE of sigmoid(z / T)
        p = 1 / (1 + np.exp(-z / temp))
        return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))

    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 2001))
    best = grid[int(np.argmin([loss(g) for g in grid]))]
    assert t == pytest.approx(best, rel=2e-3)
    assert loss(t) <= min(loss(t * 0.99), loss(t * 1.01))
    # moderate logits survive the probability route's clipping: both fits agree
    assert fit_temperature(1 / (1 + np.exp(-z)), y) == pytest.approx(t, rel=1e-6)
    # logits beyond the clip (|z| > 13.8) are used as they are, not clipped
    big = np.concatenate([z, [40.0, -40.0]])
    assert fit_temperature_to_logits(big, np.concatenate([y, [1.0, 0.0]])) != fit_temperature(
        1 / (1 + np.exp(-big)), np.concatenate([y, [1.0, 0.0]])
    )
    with pytest.raises(VcrdError, match="logits must be finite"):
        fit_temperature_to_logits([0.0, float("inf")], [0.0, 1.0])
