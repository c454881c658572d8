"""Calibration of a judge's scores against Monte-Carlo labels: Brier score, reliability bins, ECE, temperature.

A judge gives every decision point a score :math:`r_i \\in [0, 1]`; a Monte-Carlo label
:math:`y_i \\in [0, 1]` is the share of :math:`K` completions from that point that reached the right answer
(a soft label; hard 0/1 labels are the special case :math:`K = 1`). A calibrated judge has
:math:`\\mathbb{E}[y \\mid r] = r`.

* :func:`brier_score` -- :math:`\\frac{1}{N} \\sum_i (r_i - y_i)^2`.
* :func:`calibration_bins` -- equal-width bins on [0, 1]: bin :math:`b` holds :math:`r \\in [b/B, (b+1)/B)`,
  the last bin is closed, :math:`[1 - 1/B, 1]`; a score on an inner edge belongs to the bin above it.
* :func:`expected_calibration_error` -- the binned ECE,
  :math:`\\sum_b \\frac{n_b}{N} \\left| \\bar r_b - \\bar y_b \\right|` over the non-empty bins.
* :func:`fit_temperature` / :func:`apply_temperature` -- one-parameter recalibration
  :math:`\\sigma(\\operatorname{logit}(r) / T)`, :math:`T` minimising the mean soft binary cross-entropy.
* :func:`calibration_summary` -- all of the above as a JSON-ready dict; :func:`plot_reliability` draws
  reliability diagrams of several judges into one PNG.

Inputs may be lists, numpy arrays or torch tensors; everything is computed in float64.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vcrd_core.errors import VcrdError
from vcrd_core.runs.atomic import atomic_path

#: Number of equal-width reliability bins on [0, 1].
DEFAULT_BINS: int = 10
#: Search range of :func:`fit_temperature`.
MIN_TEMPERATURE: float = 1e-2
MAX_TEMPERATURE: float = 1e2

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 1/φ ≈ 0.618
_LOG_T_TOL = 1e-10


@dataclass(frozen=True)
class ReliabilityBin:
    """One equal-width bin of a reliability diagram; the means are ``None`` when the bin is empty."""

    lower: float
    upper: float
    count: int
    mean_prediction: float | None
    mean_label: float | None


def _as_array(values: Any, name: str) -> np.ndarray:
    """``values`` (list, numpy array or torch tensor) as a 1-D float64 array, without checking the range."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor; torch is not imported here
        values = values.detach().cpu().double().numpy()  # .double() also covers bfloat16, which numpy lacks
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise VcrdError(f"{name} must be numbers in [0, 1], could not read them as floats: {error}") from None
    if array.ndim != 1:
        raise VcrdError(f"{name} must be one-dimensional (one value per decision point), got shape {array.shape}")
    if array.size == 0:
        raise VcrdError(f"{name} is empty; need at least one value in [0, 1]")
    return array


