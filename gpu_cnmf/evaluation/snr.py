"""Trace SNR from the exceptionality of its events (CaImAn's ``SNR_comp``).

A component's raw trace is ``C + YrA`` (the denoised calcium ``C`` plus the
residual ``YrA`` the model leaves on it). Its baseline is the mode of its
values (the half-sample mode, robust to the skew that transients add) and its
noise ``sd`` the RMS of the excursions *below* the baseline, which transients
never produce. Each frame then gets the log-probability, under that
Gaussian noise, of a value at least as high; a real transient makes ``N``
consecutive frames improbable, so the fitness of a trace is the smallest sum
of log-probabilities over any ``N`` consecutive frames, ``N`` being one decay
time (``ceil(decay_time * fr)``). The SNR is the z-score whose one-sided
tail has the window's mean probability: ``-Phi^-1(exp(fitness / N))``.

As in CaImAn, the z-scores are taken in units of ``3 sd``, which calibrates
the thresholds ``min_SNR`` (2.5) and ``SNR_lowest`` (0.5): pure noise scores
well under 1, a clear transient several.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..backend import get_device, to_numpy, to_tensor
from ..errors import ParameterError

__all__ = ["mode_robust", "event_exceptionality", "snr_from_fitness", "compute_snr",
           "n_samples_event"]


def mode_robust(x: torch.Tensor) -> torch.Tensor:
    """Half-sample mode of each row of ``x`` (Bickel & Fruehwirth 2006).

    Repeatedly keep the half of the sorted values with the smallest range;
    all rows have the same length, so every step is one batched gather.
    """
    xs, _ = torch.sort(x, dim=-1)
    rows, n = xs.shape
    lo = torch.zeros(rows, dtype=torch.long, device=x.device)
    while n > 3:
        w = (n + 1) // 2
        start = lo[:, None] + torch.arange(n - w + 1, device=x.device)[None, :]
        span = xs.gather(1, start + w - 1) - xs.gather(1, start)
        lo = lo + span.argmin(1)
        n = w
    a = xs.gather(1, lo[:, None]).squeeze(1)
    if n == 1:
        return a
    b = xs.gather(1, (lo + 1)[:, None]).squeeze(1)
    if n == 2:
        return (a + b) / 2
    c = xs.gather(1, (lo + 2)[:, None]).squeeze(1)
    left, right = b - a, c - b
    return torch.where(left < right, (a + b) / 2, torch.where(left > right, (b + c) / 2, b))


def n_samples_event(fr: float, decay_time: float) -> int:
    """Frames in one event: ``ceil(fr * decay_time)``, at least 1."""
    if not (fr and fr > 0):
        raise ParameterError(f"fr: expected a positive frame rate, got {fr!r}")
    if decay_time is None or decay_time <= 0:
        raise ParameterError(f"decay_time: expected a positive time in s, got {decay_time!r}")
    return max(1, int(math.ceil(fr * decay_time - 1e-9)))


def event_exceptionality(traces: torch.Tensor, N: int = 5, robust_std: bool = False
                         ) -> torch.Tensor:
    """Fitness of each trace: the lowest sum of log tail probabilities over
    ``N`` consecutive frames (more negative = more exceptional events).

    Parameters
    ----------
    traces : tensor (K, T)
    N : int
        Event length in frames.
    robust_std : bool
        Noise from the median absolute deviation of the lower half instead of
        its RMS.
    """
    x = traces.to(torch.float64)
    K, T = x.shape
    md = mode_robust(x)
    d = x - md[:, None]
    below = (-d).clamp_min(0)
    if robust_std:
        low = torch.where(d < 0, -d, torch.full_like(d, float("nan")))
        sd = 1.4826 * torch.nanmedian(low, dim=1).values
    else:
        n_below = (d < 0).sum(1).clamp_min(1)
        sd = torch.sqrt((below * below).sum(1) / n_below)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd) * torch.finfo(torch.float64).eps)
    z = d / (3 * sd[:, None])
    logp = torch.special.log_ndtr(-z)          # log P(noise >= observed)
    n = min(int(N), T)
    csum = torch.nn.functional.pad(torch.cumsum(logp, 1), (1, 0))
    window = csum[:, n:] - csum[:, :-n]         # sums over n consecutive frames
    return window.min(1).values


def snr_from_fitness(fitness: torch.Tensor, N: int) -> torch.Tensor:
    """``-Phi^-1(exp(fitness / N))``, stable where the probability underflows."""
    m = fitness.to(torch.float64) / max(int(N), 1)
    p = torch.exp(m)
    snr = -torch.special.ndtri(p.clamp(max=1.0))
    deep = m < -600
    if deep.any():
        # invert log Phi(-x) = m by Newton from the asymptote x ~ sqrt(-2 m)
        x = torch.sqrt(-2 * m[deep])
        for _ in range(8):
            g = torch.special.log_ndtr(-x) - m[deep]
            logphi = -0.5 * x * x - 0.5 * math.log(2 * math.pi)
            slope = -torch.exp(logphi - torch.special.log_ndtr(-x))
            x = x - g / slope
        snr[deep] = x
    return snr


def compute_snr(traces, fr: float, decay_time: float, use_cuda=False,
                robust_std: bool = False) -> np.ndarray:
    """SNR of each row of ``traces`` (``C + YrA``), CaImAn's ``SNR_comp``.

    Parameters
    ----------
    traces : array or tensor (K, T)
    fr, decay_time : float
        Frame rate (Hz) and transient decay (s); an event lasts
        ``ceil(fr * decay_time)`` frames.

    Returns
    -------
    ndarray (K,) float64
    """
    device = get_device(use_cuda)
    t = to_tensor(traces, device, dtype=torch.float64)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ParameterError(f"traces: expected (K, T), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        return np.zeros(0)
    N = n_samples_event(fr, decay_time)
    return to_numpy(snr_from_fitness(event_exceptionality(t, N, robust_std), N))
