"""The ``code`` evaluator's sandbox against hostile programs: each is a failure of its own sample, and the
sample after it is still scored (and passes).

The test stays harmless even if the sandbox were broken: the evaluator runs in a subprocess whose process
count (uid 65534 inherits it) and address space the test caps, under a wall-clock timeout; the network
case only ever targets a listener this test opens on 127.0.0.1; "kill the parent" targets only the
harness process; the files to write or delete are canaries this test created and checks afterwards.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="the code sandbox needs root and unshare"
)

GOOD = "def f():\n    return 1\n"

#: name -> (program, what the error must mention)
HOSTILE = {
    "infinite_loop": ("def f():\n    while True:\n        pass\n", "timed out"),
    "memory": ("def f():\n    x = bytearray(8 << 30)\n    return 1\n", "MemoryError"),
    "fork_bomb": (
        "import os\ndef f():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n"
        "            pass\n",
        "timed out",
    ),
    "write_outside": ("def f():\n    open(WRITE_TARGET, 'w').write('pwned')\n    return 1\n", "Error"),
    "write_outside_repo": ("def f():\n    open(REPO_TARGET, 'w').write('pwned')\n    return 1\n", "Error"),
    "delete_outside": ("import os\ndef f():\n    os.remove(CANARY)\n    return 1\n", "Error"),
    "delete_outside_repo": ("import os\ndef f():\n    os.remove(REPO_CANARY)\n    return 1\n", "Error"),
    "network": (
        "import socket\ndef f():\n    socket.create_connection(('127.0.0.1', PORT), timeout=2).sendall(b'x')\n"
        "    return 1\n",
        "unreachable",
    ),
    "kill_parent": (
        "import os, signal\ndef f():\n    os.kill(HARNESS_PID, signal.SIGKILL)\n    os.kill(os.getppid() or 1, 9)\n"
        "    return 1\n",
        "Error",
    ),
    "sys_exit_at_import": ("import sys\nsys.exit(0)\ndef f():\n    return 1\n", "SystemExit(0)"),
    "os_exit_at_import": ("import os\nos._exit(0)\ndef f():\n    return 1\n", "exit code 0"),
    "exit_in_function": ("def f():\n    raise SystemExit(0)\n", "SystemExit(0)"),
    "fork_and_exit": ("import os\nif os.fork():\n    os._exit(0)\ndef f():\n    return 1\n", "exit code 0"),
    "output_flood": ("def f():\n    while True:\n        print('x' * 65536)\n", "limit"),
}

HARNESS = textwrap.dedent(
    """
    import json, os, sys
    from vcrd_core import create
    from vcrd_core.evaluation.evaluator import EvalItem

    spec = json.loads(sys.argv[1])
    ev = create("evaluators", "code", {"timeout": 3, "memory_mb": 256, "processes": 16, "output_kb": 256,
                                       "workers": 2})
    ev.check()
    # Only this process knows its pid: the "kill the parent" program targets it.
    programs = [p.replace("HARNESS_PID", str(os.getpid())) for p in spec["programs"]]
    items = [EvalItem("containment", i, "", ["assert f() == 1"]) for i in range(len(programs))]
    verdicts = ev.score(items, programs, lambda n: None)
    print(json.dumps([[v.score, v.error] for v in verdicts]))
    """
)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))  # binds the uid-65534 children whatever they do
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


@pytest.mark.slow
def test_hostile_programs_fail_alone_and_harm_nothing(tmp_path: Path) -> None:
    # Canaries: one in a world-writable directory under /tmp (only the private tmpfs protects it), one
    # root-owned outside /tmp (the uid drop protects it).
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    canary = open_dir / "canary.txt"
    canary.write_text("intact")
    canary.chmod(0o666)
    repo_dir = ROOT / ".pytest_cache" / f"vcrd-canary-{os.getpid()}"
    repo_dir.mkdir(parents=True, exist_ok=True)
    repo_canary = repo_dir / "canary.txt"
    repo_canary.write_text("intact")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    names = list(HOSTILE)
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    try:
        constants = {
            "WRITE_TARGET": str(open_dir / "new.txt"),
            "REPO_TARGET": str(repo_dir / "new.txt"),
            "CANARY": str(canary),
            "REPO_CANARY": str(repo_canary),
            "PORT": listener.getsockname()[1],
        }
        prelude = "".join(f"{k} = {v!r}\n" for k, v in constants.items())
        programs = []
        for name in names:
            programs += [prelude + HOSTILE[name][0], GOOD]
        spec = json.dumps({"programs": programs})
        result = subprocess.run(
            [sys.executable, str(harness), spec],
            capture_output=True,
            text=True,
            timeout=240,
            preexec_fn=_limits,
            cwd=ROOT,
        )
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts = json.loads(result.stdout.strip().splitlines()[-1])
    for k, name in enumerate(names):
        (score, error), (good_score, good_error) = verdicts[2 * k], verdicts[2 * k + 1]
        assert score == 0.0, (name, error)
        assert HOSTILE[name][1] in error, (name, error)
        assert good_score == 1.0, (name, good_error)
    assert canary.read_text() == "intact"
    assert repo_canary.read_text() == "intact"
    assert sorted(p.name for p in open_dir.iterdir()) == ["canary.txt"]
    assert sorted(p.name for p in repo_dir.iterdir()) == ["canary.txt"]
    assert accepted == [], "a sandboxed program reached the test's listener"
    shutil.rmtree(repo_dir)
