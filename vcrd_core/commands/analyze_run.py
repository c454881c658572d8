"""``vcrd analyze`` (the parser: :mod:`vcrd_core.commands.analyze`): validity statistics of scored rollouts
and a Fig.-1-like histogram.

Reads a rollout store scored by ``vcrd score`` (:class:`vcrd_core.rollouts.store.RolloutStore`) or a
score-records file (:mod:`vcrd_core.judging.score_records`), prints per stream the shares of
attenuation / parity / amplification points, the share with ``r_s ≥ r_t`` and the ratio quantiles,
and writes ``validity_stats.json`` and ``validity_hist.png`` (:mod:`vcrd_core.judging.analysis`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vcrd_core.errors import VcrdError
from vcrd_core.judging.analysis import (
    HISTOGRAM_FILE,
    STATS_FILE,
    ValidityStats,
    plot_validity_histogram,
    validity_stats,
)
from vcrd_core.judging.score_records import read_records
from vcrd_core.regimes import DEFAULT_PARITY_TOL, check_parity_tol
from vcrd_core.rollouts.store import MANIFEST, RolloutStore
from vcrd_core.runs.console import console


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.1f}%"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _print_table(stats: ValidityStats, source: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"Validity ratio r_s/(r_t+ε) — {escape(source.name)} (parity: |ρ-1| ≤ {stats.parity_tol:g})",
        title_justify="left",
    )
    table.add_column("")
    for name in stats.streams:
        table.add_column(name, justify="right")
    streams = list(stats.streams.values())
    rows: list[tuple[str, list[str]]] = [
        ("rollouts", [f"{s.n_records:,}" for s in streams]),
        ("decision points", [f"{s.n_points:,}" for s in streams]),
        ("same token", [_percent(s.share_same_token) for s in streams]),
        ("attenuation (ρ < 1-tol)", [_percent(s.share_attenuation) for s in streams]),
        ("parity", [_percent(s.share_parity) for s in streams]),
        ("amplification (ρ > 1+tol)", [_percent(s.share_amplification) for s in streams]),
        ("r_s ≥ r_t", [_percent(s.share_student_at_least_teacher) for s in streams]),
        ("mean r_s", [_number(s.mean_r_s) for s in streams]),
        ("mean r_t", [_number(s.mean_r_t) for s in streams]),
    ]
    for q in ("0.05", "0.25", "0.5", "0.75", "0.95"):
        rows.append((f"ratio q{q}", [_number(s.ratio_quantiles[q] if s.ratio_quantiles else None) for s in streams]))
    if any(s.weight_quantiles for s in streams):
        rows.append(("mean weight", [_number(s.mean_weight) for s in streams]))
        rows.append(
            ("weight q0.5", [_number(s.weight_quantiles["0.5"] if s.weight_quantiles else None) for s in streams])
        )
    for label, cells in rows:
        table.add_row(label, *cells)
    console().print(table)


def run(args: argparse.Namespace) -> int:
    source = Path(args.scores)
    tol = check_parity_tol(DEFAULT_PARITY_TOL if args.parity_tol is None else args.parity_tol)
    if source.is_dir():
        if not (source / MANIFEST).is_file():
            raise VcrdError(f"{source}: not a rollout store (no {MANIFEST}); pass a store or a score-records file")
        records = RolloutStore(source).score_records()
        if not records:
            raise VcrdError(f"{source}: the rollout store has no scores yet; run `vcrd score` first")
        default_out = source
    else:
        records = read_records(source)
        if not records:
            raise VcrdError(f"{source}: no score records in the file (expected one JSON object per line)")
        default_out = source.resolve().parent
    out_dir = Path(args.out) if args.out is not None else default_out
    if out_dir.exists() and not out_dir.is_dir():
        raise VcrdError(f"--out {out_dir}: exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VcrdError(f"--out {out_dir}: cannot create the directory ({exc.strerror})") from None

    stats = validity_stats(records, tol)
    data = {"input": str(source), **stats.to_dict(), "histogram": HISTOGRAM_FILE}
    stats_path = out_dir / STATS_FILE
    stats_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    hist_path = plot_validity_histogram(
        records, out_dir / HISTOGRAM_FILE, tol, title=f"Local validity of student vs teacher proposals — {source.name}"
    )
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_table(stats, source)
        print(f"wrote {stats_path} and {hist_path}")
    return 0
