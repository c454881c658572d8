"""``vcrd config validate|check|show|schema`` (the parser: :mod:`vcrd_core.commands.config`): static checks of
run configs (``validate``, ``show``, ``schema``: no model, no path) and the run-time checks (``check``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from vcrd_core.config.loader import load_config, resolved_dict, validate_components
from vcrd_core.config.schema import config_schema
from vcrd_core.errors import VcrdError
from vcrd_core.runs.preflight import preflight


def validate(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    n = len(validate_components(config))
    print(f"{args.file}: valid ({n} components; scoring mode {config.scoring.mode})")
    return 0


def check(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    found = preflight(config)
    print(f"{args.file}: ready to run (shared tokenizer, {found.vocab_size} ids; paths and judges checked)")
    return 0


def show(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    print(yaml.safe_dump(resolved_dict(config), sort_keys=False), end="")
    return 0


def schema(args: argparse.Namespace) -> int:
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
