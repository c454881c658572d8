"""``vcrd score CONFIG``: the parser (what runs: :mod:`vcrd_core.commands.score_run`)."""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command, add_config_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "score",
        "vcrd_core.commands.score_run:run",
        help="offline scoring: the other model's proposals, judge scores and weights into the rollout store",
        description="For every decision point of both streams of the rollout store: the other model's proposal "
        "at the same prefix, the judge's r_s and r_t and the stream's weights (the functions online training "
        "uses), stored in the store's score columns. Resumable; a summary goes to score-summary.json.",
    )
    add_config_arguments(p, "proposals.teacher=greedy")
    p.add_argument("--batch-size", type=int, default=8, help="rollouts per forward pass (default 8)")
    p.add_argument("--overwrite", action="store_true", help="score again a store scored with another setup")
