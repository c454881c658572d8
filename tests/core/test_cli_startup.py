"""Start-up of the ``vcrd`` command line: ``--help``, ``--version`` and every ``COMMAND --help`` import none of the
engine's heavy dependencies, and the commands that load plugins never import the trainer's stack.

Each case runs a real subprocess with Python's import profiler (``-X importtime``, or
``PYTHONPROFILEIMPORTTIME=1`` for the installed ``vcrd`` script) and reads the modules it imported from stderr;
a control case shows that the parse does see torch when it is imported. No timing is asserted (BENCHMARKS.md,
"CLI start-up", has the measured times).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import MINIMAL_CONFIG, VENV_BIN
from vcrd_core.cli import COMMANDS

#: What ``--help`` and ``--version`` must not import.
HEAVY = ("torch", "transformers", "peft", "pyarrow", "datasets")
#: The trainer's stack: never imported by ``vcrd plugins`` or ``vcrd config validate``.
TRAINER_STACK = ("transformers", "peft", "accelerate")
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")


def _imported(result: subprocess.CompletedProcess[str]) -> set[str]:
    """Every module named in ``-X importtime``'s report on stderr."""
    return {m.group(1) for line in result.stderr.splitlines() if (m := IMPORT_LINE.match(line))}


def _run(argv: list[str], *, script: bool = False) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {k: v for k, v in os.environ.items() if k != "VCRD_DEBUG"}
    if script:  # the console script pip installed, as a user types it
        cmd = [str(VENV_BIN / "vcrd"), *argv]
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    else:
        cmd = [sys.executable, "-X", "importtime", *argv]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return result, _imported(result)


def _heavy(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in packages)


HELP_CASES = [
    ["--help"],
    ["--version"],
    *([name, "--help"] for name in (*COMMANDS, "sft")),
    ["config", "validate", "--help"],
    ["config", "check", "--help"],
]


@pytest.mark.parametrize("argv", HELP_CASES, ids=" ".join)
def test_help_and_version_import_no_heavy_module(argv: list[str]) -> None:
    result, modules = _run(["-m", "vcrd_core", *argv])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vcrd 0.1.0" in result.stdout if argv == ["--version"] else "usage: vcrd" in result.stdout
    assert "vcrd_core.cli" in modules  # the report was read (a parse that finds nothing would pass vacuously)
    assert _heavy(modules, HEAVY) == []


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"], ["eval", "--help"]], ids=" ".join)
def test_the_installed_script_imports_no_heavy_module(argv: list[str]) -> None:
    result, modules = _run(argv, script=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vcrd_core.cli" in modules
    assert _heavy(modules, HEAVY) == []


def test_the_import_report_does_show_torch_when_it_is_imported() -> None:
    result, modules = _run(["-c", "import vcrd_core.decision_points"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch" in modules and "vcrd_core.decision_points" in modules


def test_importing_the_package_imports_nothing_heavy_and_names_resolve_on_use() -> None:
    code = (
        f"HEAVY = {HEAVY!r}\n"
        "import sys, vcrd_core\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)\n"
        "assert heavy == [], heavy\n"
        "from vcrd_core import Judge, create\n"
        "import vcrd_core.judging.judge as j\n"
        "assert Judge is j.Judge and vcrd_core.TokenJudge is j.TokenJudge and callable(create)\n"
        "assert set(vcrd_core.__all__) <= set(dir(vcrd_core))\n"
        "assert all(hasattr(vcrd_core, name) for name in vcrd_core.__all__)\n"
        "try:\n    vcrd_core.NoSuchName\nexcept AttributeError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "module 'vcrd_core' has no attribute 'NoSuchName'"


def test_plugins_and_config_validate_never_import_the_trainers_stack(write_config) -> None:
    config = write_config(MINIMAL_CONFIG)
    for argv in (["plugins"], ["config", "validate", str(config)]):
        result, modules = _run(["-m", "vcrd_core", *argv])
        assert result.returncode == 0, result.stderr[-2000:]
        assert "vcrd_core.plugins.registry" in modules
        assert _heavy(modules, TRAINER_STACK) == [], argv


def test_analyze_help_states_the_analysis_defaults() -> None:
    from vcrd_core.commands import analyze
    from vcrd_core.judging import analysis

    assert analyze.PARITY_TOL_HELP == analysis.DEFAULT_PARITY_TOL
    assert (analyze.STATS_FILE_HELP, analyze.HISTOGRAM_FILE_HELP) == (analysis.STATS_FILE, analysis.HISTOGRAM_FILE)


def test_every_command_runs_a_handler_that_exists() -> None:
    import argparse

    from vcrd_core.cli import build_parser
    from vcrd_core.commands import load_handler

    def handlers(parser: argparse.ArgumentParser) -> list[str]:
        found = [parser.get_default("func")] if parser.get_default("func") else []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += handlers(sub)
        return found

    names = handlers(build_parser())
    assert len(names) == 14  # plugins, config x4, rollouts, score, teacher-cache, train, sft, eval, analyze, grid, prm
    for name in names:
        assert isinstance(name, str) and callable(load_handler(name)), name
