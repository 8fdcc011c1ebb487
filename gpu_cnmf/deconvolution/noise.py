"""Noise level of many traces from their power spectral density.

White noise has a flat spectrum while calcium transients are slow, so the
upper part of the spectrum (``noise_range``, in units of the sampling rate,
Nyquist = 0.5) sees the noise alone. The periodogram of white noise of
standard deviation sigma averages to sigma**2 per bin (two-sided
normalisation ``|X_k|**2 / T``); its bins are exponentially distributed,
which biases a median or a log-mean by fixed factors that we divide out, so
every ``noise_method`` estimates sigma itself.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ParameterError

NOISE_METHODS = ("mean", "median", "logmexp")
# An exponential variable of mean 1 has median ln 2 and E[log] = -Euler's gamma.
_MEDIAN_BIAS = math.log(2.0)
_LOGMEXP_BIAS = math.exp(-0.5772156649015329)
# Elements per FFT batch: bounds the temporaries of a call on 10^4 x 10^4 traces.
_FFT_BLOCK = 1 << 24


def check_noise_params(noise_range, noise_method, max_num_samples_fft=3072):
    """Validate the preprocess noise parameters; returns ``(lo, hi)``."""
    try:
        lo, hi = (float(v) for v in noise_range)
    except (TypeError, ValueError):
        raise ParameterError(f"noise_range: expected two frequencies (lo, hi), got {noise_range!r}")
    if not 0.0 <= lo < hi <= 0.5:
        raise ParameterError(f"noise_range: expected 0 <= lo < hi <= 0.5 (fraction of the "
                             f"sampling rate), got {noise_range!r}")
    if noise_method not in NOISE_METHODS:
        raise ParameterError(f"noise_method: expected one of {NOISE_METHODS}, got {noise_method!r}")
    if int(max_num_samples_fft) < 16:
        raise ParameterError(f"max_num_samples_fft: expected an int >= 16, got {max_num_samples_fft!r}")
    return lo, hi


def _as_2d_tensor(Y, name="Y"):
    """(N, T) float tensor view of numpy/torch input, plus how to give results back."""
    is_numpy = not isinstance(Y, torch.Tensor)
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(Y))) if is_numpy else Y
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ParameterError(f"{name}: expected a trace (T,) or traces (N, T), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t, is_numpy


def _segments(T, max_num_samples_fft):
    """Start indices and length of the pieces whose periodograms are averaged.

    Long traces are summarised by three pieces (start, middle, end), as CaImAn
    does, so the cost does not grow with T; averaging their periodograms
    (rather than concatenating them) avoids jumps at the seams.
    """
    if T <= max_num_samples_fft:
        return [0], T
    n = max_num_samples_fft // 3
    return [0, T // 2 - n // 2, T - n], n


def psd_noise(Y: torch.Tensor, noise_range=(0.25, 0.5), noise_method="mean",
              max_num_samples_fft=3072) -> torch.Tensor:
    """Noise std of each row of the tensor ``Y`` (N, T); same device, float32."""
    lo, hi = check_noise_params(noise_range, noise_method, max_num_samples_fft)
    N, T = Y.shape
    if T < 8:
        raise ParameterError(f"Y: at least 8 time points are needed to estimate the noise, got {T}")
    starts, n = _segments(T, int(max_num_samples_fft))
    freqs = torch.arange(n // 2 + 1, dtype=torch.float64) / n
    band = ((freqs >= lo) & (freqs <= hi)).nonzero().flatten()
    if band.numel() == 0:
        raise ParameterError(f"noise_range: {noise_range!r} holds no frequency bin for {n} samples")
    band = band.to(Y.device)
    out = torch.empty(N, dtype=torch.float64, device=Y.device)
    rows = max(1, _FFT_BLOCK // (n * len(starts)))
    for r0 in range(0, N, rows):
        blk = Y[r0:r0 + rows].to(torch.float64)
        pxx = 0.0
        for s in starts:
            seg = blk[:, s:s + n]
            seg = seg - seg.mean(dim=1, keepdim=True)
            pxx = pxx + torch.fft.rfft(seg, dim=1).abs().square().index_select(1, band) / n
        pxx = pxx / len(starts)
        if noise_method == "mean":
            v = pxx.mean(dim=1)
        elif noise_method == "median":
            # Averaging k periodograms makes the bins Gamma(k), whose median
            # is closer to the mean; the bias factor below is for k = 1 and
            # is corrected for k = 3 by its Gamma(3) median (2.674 / 3).
            v = pxx.median(dim=1).values / (_MEDIAN_BIAS if len(starts) == 1 else 2.6740603 / 3)
        else:
            v = torch.exp(torch.log(pxx.clamp_min(1e-300)).mean(dim=1))
            # E[log Gamma(k)/k] = digamma(k) - log k: -gamma for k = 1.
            v = v / (_LOGMEXP_BIAS if len(starts) == 1 else math.exp(1.5 - 0.5772156649015329 - math.log(3)))
        out[r0:r0 + rows] = v.sqrt()
    return out.to(torch.float32)


def estimate_noise(Y, noise_range=(0.25, 0.5), noise_method="mean", max_num_samples_fft=3072):
    """Noise standard deviation of each trace (or pixel) from its PSD.

    Parameters
    ----------
    Y : array or tensor, (N, T) or (T,)
        Traces in rows. A torch tensor is processed on its own device (one
        batched FFT per block of rows); numpy input gives numpy output.
    noise_range : (float, float)
        Band of normalised frequencies (0.5 = Nyquist) assumed to hold noise only.
    noise_method : {'mean', 'median', 'logmexp'}
        How the periodogram bins of the band are averaged: arithmetic mean,
        median, or exp(mean(log)). All three are bias-corrected so that each
        estimates the standard deviation of white noise.
    max_num_samples_fft : int
        Traces longer than this are summarised by three pieces of a third of
        this length (start, middle, end) to bound the cost.

    Returns
    -------
    sn : ndarray or tensor, (N,) float32
    """
    t, is_numpy = _as_2d_tensor(Y)
    sn = psd_noise(t, noise_range, noise_method, max_num_samples_fft)
    return sn.cpu().numpy() if is_numpy else sn
