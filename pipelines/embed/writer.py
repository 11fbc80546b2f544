"""The embedding file while it is written: one writer thread fed through a queue bounded in
bytes (`WriteQueue`), and the rows it writes."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np


def partial_path(out: Path) -> Path:
    """Where a run writes until it completes (`--resume` continues it)."""
    return out.with_name(out.name + ".partial")


class WriteQueue:
    """One thread that runs every write job of a run, in the order they were put.

    `put(job, nbytes)` blocks while more than `max_bytes` of arrays are queued (memory stays
    bounded however slow the disk or the codec). The first exception raised by a job is kept,
    later jobs are dropped (so no `done` flag follows a failed write), and the exception is
    raised in the caller's thread at its next `put` or at `close`.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.error: BaseException | None = None
        self.busy_s = 0.0  # time spent inside jobs (what the thread took off the main loop)
        self._jobs: deque = deque()
        self._queued = 0  # bytes held by queued jobs
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="mamba-dna-embed-writer",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                job, nbytes = self._jobs.popleft()
            if job is None:
                return
            if self.error is None:
                t = time.perf_counter()
                try:
                    job()
                except BaseException as e:  # handed to the main thread, never swallowed
                    self.error = e
                self.busy_s += time.perf_counter() - t
            with self._cv:
                self._queued -= nbytes
                self._cv.notify_all()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, job: Callable[[], None], nbytes: int = 0) -> None:
        with self._cv:
            while self._queued and self._queued + nbytes > self.max_bytes and self.error is None:
                self._cv.wait()
            self._raise()
            self._jobs.append((job, nbytes))
            self._queued += nbytes
            self._cv.notify_all()

    def close(self) -> None:
        """Run what is queued, stop the thread, raise the first error of a job."""
        if self._thread.is_alive():
            with self._cv:
                self._jobs.append((None, 0))
                self._cv.notify_all()
            self._thread.join()
        self._raise()


def write_rows(ds, s: int, e: int, rows: np.ndarray, is_rc: bool) -> None:
    """Rows [s, e) of one item's per-position dataset; reverse-strand rows are averaged with
    the forward rows already written there."""
    if is_rc:
        rows = (ds[s:e].astype(np.float32) + rows) / 2  # (e-s, d)
    ds[s:e] = rows if rows.dtype == ds.dtype else rows.astype(ds.dtype)
