"""``vcrd plugins``: the installed components per kind and the distribution providing each."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vcrd_core.plugins.kinds import KINDS
from vcrd_core.plugins.manager import get_plugin_manager, load_failures, plugin_info
from vcrd_core.plugins.registry import entries


def listing() -> dict[str, Any]:
    """Plugins, components per kind and load failures, as plain data."""
    pm = get_plugin_manager()
    plugins = []
    for name, plugin in pm.list_name_plugin():
        info = plugin_info(plugin)
        plugins.append({"name": name, "distribution": info.distribution, "version": info.version})
    components: dict[str, list[dict[str, str]]] = {}
    for kind in KINDS:
        components[kind] = [
            {
                "name": e.name,
                "distribution": e.provider.distribution,
                "version": e.provider.version,
                "plugin": e.provider.name,
                "summary": e.summary,
            }
            for e in sorted(entries(kind).values(), key=lambda e: e.name)
        ]
    failures = [
        {"entry_point": f.entry_point, "distribution": f.distribution, "message": f.message} for f in load_failures()
    ]
    return {"plugins": plugins, "components": components, "failures": failures}


def run(args: argparse.Namespace) -> int:
    data = listing()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        for kind, items in data["components"].items():
            if not items:
                continue
            table = Table(title=kind, title_justify="left", show_lines=False)
            for col in ("name", "distribution", "summary"):
                table.add_column(col)
            for item in items:
                cells = (item["name"], f"{item['distribution']} {item['version']}".strip(), item["summary"])
                table.add_row(*(escape(c) for c in cells))  # plugin text is not rich markup
            console.print(table)
    for failure in load_failures():
        print(f"error: {failure}", file=sys.stderr)
    return 1 if data["failures"] else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "plugins",
        help="list installed components and the distributions providing them",
        description="List every installed component per kind (divergences, weighting, judges, ...) with the "
        "distribution and version that provides it. Exits 1 if a plugin failed to load.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
