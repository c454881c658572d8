"""``vcrd teacher-cache CONFIG``: the parser (what runs: :mod:`vcrd_core.commands.teacher_cache_run`)."""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command, add_config_arguments, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "teacher-cache",
        "vcrd_core.commands.teacher_cache_run:run",
        help="the frozen teacher's top-k distribution at every decision point of the rollout store",
        description="One teacher pass over the store's teacher and student rollouts: per response token the k "
        "most likely ids, their log-probabilities at objective.temperature and the remaining (tail) mass, in "
        "Parquet parts per store chunk (resumable; a cache made with another teacher, store, k or temperature is "
        "refused). Static-rollout training can read it instead of running the teacher.",
    )
    add_config_arguments(p, "objective.temperature=1.0")
    p.add_argument("--k", type=positive_int, default=64, help="ids kept per decision point (default 64)")
    p.add_argument("--out", default=None, metavar="DIR", help="cache directory (default: STORE/teacher-cache)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="rollouts per teacher forward (default 8)")
    p.add_argument(
        "--logp-dtype",
        default="float16",
        choices=("float16", "float32"),
        help="stored log-probabilities (default float16)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a cache made with another setup")
