"""Provenance of a run (DESIGN.md §2.8): what ran, with which versions, from which commit.

Every output directory holds the resolved config (``config.yaml``) and ``provenance.json``: the versions
of vcrd and of every plugin distribution whose components the config uses, the key libraries, the git
commit of the vcrd source when it is a checkout, the seed and the scoring mode.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from vcrd_core import __version__
from vcrd_core.config.loader import iter_components, resolved_dict
from vcrd_core.config.models import RunConfig
from vcrd_core.plugins.registry import entries
from vcrd_core.runs.atomic import atomic_write_text

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "pluggy", "pydantic")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(path: Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (vcrd's source), or None."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def component_providers(config: RunConfig) -> dict[str, dict[str, str]]:
    """For every ``{name, params}`` block of ``config`` (by YAML path): the component, the plugin (entry point)
    that registered it and its distribution."""
    found: dict[str, dict[str, str]] = {}
    for path, component in iter_components(config):
        entry = entries(component.kind)[component.name]
        found[path] = {
            "kind": component.kind,
            "name": component.name,
            "plugin": entry.provider.name,
            "distribution": entry.provider.distribution,
            "version": entry.provider.version,
        }
    return found


def provenance(config: RunConfig, **extra: Any) -> dict[str, Any]:
    """The provenance record of a run of ``config`` (``extra`` is merged in, e.g. derived seeds)."""
    components = component_providers(config)
    plugins = {c["distribution"]: c["version"] for c in components.values()}
    return {
        "vcrd": __version__,
        "plugins": dict(sorted(plugins.items())),
        "components": components,
        "libraries": {lib: _version(lib) for lib in LIBRARIES},
        "python": platform.python_version(),
        "git": git_state(),
        "seed": config.seed,
        "scoring_mode": config.scoring.mode,
        "command": sys.argv,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def write_run_metadata(output_dir: str | Path, config: RunConfig, **extra: Any) -> dict[str, Any]:
    """Write ``config.yaml`` (resolved, defaults filled in) and ``provenance.json`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = provenance(config, **extra)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved_dict(config), sort_keys=False))
    atomic_write_text(out / "provenance.json", json.dumps(record, indent=2) + "\n")
    return record


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The first place two recorded setups (nested JSON-like values) differ, as one phrase
    (``scoring.seed: 3 then, 4 now``), or None when they are equal. Used to refuse mixing runs and stores."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if old == new:
        return None
    return f"{path or 'value'}: {json.dumps(old, default=str)} then, {json.dumps(new, default=str)} now"
