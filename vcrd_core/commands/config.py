"""``vcrd config validate|check|show|schema``: the parser (what runs: :mod:`vcrd_core.commands.config_run`)."""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command, add_config_arguments

RUN = "vcrd_core.commands.config_run"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="validate, check, show or export the schema of run configs")
    csub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    v = add_command(
        csub,
        "validate",
        f"{RUN}:validate",
        help="check a config statically (no model is loaded, no path is touched)",
        description="Validate a run config in two phases (structure, then each component's params).",
    )
    add_config_arguments(v, "objective.teacher_prefix.lambda=2")
    c = add_command(
        csub,
        "check",
        f"{RUN}:check",
        help="the run-time checks: paths exist, tokenizers agree, prompt files parse, judge checkpoints "
        "(no model weights loaded)",
        description="Validate, then check what the config names on disk and report every problem found, one line "
        "each, most fundamental first: the config itself, model directories and the shared tokenizer, the prompt "
        "files (data.train, data.eval: read and tokenized as a run reads them), judge checkpoints, the accelerate "
        "config, and last the output directory. Loads tokenizers, never model weights. Exits 2 if anything is "
        "wrong.",
    )
    add_config_arguments(c, "objective.teacher_prefix.lambda=2")
    s = add_command(csub, "show", f"{RUN}:show", help="print the resolved config with every default filled in")
    add_config_arguments(s, "objective.teacher_prefix.lambda=2")
    j = add_command(
        csub, "schema", f"{RUN}:schema", help="export the JSON Schema of run configs (reflects the installed plugins)"
    )
    j.add_argument("-o", "--output", help="write to this file instead of stdout")
