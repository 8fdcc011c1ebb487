"""Peak anonymous memory of a process and its children, sampled from /proc.

What counts is what :func:`gpu_cnmf.backend.anon_memory` counts: RssAnon +
RssShmem of each process (the page cache of memory-mapped movies is left
out: the kernel reclaims it). The kernel keeps no high-water mark of
anonymous memory alone (``VmHWM`` includes file pages), so a thread samples
it every ``interval`` seconds; a peak shorter than the interval can be
missed, which is why tests keep a margin rather than read it to the byte.

Used by ``benchmarks/scale.py`` and ``tests/test_memory.py``.
"""
from __future__ import annotations

import os
import threading

from .backend import anon_memory

__all__ = ["tree_anon_memory", "PeakMemory"]


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    out += [int(c) for c in fh.read().split()]
            except OSError:
                continue
    except OSError:
        pass
    return out


def tree_anon_memory(pid: int) -> int:
    """Anonymous bytes of ``pid`` and all its descendants (worker processes)."""
    total, todo, seen = 0, [int(pid)], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += anon_memory(p)
        todo += _children(p)
    return total


class PeakMemory:
    """Sample the anonymous memory of process ``pid``'s tree in a thread.

    Examples
    --------
    >>> proc = subprocess.Popen([...])                       # doctest: +SKIP
    >>> with PeakMemory(proc.pid) as mem:                     # doctest: +SKIP
    ...     proc.wait()
    >>> mem.peak                                              # doctest: +SKIP
    """

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = int(pid)
        self.interval = float(interval)
        self.peak = 0
        self.n_samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            now = tree_anon_memory(self.pid)
            self.peak = max(self.peak, now)
            self.n_samples += 1
            self._stop.wait(self.interval)

    def start(self) -> "PeakMemory":
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling; returns the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
