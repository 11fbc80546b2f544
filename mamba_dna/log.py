"""Progress and logs on stderr: rich on a terminal, plain periodic lines otherwise.

stdout is reserved for results (TSV, paths). Batch jobs (no TTY) get plain lines that a
log file can hold, at most one every `interval` seconds per task.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True, highlight=False)


def is_tty() -> bool:
    return sys.stderr.isatty()


def info(msg: str) -> None:
    """One log line on stderr."""
    if is_tty():
        console.print(msg)
    else:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class _PlainTask:
    def __init__(self, desc: str, total: float | None, interval: float, unit: str):
        self.desc, self.total, self.interval, self.unit = desc, total, interval, unit
        self.done = 0.0
        self.t0 = self.last = time.time()

    def advance(self, n: float = 1, note: str = "") -> None:
        self.done += n
        now = time.time()
        if now - self.last >= self.interval or (self.total and self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            tot = f"/{self.total:g}" if self.total else ""
            info(f"{self.desc}: {self.done:g}{tot} {self.unit} ({rate:,.1f} {self.unit}/s) {note}")


class _RichTask:
    def __init__(self, progress, task_id):
        self.progress, self.task_id = progress, task_id

    def advance(self, n: float = 1, note: str = "") -> None:
        self.progress.update(self.task_id, advance=n, note=note)


class _NoTask:
    """What `progress(..., enabled=False)` yields: advances are accepted and ignored."""

    def advance(self, n: float = 1, note: str = "") -> None:
        pass


@contextmanager
def progress(desc: str, total: float | None = None, unit: str = "it", interval: float = 10.0,
             enabled: bool = True):
    """`with progress("scoring", total=n, unit="variants") as p: p.advance(k)`.

    `enabled=False` (e.g. on a non-zero rank) shows nothing; the same code path runs.
    """
    if not enabled:
        yield _NoTask()
        return
    if not is_tty():
        task = _PlainTask(desc, total, interval, unit)
        yield task
        elapsed = time.time() - task.t0
        info(f"{desc}: done, {task.done:g} {unit} in {elapsed:.1f}s")
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        transient=False,
    ) as prog:
        tid = prog.add_task(desc, total=total, note="")
        yield _RichTask(prog, tid)
