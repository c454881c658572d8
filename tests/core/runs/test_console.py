"""``vcrd_core.runs.console``: a table wider than 80 columns printed into a real pipe comes out whole."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

HEADERS = ["combination", "score/teacher_prefix/attenuation", "score/student_prefix/amplification", "train/seconds"]
ROW = ["clamp max 1 (no amplification)", "-0.006612345678", "0.912345678901", "123.456789"]

SCRIPT = f"""
import sys
from rich.console import Console
from rich.table import Table
from vcrd_core.runs.console import console

table = Table(title="grid")
for name in {HEADERS!r}:
    table.add_column(name, justify="right")
table.add_row(*{ROW!r})
out = Console() if sys.argv[1] == "plain" else console(stderr=sys.argv[1] == "stderr")
out.print(table)
"""


def _print(which: str, columns: str | None = None) -> str:
    unset = ("COLUMNS", "FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if columns is not None:
        env["COLUMNS"] = columns
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, which], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )  # stdout and stderr are pipes: not a terminal
    assert proc.returncode == 0, proc.stderr
    return proc.stderr if which == "stderr" else proc.stdout


def _whole(text: str) -> bool:
    """Every header and value on one line each (the row's line holds every value, unbroken)."""
    lines = text.splitlines()
    header = [line for line in lines if HEADERS[1] in line]
    row = [line for line in lines if ROW[0] in line]
    return len(header) == 1 and all(h in header[0] for h in HEADERS) and len(row) == 1 and all(v in row[0] for v in ROW)


def test_a_wide_table_into_a_pipe_is_printed_whole_on_stdout_and_stderr() -> None:
    for which in ("stdout", "stderr"):
        text = _print(which)
        assert _whole(text), text
        assert max(len(line) for line in text.splitlines()) > 80
        assert "…" not in text


def test_plain_rich_into_a_pipe_cuts_the_same_table_at_80_columns() -> None:
    text = _print("plain")  # what the factory exists for: rich alone wraps or truncates it
    assert not _whole(text)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_columns_sets_the_width() -> None:
    text = _print("stdout", columns="90")
    assert max(len(line) for line in text.splitlines()) <= 90 and not _whole(text)
    assert _whole(_print("stdout", columns="400"))
