"""What the memory benchmarks share: each variant runs in a fresh process of the same script (so that its
peak RSS is its own), times its step, and reports one JSON line back to the parent.

The workers run with ``MALLOC_MMAP_THRESHOLD_=1MiB``: blocks of 1 MiB or more are mmapped and returned to
the OS when freed, so RSS tracks live tensors (glibc otherwise raises its mmap threshold after the first
frees and keeps freed chunks in the heap). This adds page-fault time to every variant alike.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Start the peak (VmHWM) afresh: building the inputs must not count (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    """The process's peak RSS (``VmHWM``; ``ru_maxrss`` where /proc has none)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median_seconds(step: Callable[[], T], *, warmup: int, repeats: int) -> tuple[float, T]:
    """``step`` run ``warmup`` times untimed, then ``repeats`` times: the median seconds and the last result."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def report(variant: str, seconds: float, peak_bytes: int) -> None:
    """The worker's one JSON line for the parent (:func:`run_worker`)."""
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_bytes": peak_bytes}))


def run_worker(script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """Run ``script`` again in a fresh process with this process's arguments plus ``args``; returns the
    process and its :func:`report` (None when it failed)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    cmd = [sys.executable, script, *sys.argv[1:], *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        return proc, None
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