def _check_unit_interval(array: np.ndarray, name: str) -> None:
    nan = np.isnan(array)
    if nan.any():
        first = int(np.flatnonzero(nan)[0])
        raise VcrdError(f"{name} has {int(nan.sum())} NaN values (first at index {first}); need values in [0, 1]")
    bad = (array < 0.0) | (array > 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise VcrdError(
            f"{name} has {int(bad.sum())} values outside [0, 1] (first: {float(array[first])!r} at index {first}); "
            "scores and labels must be probabilities in [0, 1]"
        )


def _pair(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 arrays of predictions and labels, same length, no NaN, all in [0, 1]."""
    p = _as_array(predictions, "predictions")
    y = _as_array(labels, "labels")
    if p.size != y.size:
        raise VcrdError(f"predictions and labels differ in length ({p.size} vs {y.size}); need one label per score")
    _check_unit_interval(p, "predictions")
    _check_unit_interval(y, "labels")
    return p, y


def _check_bins(bins: Any) -> int:
    if isinstance(bins, bool):
        raise VcrdError(f"bins must be an integer >= 1, got {bins!r}")
    try:
        count = operator.index(bins)
    except TypeError:
        raise VcrdError(f"bins must be an integer >= 1, got {bins!r}") from None
    if count < 1:
        raise VcrdError(f"bins must be an integer >= 1, got {count}")
    return count


def _check_eps(eps: float) -> float:
    value = float(eps)
    if not 0.0 < value < 0.5:
        raise VcrdError(f"eps must be in (0, 0.5), got {eps!r}")
    return value


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Index of the bin of each prediction: edge ``b/B`` belongs to bin ``b``, 1.0 to the last bin."""
    edges = np.arange(bins + 1, dtype=np.float64) / bins
    return np.minimum(np.searchsorted(edges, p, side="right") - 1, bins - 1)


def brier_score(predictions: Any, labels: Any) -> float:
    """Mean squared difference :math:`\\frac{1}{N} \\sum_i (r_i - y_i)^2` in float64 (soft labels allowed)."""
    p, y = _pair(predictions, labels)
    return float(np.mean((p - y) ** 2))


def _bins(p: np.ndarray, y: np.ndarray, bins: int) -> list[ReliabilityBin]:
    index = _bin_index(p, bins)
    counts = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y, minlength=bins)
    out = []
    for b in range(bins):
        n = int(counts[b])
        out.append(
            ReliabilityBin(
                lower=b / bins,
                upper=(b + 1) / bins,
                count=n,
                mean_prediction=float(sum_p[b] / n) if n else None,
                mean_label=float(sum_y[b] / n) if n else None,
            )
        )
    return out


def _ece(reliability: Sequence[ReliabilityBin], n: int) -> float:
    total = 0.0
    for b in reliability:
        if b.count:
            assert b.mean_prediction is not None and b.mean_label is not None
            total += b.count / n * abs(b.mean_prediction - b.mean_label)
    return total


def calibration_bins(predictions: Any, labels: Any, bins: int = DEFAULT_BINS) -> list[ReliabilityBin]:
    """The ``bins`` equal-width bins on [0, 1] (all of them, empty ones included), lowest first.

    Bin ``b`` holds the predictions in ``[b/B, (b+1)/B)``; the last bin is closed, so 1.0 falls in it.
    """
    count = _check_bins(bins)
    p, y = _pair(predictions, labels)
    return _bins(p, y, count)


def expected_calibration_error(predictions: Any, labels: Any, bins: int = DEFAULT_BINS) -> float:
    """Binned ECE with equal-width bins: :math:`\\sum_b \\frac{n_b}{N} |\\bar r_b - \\bar y_b|` (non-empty bins)."""
    count = _check_bins(bins)
    p, y = _pair(predictions, labels)
    return _ece(_bins(p, y, count), p.size)


def _logit(p: np.ndarray, eps: float) -> np.ndarray:
    clipped = np.clip(p, eps, 1.0 - eps)
    return np.log(clipped) - np.log1p(-clipped)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """:math:`\\sigma(z) = \\exp(-\\operatorname{softplus}(-z))`, without overflow for large ``|z|``."""
    return np.exp(-np.logaddexp(0.0, -z))


def _soft_bce(z: np.ndarray, y: np.ndarray, log_t: float) -> float:
    """Mean :math:`-y \\log \\sigma(s) - (1-y) \\log(1 - \\sigma(s))` with :math:`s = z / T`, written as
    :math:`\\operatorname{softplus}(s) - y s` so that it stays finite for any ``s``."""
    s = z * math.exp(-log_t)
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def fit_temperature(predictions: Any, labels: Any, *, eps: float = 1e-6) -> float:
    """The temperature :math:`T \\in [10^{-2}, 10^2]` minimising the mean soft binary cross-entropy of
    :math:`\\sigma(\\operatorname{logit}(\\operatorname{clip}(r, ε, 1-ε)) / T)` against the labels.

    :math:`T > 1` softens over-confident scores, :math:`T < 1` sharpens timid ones. The loss is convex in
    :math:`1/T` (a logistic loss in one weight), hence unimodal in :math:`\\log T`, where it is minimised by a
    golden-section search. Returns 1.0 when every clipped score is 0.5 (the temperature changes nothing).
    """
    eps = _check_eps(eps)
    p, y = _pair(predictions, labels)
    return _fit_log_t(_logit(p, eps), y)


def fit_temperature_to_logits(logits: Any, labels: Any) -> float:
    """:func:`fit_temperature` for scores given as logits ``z`` (the model's own, unclipped): the
    :math:`T \\in [10^{-2}, 10^2]` minimising the mean soft binary cross-entropy of :math:`\\sigma(z / T)`."""
    z = _as_array(logits, "logits")
    y = _as_array(labels, "labels")
    if z.shape != y.shape or z.size == 0:
        raise VcrdError(f"logits and labels must be non-empty and of one length (got {z.size} and {y.size})")
    if not np.all(np.isfinite(z)):
        raise VcrdError("logits must be finite numbers")
    _check_unit_interval(y, "labels")
    return _fit_log_t(z, y)


def _fit_log_t(z: np.ndarray, y: np.ndarray) -> float:
    if not np.any(z):
        return 1.0
    # scipy is not installed in this project's environment, so instead of scipy.optimize.minimize_scalar
    # (bounded) this is a golden-section search on log T written out; the loss is unimodal in log T.
    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = lo + (1.0 - _GOLDEN) * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = _soft_bce(z, y, a), _soft_bce(z, y, b)
    while hi - lo > _LOG_T_TOL:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = lo + (1.0 - _GOLDEN) * (hi - lo)
            fa = _soft_bce(z, y, a)
        else:  # the minimum lies in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = _soft_bce(z, y, b)
    return float(math.exp(a if fa <= fb else b))


def apply_temperature(predictions: Any, temperature: float, *, eps: float = 1e-6) -> np.ndarray:
    """:math:`\\sigma(\\operatorname{logit}(\\operatorname{clip}(r, ε, 1-ε)) / T)` as a float64 array.

    Scores of exactly 0 or 1 are clipped to ``ε`` / ``1-ε`` first, so ``T = 1`` returns the clipped scores.
    """
    eps = _check_eps(eps)
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise VcrdError(f"temperature must be a finite number > 0, got {temperature!r}")
    p = _as_array(predictions, "predictions")
    _check_unit_interval(p, "predictions")
    return _sigmoid(_logit(p, eps) / t)


def calibration_summary(predictions: Any, labels: Any, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Brier score, ECE and the reliability bins as a JSON-serialisable dict of plain floats and ints.

    ``brier_constant`` is the Brier score of predicting the mean label everywhere (the labels' variance);
    ``brier_skill = 1 - brier / brier_constant`` is ``None`` when that is 0 (all labels equal).
    """
    count = _check_bins(bins)
    p, y = _pair(predictions, labels)
    reliability = _bins(p, y, count)
    brier = float(np.mean((p - y) ** 2))
    mean_label = float(np.mean(y))
    brier_constant = float(np.mean((y - mean_label) ** 2))
    return {
        "n": int(p.size),
        "brier": brier,
        "ece": _ece(reliability, p.size),
        "bins": count,
        "mean_prediction": float(np.mean(p)),
        "mean_label": mean_label,
        "brier_constant": brier_constant,
        "brier_skill": 1.0 - brier / brier_constant if brier_constant > 0.0 else None,
        "reliability": [asdict(b) for b in reliability],
    }


def plot_reliability(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    bins: int = DEFAULT_BINS,
    title: str = "Reliability",
) -> None:
    """A PNG with the reliability diagrams of one or more judges, ``{name: (predictions, labels)}``.

    Top panel: the diagonal (perfect calibration) and, per judge, the mean label against the mean score of
    each non-empty bin; the legend gives each judge's ECE and Brier score. Bottom panel: the share of each
    judge's scores per bin. Uses matplotlib's Agg canvas directly (no pyplot, no global backend change) and
    writes the file atomically: a crash leaves the old file or none, never half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = _check_bins(bins)
    if not curves:
        raise VcrdError("curves is empty; need at least one judge as {name: (predictions, labels)}")
    data = {}
    for name, pair in curves.items():
        try:
            predictions, labels = pair
        except (TypeError, ValueError):
            raise VcrdError(f"curves[{name!r}] must be a pair (predictions, labels)") from None
        try:
            p, y = _pair(predictions, labels)
        except VcrdError as error:
            raise VcrdError(f"curves[{name!r}]: {error}") from None
        reliability = _bins(p, y, count)
        data[name] = (p, y, reliability)

    fig = Figure(figsize=(6.4, 7.2), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0.0, 1.0], [0.0, 1.0], color="#888888", ls="--", lw=1.0, label="perfect calibration")
    width = 1.0 / count
    bar_width = 0.85 * width / len(data)
    left_edges = np.arange(count, dtype=np.float64) / count
    for k, (name, (p, y, reliability)) in enumerate(data.items()):
        filled = [b for b in reliability if b.count]
        ece = _ece(reliability, p.size)
        brier = float(np.mean((p - y) ** 2))
        (line,) = top.plot(
            [b.mean_prediction for b in filled],
            [b.mean_label for b in filled],
            marker="o",
            ms=4,
            lw=1.4,
            label=f"{name} (ECE {ece:.3f}, Brier {brier:.3f})",
        )
        shares = np.array([b.count for b in reliability], dtype=np.float64) / p.size
        bottom.bar(
            left_edges + 0.075 * width + k * bar_width,
            shares,
            width=bar_width,
            align="edge",
            color=line.get_color(),
            label=name,
        )
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("mean label (Monte-Carlo success rate)")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title, fontsize=11)
    bottom.set_xlim(0.0, 1.0)
    bottom.set_xticks(np.linspace(0.0, 1.0, min(count, 10) + 1))
    bottom.set_xlabel(f"judge score ({count} equal-width bins)")
    bottom.set_ylabel("share of scores")
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_axisbelow(True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
