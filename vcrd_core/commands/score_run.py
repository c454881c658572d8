"""``vcrd score`` (the parser: :mod:`vcrd_core.commands.score`): offline proposals, judge scores and weights
into the rollout store, and a table of the weights' regimes."""

from __future__ import annotations

import argparse

from rich.table import Table

from vcrd_core.config.loader import load_config
from vcrd_core.regimes import DEFAULT_PARITY_TOL
from vcrd_core.rollouts.scoring import score_store
from vcrd_core.runs.console import console


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    summary = score_store(config, batch_size=args.batch_size, overwrite=args.overwrite, console=console(stderr=True))
    table = Table(title=f"scores in {summary['store']} (parity: |w - 1| <= {DEFAULT_PARITY_TOL})")
    for col in ("stream", "rule", "points", "attenuation", "parity", "amplification", "w p50", "w max"):
        table.add_column(col, justify="left" if col in ("stream", "rule") else "right")
    for name, s in summary["streams"].items():
        if not s["decision_points"]:
            table.add_row(name, s["rule"], "0", "-", "-", "-", "-", "-")
            continue
        table.add_row(
            name,
            s["rule"],
            str(s["decision_points"]),
            f"{100 * s['attenuation']:.1f}%",
            f"{100 * s['parity']:.1f}%",
            f"{100 * s['amplification']:.1f}%",
            f"{s['weight_quantiles']['p50']:.3g}",
            f"{s['weight_max']:.3g}",
        )
    console().print(table)
    return 0
