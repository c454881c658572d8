"""``vcrd rollouts`` (the parser: :mod:`vcrd_core.commands.rollouts`): generate the run's rollouts into its
store."""

from __future__ import annotations

import argparse

from vcrd_core.config.loader import load_config
from vcrd_core.rollouts.run import generate_rollouts, print_summary
from vcrd_core.runs.console import console


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    result = generate_rollouts(config, shard=args.shard, overwrite=args.overwrite, console=console(stderr=True))
    print_summary(result.summary, console())
    return 0
