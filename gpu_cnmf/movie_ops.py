"""Whole-movie operations on ``(T, d1, d2[, d3])`` arrays: resampling in
space and time, baseline removal / ΔF/F over a running percentile, and the
median of binned means (a robust template). Used by the CaImAn-style
``movie`` class; plain arrays in, arrays out.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ParameterError

__all__ = ["resize", "running_baseline", "compute_dff", "bin_median"]


def _scaled(n, factor, name):
    if not np.isfinite(factor) or factor <= 0:
        raise ParameterError(f"{name}: expected a positive scale factor, got {factor!r}")
    m = int(round(n * factor))
    if m < 1:
        raise ParameterError(f"{name}={factor}: an axis of {n} would shrink to nothing")
    return m


def _resample_axis(x: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """Resample one axis of ``x`` to ``m`` samples: area averaging when it
    shrinks (each output is the mean of the input it covers, as for images
    reduced with INTER_AREA), linear interpolation when it grows."""
    n = x.shape[axis]
    if m == n:
        return x
    moved = x.movedim(axis, -1)
    flat = moved.reshape(1, -1, n)
    if m < n:
        out = F.interpolate(flat, size=m, mode="area")
    else:
        out = F.interpolate(flat, size=m, mode="linear", align_corners=False)
    return out.reshape(moved.shape[:-1] + (m,)).movedim(-1, axis)


def resize(frames, fx=1.0, fy=1.0, fz=1.0, ft=None) -> np.ndarray:
    """Rescale a movie: ``fy`` scales d1 (rows), ``fx`` d2 (columns), and
    ``fz`` time for a 2-D movie (CaImAn's ``movie.resize``) or d3 for a
    volume, where ``ft`` scales time. New sizes are ``round(n * f)``.

    Returns a float32 array.
    """
    arr = np.asarray(frames)
    if arr.ndim not in (3, 4):
        raise ParameterError(f"resize: expected a movie (T, d1, d2[, d3]), got shape {arr.shape}")
    x = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32))
    factors = {1: fy, 2: fx}
    if arr.ndim == 4:
        factors[3] = fz
        if ft is not None:
            factors[0] = ft
    else:
        factors[0] = fz if ft is None else ft
    names = {0: "fz" if arr.ndim == 3 else "ft", 1: "fy", 2: "fx", 3: "fz"}
    for axis, f in factors.items():
        x = _resample_axis(x, axis, _scaled(arr.shape[axis], float(f), names[axis]))
    return x.numpy()


def running_baseline(frames, window: int, quantile: float) -> np.ndarray:
    """Per-pixel baseline: the ``quantile`` (percent) of each block of
    ``window`` frames, interpolated linearly between block centres.

    Returns float32 of the movie's shape.
    """
    arr = np.asarray(frames, dtype=np.float32)
    T = arr.shape[0]
    window = int(max(1, min(window, T)))
    n_blocks = int(np.ceil(T / window))
    centres, levels = [], []
    for b in range(n_blocks):
        s, e = b * window, min(T, (b + 1) * window)
        centres.append(0.5 * (s + e - 1))
        levels.append(np.percentile(arr[s:e], quantile, axis=0))
    levels = np.stack(levels).reshape(n_blocks, -1)
    if n_blocks == 1:
        base = np.broadcast_to(levels, (T, levels.shape[1]))
    else:
        t = np.arange(T)
        # np.interp per pixel, vectorised: position of each frame between centres
        c = np.asarray(centres)
        j = np.clip(np.searchsorted(c, t) - 1, 0, n_blocks - 2)
        # linear between centres, and continued past the first/last centre
        # (a drift goes on at the ends rather than stopping half a window in)
        w = ((t - c[j]) / (c[j + 1] - c[j]))[:, None]
        base = levels[j] * (1 - w) + levels[j + 1] * w
    return np.ascontiguousarray(base, dtype=np.float32).reshape(arr.shape)


def compute_dff(frames, fr, secsWindow=5, quantilMin=8, method="only_baseline"):
    """Baseline removal or ΔF/F of a movie.

    Parameters
    ----------
    frames : array (T, d1, d2[, d3])
    fr : float
        Frame rate (Hz).
    secsWindow : float
        Window (s) over which the baseline percentile is taken.
    quantilMin : float
        Percentile (0-100) that defines the baseline F0.
    method : {'only_baseline', 'delta_f_over_f', 'delta_f_over_sqrt_f'}
        ``F - F0``, ``(F - F0) / F0`` or ``(F - F0) / sqrt(F0)``.

    Returns
    -------
    out, F0 : float32 arrays of the movie's shape
    """
    if method not in ("only_baseline", "delta_f_over_f", "delta_f_over_sqrt_f"):
        raise ParameterError(f"method: expected 'only_baseline', 'delta_f_over_f' or "
                             f"'delta_f_over_sqrt_f', got {method!r}")
    arr = np.asarray(frames, dtype=np.float32)
    if method != "only_baseline" and np.nanmin(arr) <= 0:
        raise ParameterError(f"computeDFF(method={method!r}): every pixel must be positive "
                             "(add a constant first, or use method='only_baseline')")
    base = running_baseline(arr, int(round(secsWindow * fr)), quantilMin)
    out = arr - base
    if method == "delta_f_over_f":
        out = out / base
    elif method == "delta_f_over_sqrt_f":
        out = out / np.sqrt(base)
    return out.astype(np.float32, copy=False), base


def bin_median(frames, window=10) -> np.ndarray:
    """Median over time of the means of consecutive bins of ``window``
    frames (frames past the last full bin are left out): a template robust to
    transients. A movie shorter than ``window`` is one bin."""
    arr = np.asarray(frames, dtype=np.float32)
    T = arr.shape[0]
    window = int(window)
    if window < 1:
        raise ParameterError(f"window: expected >= 1 frames, got {window}")
    n = max(1, T // window)
    w = min(window, T)
    bins = arr[:n * w].reshape((n, w) + arr.shape[1:])
    return np.nanmedian(np.nanmean(bins, axis=1), axis=0).astype(np.float32)
