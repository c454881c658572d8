"""``vcrd plugins``: the parser (what runs: :mod:`vcrd_core.commands.plugins_run`)."""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "plugins",
        "vcrd_core.commands.plugins_run:run",
        help="list installed components and the distributions providing them",
        description="List every installed component per kind (divergences, weighting, judges, ...) with the "
        "distribution and version that provides it. A plugin that failed to load, and a VCRD_PLUGINS / "
        "VCRD_DISABLE_PLUGINS name that matches no installed plugin, are one warning line each on stderr.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
