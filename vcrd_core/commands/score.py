"""``vcrd score CONFIG``: offline proposals, judge scores and weights into the rollout store."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from vcrd_core.commands import add_command, add_config_arguments
from vcrd_core.config.loader import load_config, validate_components
from vcrd_core.rollouts.scoring import PARITY_TOL, score_store


def _score(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    validate_components(config)
    summary = score_store(config, batch_size=args.batch_size, overwrite=args.overwrite, console=Console(stderr=True))
    table = Table(title=f"scores in {summary['store']} (parity: |w - 1| <= {PARITY_TOL})")
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
    Console().print(table)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "score",
        _score,
        help="offline scoring: the other model's proposals, judge scores and weights into the rollout store",
        description="For every decision point of both streams of the rollout store: the other model's proposal "
        "at the same prefix, the judge's r_s and r_t and the stream's weights (the functions online training "
        "uses), stored in the store's score columns. Resumable; a summary goes to score-summary.json.",
    )
    add_config_arguments(p, "proposals.teacher=greedy")
    p.add_argument("--batch-size", type=int, default=8, help="rollouts per forward pass (default 8)")
    p.add_argument("--overwrite", action="store_true", help="score again a store scored with another setup")
