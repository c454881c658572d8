"""Shared fixtures: a hermetic plugin manager and a minimal valid run config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vcrd_core.plugins.manager import get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

#: Tests see only the built-in plugins, whatever else is installed (tests that add a plugin extend this).
BUILT_IN_PLUGINS = "vcrd"
os.environ["VCRD_PLUGINS"] = BUILT_IN_PLUGINS
os.environ.pop("VCRD_DISABLE_PLUGINS", None)

MINIMAL_CONFIG: dict[str, Any] = {
    "models": {"teacher": {"path": "/models/teacher"}, "student": {"path": "/models/student"}},
    "data": {"train": "/data/train.jsonl"},
    "judge": {"name": "teacher_likelihood"},
}


@pytest.fixture
def register_plugin() -> Iterator[Callable[[object, str], None]]:
    """Register in-process plugins on the real plugin manager; unregistered at teardown (llm's pattern)."""
    pm = get_plugin_manager()
    names: list[str] = []

    def register(plugin: object, name: str) -> None:
        pm.register(plugin, name=name)
        names.append(name)

    yield register
    for name in names:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a YAML config (a dict, or raw text) into tmp_path and return its path."""

    def write(content: dict[str, Any] | str, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


def run_vcrd(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``vcrd`` console script in a real subprocess."""
    exe = shutil.which("vcrd", path=str(VENV_BIN)) or str(VENV_BIN / "vcrd")
    full_env = {**os.environ, **(env or {})}
    full_env.pop("VCRD_DEBUG", None)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)
