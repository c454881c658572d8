"""The one place vcrd makes a rich console: full-width output when it goes to a log or a pipe.

Rich sizes a console that is not a terminal at 80 columns, so that a table printed into a log file or a
pipe (``vcrd score ... | tee log``, a cluster job's stdout) comes out with its headers truncated
("attenuat…"), its numbers cut ("-0.0066…") or wrapped over several lines. :func:`console` gives such a
console :data:`PIPE_WIDTH` columns instead (tables are never wider than what they hold, so nothing is
padded); a terminal keeps its own width. ``COLUMNS`` (a positive integer) sets the width either way.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Columns of a console whose output is not a terminal (and ``COLUMNS`` is not set).
PIPE_WIDTH = 1000


def columns_from_env() -> int | None:
    """``COLUMNS`` when it is a positive integer, else None."""
    value = os.environ.get("COLUMNS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def console(stderr: bool = False, *, quiet: bool = False) -> Console:
    """A rich console on stdout (``stderr=True``: stderr): the terminal's width on a terminal, ``COLUMNS``
    when set, else :data:`PIPE_WIDTH` (a log or a pipe). ``quiet``: prints nothing."""
    out = Console(stderr=stderr, quiet=quiet)
    width = columns_from_env()
    if width is not None:
        out.width = width
    elif not out.is_terminal:
        out.width = PIPE_WIDTH
    return out


def progress(console: Console, unit: str = "prompts") -> Progress:
    """The progress bar of the long loops (rollouts, scoring, evaluation): done / total ``unit``, a ``rate`` field,
    elapsed time and ETA, on ``console``."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
