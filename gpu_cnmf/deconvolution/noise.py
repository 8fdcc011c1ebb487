"""Noise level of many traces from their power spectral density.

White noise has a flat spectrum while calcium transients are slow, so the
upper part of the spectrum (``noise_range``, in units of the sampling rate,
Nyquist = 0.5) sees the noise alone. The trace is cut into Hann-tapered
pieces (Welch's layout); the periodogram of a piece of white noise of
standard deviation sigma, normalised by the taper's energy, averages to
sigma**2 per bin, and its bins are exponentially distributed, which biases a
median or a log-mean by fixed factors that we divide out, so every
``noise_method`` estimates sigma itself from the bins of all pieces pooled.
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
# Frames per tapered piece (Welch's usual length): 64 bins in the default band.
SEGMENT = 256


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
    """Start indices and length of the tapered pieces whose periodogram bins are pooled.

    Pieces of ``SEGMENT`` frames overlap by half (Welch's layout). When that
    would take more than ``max_num_samples_fft`` samples the pieces are spread
    evenly over the whole trace instead (the cost stays bounded, as with
    CaImAn's start/middle/end pieces, but one noisy stretch of the recording
    cannot dominate the estimate).
    """
    n = min(T, SEGMENT)
    step = max(1, n // 2)
    count = 1 + (T - n) // step
    budget = max(3, 2 * int(max_num_samples_fft) // n - 1)
    if count <= budget:
        return [k * step for k in range(count)], n
    return [int(round(k * (T - n) / (budget - 1))) for k in range(budget)], n


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
    # A Hann taper: the sidelobes of a rectangular window decay only as 1/f^2,
    # so large slow transients leak into the high band and inflate sn.
    # The FFT runs in the input's precision (float32 on the device is 4x
    # faster than float64); only the periodogram averages are float64.
    work = Y.dtype if Y.dtype in (torch.float32, torch.float64) else torch.float32
    win = torch.hann_window(n, periodic=False, dtype=torch.float64, device=Y.device)
    win = (win / win.square().sum().sqrt()).to(work)
    step = starts[1] - starts[0] if len(starts) > 1 else n
    regular = all(b - a == step for a, b in zip(starts, starts[1:]))
    idx = (torch.as_tensor(starts, device=Y.device)[:, None]
           + torch.arange(n, device=Y.device)[None, :])             # (pieces, n)
    out = torch.empty(N, dtype=torch.float64, device=Y.device)
    rows = max(1, _FFT_BLOCK // (n * len(starts)))
    for r0 in range(0, N, rows):
        blk = Y[r0:r0 + rows].to(work)
        # (rows, pieces, n): a strided view for Welch's layout, a gather otherwise
        seg = blk.unfold(1, n, step)[:, :len(starts)] if regular else blk[:, idx]
        seg = (seg - seg.mean(dim=2, keepdim=True)) * win
        # every bin of every piece: exponential with mean sigma^2 for white noise
        f = torch.fft.rfft(seg, dim=2).index_select(2, band)
        pxx = torch.view_as_real(f).square().sum(dim=-1).flatten(1).double()
        if noise_method == "mean":
            v = pxx.mean(dim=1)
        elif noise_method == "median":
            v = pxx.median(dim=1).values / _MEDIAN_BIAS
        else:
            v = torch.exp(torch.log(pxx.clamp_min(1e-300)).mean(dim=1)) / _LOGMEXP_BIAS
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
        Bounds the cost: traces longer than this are summarised by about
        2 * max_num_samples_fft / 256 tapered pieces of 256 frames spread
        evenly over the trace.

    Returns
    -------
    sn : ndarray or tensor, (N,) float32
    """
    t, is_numpy = _as_2d_tensor(Y)
    sn = psd_noise(t, noise_range, noise_method, max_num_samples_fft)
    return sn.cpu().numpy() if is_numpy else sn
