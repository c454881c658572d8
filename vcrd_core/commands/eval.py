"""``vcrd eval CONFIG [--model student|teacher|PATH] [--out DIR]``: evaluate a model with the config's evaluators."""

from __future__ import annotations

import argparse

from rich.console import Console

from vcrd_core.commands import add_command, add_config_arguments
from vcrd_core.config.loader import load_config
from vcrd_core.evaluation.run import print_summary, run_evaluation


def _eval(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    summary = run_evaluation(config, model=args.model, out_dir=args.out, console=Console(stderr=True))
    print_summary(summary, Console())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "eval",
        _eval,
        help="evaluate a model with the config's evaluators (math, code, exact, pairwise, ...)",
        description="Generate one output per problem of every evaluator's datasets (greedy by default, through "
        "the generator plugins), grade them, write one JSON line per sample (samples.jsonl) beside summary.json "
        "in evaluation.dir (default <output.dir>/eval/<model>) and print a table.",
    )
    add_config_arguments(p, "evaluation.max_new_tokens=512")
    p.add_argument(
        "--model",
        default="student",
        help="student (default), teacher, or a local HF-format model directory",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (overrides evaluation.dir)")
