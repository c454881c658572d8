"""``vcrd config validate|show|schema``: static checks of run configs (never loads a model or a path)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from vcrd_core.commands import add_command, add_config_arguments
from vcrd_core.config.loader import load_config, resolved_dict, validate_components
from vcrd_core.config.schema import config_schema
from vcrd_core.errors import VcrdError
from vcrd_core.runs.preflight import preflight


def _validate(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    n = len(validate_components(config))
    print(f"{args.file}: valid ({n} components; scoring mode {config.scoring.mode})")
    return 0


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    found = preflight(config)
    print(f"{args.file}: ready to run (shared tokenizer, {found.vocab_size} ids; paths and judges checked)")
    return 0


def _show(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    print(yaml.safe_dump(resolved_dict(config), sort_keys=False), end="")
    return 0


def _schema(args: argparse.Namespace) -> int:
    text = json.dumps(config_schema(), indent=2, allow_nan=False)
    if args.output:
        try:
            Path(args.output).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise VcrdError(f"cannot write the schema to '{args.output}': {exc.strerror or exc}") from None
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="validate, show or export the schema of run configs")
    csub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    v = add_command(
        csub,
        "validate",
        _validate,
        help="check a config statically (no model is loaded, no path is touched)",
        description="Validate a run config in two phases (structure, then each component's params).",
    )
    add_config_arguments(v, "objective.teacher_prefix.lambda=2")
    c = add_command(
        csub,
        "check",
        _check,
        help="the run-time checks: paths exist, tokenizers agree, judge checkpoints (no model weights loaded)",
        description="Validate, then check what the config names on disk: model directories, the shared tokenizer, "
        "prompt files, judge checkpoints and the output directory. Loads tokenizers, never model weights.",
    )
    add_config_arguments(c, "objective.teacher_prefix.lambda=2")
    s = add_command(csub, "show", _show, help="print the resolved config with every default filled in")
    add_config_arguments(s, "objective.teacher_prefix.lambda=2")
    j = add_command(
        csub, "schema", _schema, help="export the JSON Schema of run configs (reflects the installed plugins)"
    )
    j.add_argument("-o", "--output", help="write to this file instead of stdout")
