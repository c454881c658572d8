"""``vcrd config validate|check|show|schema`` (the parser: :mod:`vcrd_core.commands.config`): static checks of
run configs (``validate``, ``show``, ``schema``: no model, no path) and the run-time checks (``check``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from vcrd_core.config.loader import load_config, resolved_dict, validate_components
from vcrd_core.config.schema import config_schema
from vcrd_core.errors import VcrdError
from vcrd_core.runs.preflight import check_all


def validate(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    n = len(validate_components(config))
    print(f"{args.file}: valid ({n} components; scoring mode {config.scoring.mode})")
    return 0


def check(args: argparse.Namespace) -> int:
    """Every problem :func:`~vcrd_core.runs.preflight.check_all` finds, one ``error:`` line each on stderr
    (exit 2), or one "ready to run" line. An invalid config is the one problem reported alone (``load_config``
    raises it): nothing else can be checked without it."""
    config = load_config(args.file, args.set)  # both validation phases
    found = check_all(config)
    for problem in found.problems:
        print(f"error: {problem}", file=sys.stderr)
    if found.problems or found.preflight is None:
        return 2
    prompts = "; ".join(
        f"{where}: {len(p.prompts)} prompts"
        + (f" ({len(p.dropped)} over max_prompt_length dropped)" if p.dropped else "")
        for where, p in found.prompts.items()
    )
    print(
        f"{args.file}: ready to run (shared tokenizer, {found.preflight.vocab_size} ids; {prompts}; models, judges "
        "and output directory checked)"
    )
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
