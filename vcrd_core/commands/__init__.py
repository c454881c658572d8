"""CLI subcommands. Each command is two modules: ``<name>.py`` builds its parser and imports nothing heavier
than argparse (``vcrd --help``, ``vcrd --version`` and ``vcrd <name> --help`` import only those), and
``<name>_run.py`` holds what runs, with the engine's imports (torch, transformers, ...).

``<name>.add_parser(subparsers)`` registers the command with ``func="vcrd_core.commands.<name>_run:<function>"``;
the CLI imports that module only when the command runs (:func:`load_handler`), and ``<function>(args) -> int``
returns the exit code. The helpers here are the parts every command's parser shares.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

#: What a command runs: ``handler(args) -> exit code``.
Handler = Callable[[argparse.Namespace], int]


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: str | Handler,
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Register the subcommand ``name``, which runs ``func(args)``; ``func`` is a handler or, so that the
    parser imports nothing heavy, its ``"module:function"`` name. Returns its parser for the arguments."""
    parser = sub.add_parser(name, help=help, description=description)
    parser.set_defaults(func=func)
    return parser


def load_handler(func: str | Handler) -> Handler:
    """The handler ``func`` names (``"module:function"``, imported now), or ``func`` itself."""
    if callable(func):
        return func
    module, _, name = func.partition(":")
    return getattr(importlib.import_module(module), name)


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


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1 (argparse prints the usage and this one line otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value
