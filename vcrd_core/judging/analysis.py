"""Validity statistics of scored rollouts: how often VCRD attenuates, keeps parity or amplifies.

At every decision point the validity ratio is (DESIGN.md §1.3, paper §3.2 below Eq. 8)

.. math::

    \\rho_t = \\frac{r(c_t, a^S_t)}{r(c_t, a^T_t) + \\varepsilon}, \\qquad \\varepsilon = 10^{-8},

with :math:`\\rho_t = 1` exactly where both proposals are the same token (parity by definition). With a parity
tolerance :math:`\\tau` (:mod:`vcrd_core.regimes`, default 0.05) a point is an *attenuation* point if
:math:`\\rho_t < 1 - \\tau`, a *parity* point if :math:`|\\rho_t - 1| \\le \\tau` and an *amplification* point
if :math:`\\rho_t > 1 + \\tau`. The paper's Fig. 1 reports the share of decision points where the student's
proposal scores at least as high as the teacher's, :math:`r_s \\ge r_t` (28.8% for Qwen2.5-Math 1.5B vs
7B-Instruct); that share compares the raw scores, so that ``ε`` does not push ties (``r_s = r_t``, common with
a soft rule-based judge) just below 1.

:func:`validity_stats` computes the numbers, :func:`plot_validity_histogram` draws a Fig.-1-like
histogram of :math:`\\log_{10} \\rho_t`, one panel per stream.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcrd_core.decision_points import Stream
from vcrd_core.errors import VcrdError
from vcrd_core.judging.score_records import ScoreRecord
from vcrd_core.regimes import DEFAULT_PARITY_TOL, check_parity_tol, regime_masks

#: ``ε`` of the ratio (DESIGN.md §1.3).
EPS: float = 1e-8
#: Quantiles of the ratio reported per stream.
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
#: Name of the pooled "stream" in the statistics.
ALL = "all"
STATS_FILE = "validity_stats.json"
HISTOGRAM_FILE = "validity_hist.png"

_REGION_COLORS = {"attenuation": "#c44e52", "parity": "#8c8c8c", "amplification": "#55a868"}
_STREAM_TITLES = {
    Stream.TEACHER_PREFIX.value: "Teacher prefix (LV-SKL, $w^T$)",
    Stream.STUDENT_PREFIX.value: "Student prefix (LV-SRKL, $w^S$)",
    ALL: "Both streams",
}


def validity_ratios(record: ScoreRecord, eps: float = EPS) -> np.ndarray:
    """:math:`\\rho_t = r_s / (r_t + ε)` per decision point (float64), 1 where the tokens are the same."""
    r_s = np.asarray(record.r_s, dtype=np.float64)
    r_t = np.asarray(record.r_t, dtype=np.float64)
    same = np.asarray(record.same_token, dtype=bool)
    return np.where(same, 1.0, r_s / (r_t + eps))


@dataclass(frozen=True)
class StreamStats:
    """Validity statistics of one stream (or of both pooled). Shares are fractions in [0, 1];
    they and the quantiles are ``None`` when the stream has no decision point."""

    stream: str
    n_records: int
    n_points: int
    n_same_token: int
    share_attenuation: float | None
    share_parity: float | None
    share_amplification: float | None
    share_student_at_least_teacher: float | None  # r_s >= r_t (or same token): the paper's 28.8%
    mean_r_s: float | None
    mean_r_t: float | None
    ratio_quantiles: dict[str, float] | None
    weight_quantiles: dict[str, float] | None = None  # of the recorded weights, when every record has them
    mean_weight: float | None = None

    @property
    def share_same_token(self) -> float | None:
        return self.n_same_token / self.n_points if self.n_points else None


@dataclass(frozen=True)
class ValidityStats:
    """Statistics per stream (in :class:`Stream` order, only streams present) and pooled (``"all"``)."""

    parity_tol: float
    eps: float
    streams: dict[str, StreamStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"parity_tol": self.parity_tol, "eps": self.eps, "quantiles": list(QUANTILES)}
        out["streams"] = {}
        for name, stats in self.streams.items():
            entry = asdict(stats)
            entry["share_same_token"] = stats.share_same_token
            out["streams"][name] = entry
        return out


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"{q:g}": float(v) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True)}


def _stream_stats(name: str, records: Sequence[ScoreRecord], tol: float, eps: float) -> StreamStats:
    n_points = sum(r.n_points for r in records)
    if n_points == 0:
        return StreamStats(name, len(records), 0, 0, None, None, None, None, None, None, None)
    ratio = np.concatenate([validity_ratios(r, eps) for r in records])
    r_s = np.concatenate([np.asarray(r.r_s, dtype=np.float64) for r in records])
    r_t = np.concatenate([np.asarray(r.r_t, dtype=np.float64) for r in records])
    same = np.concatenate([np.asarray(r.same_token, dtype=bool) for r in records])
    weight_q = mean_w = None
    if all(r.weights is not None for r in records):
        weights = np.concatenate([np.asarray(r.weights, dtype=np.float64) for r in records])
        weight_q, mean_w = _quantiles(weights), float(weights.mean())
    regimes = regime_masks(ratio, tol)
    return StreamStats(
        stream=name,
        n_records=len(records),
        n_points=n_points,
        n_same_token=int(same.sum()),
        share_attenuation=float(np.mean(regimes["attenuation"])),
        share_parity=float(np.mean(regimes["parity"])),
        share_amplification=float(np.mean(regimes["amplification"])),
        share_student_at_least_teacher=float(np.mean(same | (r_s >= r_t))),
        mean_r_s=float(r_s.mean()),
        mean_r_t=float(r_t.mean()),
        ratio_quantiles=_quantiles(ratio),
        weight_quantiles=weight_q,
        mean_weight=mean_w,
    )


def validity_stats(
    records: Sequence[ScoreRecord], parity_tol: float = DEFAULT_PARITY_TOL, eps: float = EPS
) -> ValidityStats:
    """Attenuation / parity / amplification shares, ``r_s ≥ r_t`` share and ratio quantiles per stream.

    Streams appear in :class:`Stream` order when they have records; ``"all"`` pools every record.
    """
    tol = check_parity_tol(parity_tol)
    if not records:
        raise VcrdError("no score records to analyse")
    streams: dict[str, StreamStats] = {}
    for stream in Stream:
        chosen = [r for r in records if r.stream == stream]
        if chosen:
            streams[stream.value] = _stream_stats(stream.value, chosen, tol, eps)
    streams[ALL] = _stream_stats(ALL, list(records), tol, eps)
    return ValidityStats(parity_tol=tol, eps=eps, streams=streams)


def _histogram_range(log_ratio: np.ndarray) -> float:
    """Half-width ``R`` of the symmetric x range [-R, R] in decades (0.5 steps, 1 ≤ R ≤ 8)."""
    finite = log_ratio[np.isfinite(log_ratio)]
    if finite.size == 0:
        return 1.0
    spread = float(np.max(np.abs(np.quantile(finite, (0.005, 0.995)))))
    return min(8.0, max(1.0, math.ceil(spread * 2.0) / 2.0))


def _ratio_tick(x: float, _pos: int | None = None) -> str:
    value = 10.0**x
    if abs(x - round(x)) > 1e-9:
        return ""
    if -2 <= x <= 2:
        return f"{value:g}"
    return f"$10^{{{round(x)}}}$"


def plot_validity_histogram(
    records: Sequence[ScoreRecord],
    path: str | os.PathLike[str],
    parity_tol: float = DEFAULT_PARITY_TOL,
    eps: float = EPS,
    title: str | None = None,
) -> Path:
    """A PNG like the paper's Fig. 1: the distribution of :math:`\\log_{10} \\rho_t`, one panel per stream.

    Bars are shares of the stream's decision points; the parity band ``[1-τ, 1+τ]`` is one bin of its
    own, its identical-token part hatched; ratios beyond the axis are counted in the edge bins. Uses
    matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    stats = validity_stats(records, parity_tol, eps)
    tol = stats.parity_tol
    panels = [s for s in Stream if s.value in stats.streams] or []
    lo_par, hi_par = math.log10(1.0 - tol), math.log10(1.0 + tol)

    by_stream = {s: [r for r in records if r.stream == s] for s in panels}
    logs = {}
    sames = {}
    for s in panels:
        ratio = np.concatenate([validity_ratios(r, eps) for r in by_stream[s]] or [np.zeros(0)])
        with np.errstate(divide="ignore"):
            logs[s] = np.log10(ratio)
        sames[s] = np.concatenate([np.asarray(r.same_token, dtype=bool) for r in by_stream[s]] or [np.zeros(0, bool)])
    half = _histogram_range(np.concatenate(list(logs.values())))
    n_side = 24
    edges = np.concatenate([np.linspace(-half, lo_par, n_side + 1), np.linspace(hi_par, half, n_side + 1)])
    parity_bin = n_side  # the bin [lo_par, hi_par]

    fig = Figure(figsize=(max(6.2 * len(panels), 9.0), 4.8), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, s in zip(axes, panels, strict=True):
        st = stats.streams[s.value]
        x = np.clip(logs[s], -half, half)  # -inf (r_s = 0) and beyond-range ratios land in the edge bins
        n = max(st.n_points, 1)
        counts, _ = np.histogram(x, bins=edges)
        same_counts, _ = np.histogram(x[sames[s]], bins=edges)
        share = 100.0 * counts / n
        same_share = 100.0 * same_counts / n
        left, widths = edges[:-1], np.diff(edges)
        centers = left + widths / 2
        colors = [
            _REGION_COLORS["parity"]
            if i == parity_bin
            else _REGION_COLORS["attenuation"]
            if c < 0
            else _REGION_COLORS["amplification"]
            for i, c in enumerate(centers)
        ]
        ax.axvspan(-half, lo_par, color=_REGION_COLORS["attenuation"], alpha=0.07, lw=0)
        ax.axvspan(hi_par, half, color=_REGION_COLORS["amplification"], alpha=0.07, lw=0)
        # The parity bin is a category: drawn at least 1.5% of the axis wide (centred on its band) so it
        # stays visible on a wide axis; it is drawn last, over its neighbours.
        vis = widths.copy()
        vis[parity_bin] = max(widths[parity_bin], 0.03 * half)
        left = left.copy()
        left[parity_bin] = (lo_par + hi_par) / 2 - vis[parity_bin] / 2
        order = [i for i in range(len(share)) if i != parity_bin] + [parity_bin]
        ax.bar(
            left[order],
            share[order],
            width=vis[order],
            align="edge",
            color=[colors[i] for i in order],
            edgecolor="white",
            linewidth=0.4,
        )
        ax.bar(
            left[order],
            same_share[order],
            width=vis[order],
            align="edge",
            color="none",
            edgecolor="#444444",
            hatch="////",
            linewidth=0.0,
        )
        clipped = int(np.sum(np.abs(logs[s]) > half))
        if clipped:
            ax.text(
                0.99,
                0.97,
                f"{clipped:,} ratios beyond the axis are counted in the edge bins",
                transform=ax.transAxes,
                va="top",
                ha="right",
                fontsize=7,
                color="#555555",
            )
        ax.axvline(0.0, color="#333333", lw=0.9, ls="--")
        ax.set_xlim(-half, half)
        ax.xaxis.set_major_locator(MultipleLocator(1.0 if half <= 4 else 2.0))
        ax.xaxis.set_major_formatter(FuncFormatter(_ratio_tick))
        ax.set_xlabel(r"validity ratio $r_s\,/\,(r_t+\varepsilon)$ (log scale)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_title(
            f"{_STREAM_TITLES[s.value]}\n{st.n_points:,} decision points in {st.n_records:,} rollouts",
            fontsize=10,
        )
        text = (
            f"attenuation  {100 * (st.share_attenuation or 0):5.1f}%\n"
            f"parity       {100 * (st.share_parity or 0):5.1f}%\n"
            f"amplification{100 * (st.share_amplification or 0):5.1f}%\n"
            f"$r_s \\geq r_t$        {100 * (st.share_student_at_least_teacher or 0):5.1f}%"
        )
        ax.text(
            0.02,
            0.97,
            text,
            transform=ax.transAxes,
            va="top",
            ha="left",
            family="monospace",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "#bbbbbb", "alpha": 0.9},
        )
    axes[0].set_ylabel("share of decision points (%)")
    legend = [
        Patch(color=_REGION_COLORS["attenuation"], label=f"attenuation ($\\rho < {1 - tol:g}$)"),
        Patch(color=_REGION_COLORS["parity"], label=f"parity ($|\\rho - 1| \\leq {tol:g}$)"),
        Patch(color=_REGION_COLORS["amplification"], label=f"amplification ($\\rho > {1 + tol:g}$)"),
        Patch(facecolor="none", edgecolor="#444444", hatch="////", label="same token (parity by definition)"),
    ]
    fig.legend(handles=legend, loc="outside lower center", ncols=len(legend), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(path)
    fig.savefig(out, format="png")
    return out
