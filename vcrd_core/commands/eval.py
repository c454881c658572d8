"""``vcrd eval CONFIG [--model trained|student|base|teacher|PATH] [--out DIR]``: the parser (what runs:
:mod:`vcrd_core.commands.eval_run`)."""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command, add_config_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "eval",
        "vcrd_core.commands.eval_run:run",
        help="evaluate the trained model (or --model) with the config's evaluators (math, code, exact, pairwise, ...)",
        description="Generate one output per problem of every evaluator's datasets (greedy by default, through "
        "the generator plugins), grade them, write one JSON line per sample (samples.jsonl) beside summary.json "
        "in evaluation.dir (default <output.dir>/eval/<label>: trained, student, teacher or the directory's name) "
        "and print a table naming the model. By default the model is the one `vcrd train` left in "
        "<output.dir>/final (a LoRA adapter is merged onto the model it was trained from); without one nothing "
        "is evaluated unless --model says what.",
    )
    add_config_arguments(p, "evaluation.max_new_tokens=512")
    p.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="trained (default: <output.dir>/final), student or base (the untrained student, models.student.path), "
        "teacher, or a local HF-format model or LoRA adapter directory",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (overrides evaluation.dir)")
