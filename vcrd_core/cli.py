"""``vcrd`` command line: one module per subcommand under :mod:`vcrd_core.commands`.

Start-up is cheap: the parsers import nothing heavy, and a command's engine modules (torch, transformers,
PEFT, pyarrow ...) are imported only when it runs, so ``vcrd --help``, ``vcrd --version`` and
``vcrd COMMAND --help`` answer at once (BENCHMARKS.md, "CLI start-up").

A user's mistake (:class:`vcrd_core.errors.VcrdError`) prints one line on stderr and exits 2, with no
traceback; ``VCRD_DEBUG=1`` shows the traceback. SIGTERM (a scheduler's stop, ``kill``) is turned into an
exception like Ctrl-C, so that a file being written atomically is removed, not left half-written beside its
target, and the command exits 143.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from vcrd_core import __version__
from vcrd_core.commands import load_handler
from vcrd_core.errors import VcrdError, VcrdWarning

#: Subcommand modules in ``vcrd --help`` order.
COMMANDS: tuple[str, ...] = (
    "plugins", "config", "rollouts", "score", "teacher-cache", "train", "eval", "analyze", "grid", "prm"
)  # fmt: skip


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when ``argv`` names a subcommand, only that command's parser module is imported."""
    parser = argparse.ArgumentParser(
        prog="vcrd",
        description="Validity-Calibrated Reasoning Distillation: judge-weighted skew-KL distillation of LMs.",
    )
    parser.add_argument("--version", action="version", version=f"vcrd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    first = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name in (first,) if first in COMMANDS else COMMANDS:
        importlib.import_module(f"vcrd_core.commands.{name.replace('-', '_')}").add_parser(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (see the module docstring)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _show_warning(message: object, category: type[Warning], *args: object, **kwargs: object) -> None:
    """vcrd's own warnings as one ``warning:`` line on stderr; others as Python shows them."""
    if issubclass(category, VcrdWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, *args, **kwargs)  # type: ignore[arg-type]


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.showwarning = _show_warning
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)  # a handler someone else installed stays
    try:
        return int(load_handler(args.func)(args) or 0)
    except VcrdError as exc:
        if os.environ.get("VCRD_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
