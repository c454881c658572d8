"""``vcrd rollouts CONFIG [--shard I/N] [--overwrite]``: the parser (what runs:
:mod:`vcrd_core.commands.rollouts_run`)."""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command, add_config_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "rollouts",
        "vcrd_core.commands.rollouts_run:run",
        help="generate teacher and student rollouts into the run's rollout store (resumable, shardable)",
        description="Generate the teacher's and the student's rollouts of data.train into the rollout store "
        "(rollouts.store, default <output.dir>/rollouts): Parquet chunks written atomically, so a rerun "
        "resumes where an interrupted run stopped. Run-time checks happen before any model is loaded.",
    )
    add_config_arguments(p, "rollouts.temperature=0.7")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="this process writes shard I of N (0-based) of the store: run N processes (one per GPU or node)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a store made with other models, parameters or prompts (its rollouts are deleted)",
    )
