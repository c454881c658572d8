"""``vcrd eval`` (the parser: :mod:`vcrd_core.commands.eval`): evaluate a model with the config's evaluators."""

from __future__ import annotations

import argparse

from vcrd_core.config.loader import load_config
from vcrd_core.evaluation.run import print_summary, run_evaluation
from vcrd_core.runs.console import console


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    summary = run_evaluation(config, model=args.model, out_dir=args.out, console=console(stderr=True))
    print_summary(summary, console())
    return 0
