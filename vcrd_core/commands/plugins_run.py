"""``vcrd plugins`` (the parser: :mod:`vcrd_core.commands.plugins`): the installed components per kind and the
distribution providing each.

A listing, so it exits 0 even when a plugin is broken or a ``VCRD_PLUGINS`` / ``VCRD_DISABLE_PLUGINS``
name matches nothing: each of those is one ``warning:`` line on stderr (and in ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vcrd_core.plugins.kinds import KINDS
from vcrd_core.plugins.manager import filter_warnings, get_plugin_manager, plugin_info
from vcrd_core.plugins.registry import entries, failures
from vcrd_core.runs.console import console


def listing() -> dict[str, Any]:
    """Plugins, components per kind, plugins that failed to load (whole, or for one kind) and filter
    names that matched nothing, as plain data."""
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
    failed = [
        {"entry_point": f.entry_point, "distribution": f.distribution, "kind": f.kind, "message": f.message}
        for f in failures()
    ]
    return {"plugins": plugins, "components": components, "failures": failed, "filter_warnings": filter_warnings()}


def run(args: argparse.Namespace) -> int:
    data = listing()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from rich.markup import escape
        from rich.table import Table

        out = console()
        for kind, items in data["components"].items():
            if not items:
                continue
            table = Table(title=kind, title_justify="left", show_lines=False)
            for col in ("name", "distribution", "summary"):
                table.add_column(col)
            for item in items:
                cells = (item["name"], f"{item['distribution']} {item['version']}".strip(), item["summary"])
                table.add_row(*(escape(c) for c in cells))  # plugin text is not rich markup
            out.print(table)
    for line in [*filter_warnings(), *map(str, failures())]:
        print(f"warning: {line}", file=sys.stderr)
    return 0
