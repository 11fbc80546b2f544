"""Small helpers shared by the bench/ scripts (run as `python bench/X.py`, so this folder is
on sys.path and `import _common` finds this file)."""

from __future__ import annotations

import platform
import time


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    cpu = platform.processor() or platform.machine() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def best_of(fn, repeats: int) -> float:
    """Minimum wall time of `repeats` calls of fn() (shared machines: the least disturbed)."""
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)
