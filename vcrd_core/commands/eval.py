"""``vcrd eval CONFIG [--model student|teacher|PATH] [--out DIR]``: the parser (what runs:
:mod:`vcrd_core.commands.eval_run`)."""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command, add_config_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "eval",
        "vcrd_core.commands.eval_run:run",
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
