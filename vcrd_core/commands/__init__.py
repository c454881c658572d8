"""CLI subcommands, one module each: ``add_parser(subparsers)`` registers it and sets ``func=run``;
``run(args) -> int`` returns the exit code. The helpers here are the parts every command's parser shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Register the subcommand ``name``, which runs ``func(args)``; returns its parser for the arguments."""
    parser = sub.add_parser(name, help=help, description=description)
    parser.set_defaults(func=func)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """The run config positional (``args.file``) and the repeatable ``--set PATH=VALUE`` (``args.set``);
    ``example`` is a ``PATH=VALUE`` the help shows."""
    parser.add_argument("file", metavar="CONFIG", help="run config (YAML)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help=f"override one config value, e.g. --set {example} (repeatable; VALUE is YAML)",
    )
