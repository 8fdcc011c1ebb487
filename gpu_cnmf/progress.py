"""Progress of long stages, on a terminal and in a log.

:func:`progress` wraps tqdm: the bar shows on terminals only (tqdm's
``disable=None``), and every ``log_every`` of the total a line goes to the
``gpu_cnmf`` logger, so a batch job whose output goes to a file still shows
where it is.
"""
from __future__ import annotations

import logging
import time

from tqdm.auto import tqdm

log = logging.getLogger("gpu_cnmf")

__all__ = ["progress", "log_step"]


class progress(tqdm):
    """A tqdm bar that also logs a line each ``log_every`` fraction of ``total``.

    Parameters
    ----------
    iterable : iterable, optional
    total : int, optional
    desc : str
        The stage's name, used in the bar and in the log lines.
    unit : str
    log_every : float
        Fraction of ``total`` between log lines (0.1: a line every 10 %).
    **kwargs
        Passed to tqdm.
    """

    def __init__(self, iterable=None, total=None, desc="", unit="it", log_every=0.1, **kwargs):
        kwargs.setdefault("disable", None)
        kwargs.setdefault("leave", False)
        super().__init__(iterable, total=total, desc=desc, unit=unit, **kwargs)
        self._log_desc = desc
        self._log_unit = unit
        self._log_step = max(1, int(round((total or 0) * log_every))) if total else None
        self._log_next = self._log_step
        self._log_done = 0
        self._log_t0 = time.perf_counter()

    def _log_advance(self, n):
        self._log_done += n
        if self._log_step is None or self._log_done < self._log_next:
            return
        while self._log_next <= self._log_done:
            self._log_next += self._log_step
        sec = time.perf_counter() - self._log_t0
        log.info("%s: %d/%d %s (%.0f%%) in %.1f s", self._log_desc, self._log_done,
                 self.total, self._log_unit, 100.0 * self._log_done / self.total, sec)

    def update(self, n=1):
        self._log_advance(n)
        return super().update(n)

    def __iter__(self):
        # tqdm's fast path bypasses update(); count here instead
        for item in super().__iter__():
            yield item
            self._log_advance(1)


def log_step(stage: str, step: str, seconds: float, n_components: int | None = None) -> None:
    """One log line for a step of a long stage that has no bar (the
    whole-field updates of CNMF): ``stage: step done in s (K components)``."""
    extra = "" if n_components is None else f" ({n_components} components)"
    log.info("%s: %s done in %.1f s%s", stage, step, seconds, extra)


def tick(timings: dict, name: str, t0: float, stage: str | None = None,
         n_components: int | None = None) -> float:
    """Add the seconds since ``t0`` to ``timings[name]``, with a
    :func:`log_step` line when ``stage`` is given; returns the time now
    (the next step's ``t0``)."""
    dt = time.perf_counter() - t0
    timings[name] = timings.get(name, 0.0) + dt
    if stage:
        log_step(stage, name, dt, n_components)
    return time.perf_counter()
