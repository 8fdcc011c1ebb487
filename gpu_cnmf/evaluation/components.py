"""Accept or reject components, pick subsets of them, and compute ΔF/F.

:func:`evaluate_components` applies CaImAn's three tests with the quality
parameters of :class:`gpu_cnmf.params.CNMFParams` (group ``quality``):

- trace SNR (:mod:`.snr`): accept at ``SNR >= min_SNR``, reject below
  ``SNR_lowest``;
- spatial correlation (:mod:`.spatial`): accept at ``r >= rval_thr``,
  reject below ``rval_lowest``;
- CNN score (:mod:`.cnn`, when ``use_cnn``): accept at
  ``>= min_cnn_thr``, reject below ``cnn_lowest``.

A component is kept when it passes at least one acceptance test and fails no
rejection test. Names: ``A`` footprints (pixels x K, scipy.sparse, Fortran
pixel order), ``C`` denoised traces (K x T), ``YrA`` residual traces,
``b, f`` background footprints and traces.
"""
from __future__ import annotations

import difflib

import numpy as np
import scipy.sparse as sp
import torch

from ..backend import get_device, memory_budget, to_numpy, to_tensor
from ..errors import ParameterError
from .cnn import predict_cnn
from .snr import compute_snr
from .spatial import compute_residuals, spatial_correlation

__all__ = ["QUALITY_DEFAULTS", "evaluate_components", "accept_components",
           "estimate_gSig", "select_components", "remove_components",
           "detrend_df_f", "running_percentile", "mode_percentile"]

QUALITY_DEFAULTS = {"min_SNR": 2.5, "SNR_lowest": 0.5, "rval_thr": 0.8, "rval_lowest": -1,
                    "use_cnn": True, "min_cnn_thr": 0.9, "cnn_lowest": 0.1,
                    "gSig_range": None}


def _quality(quality) -> dict:
    q = dict(QUALITY_DEFAULTS)
    for key, val in dict(quality or {}).items():
        if key not in QUALITY_DEFAULTS:
            lower = {k.lower(): k for k in QUALITY_DEFAULTS}
            near = difflib.get_close_matches(str(key).lower(), lower, n=1)
            hint = f" (did you mean {lower[near[0]]!r}?)" if near else ""
            raise ParameterError(f"quality: unknown parameter {key!r}{hint}")
        q[key] = val
    for key in ("min_SNR", "SNR_lowest", "rval_thr", "rval_lowest", "min_cnn_thr",
                "cnn_lowest"):
        try:
            q[key] = float(q[key])
        except (TypeError, ValueError):
            raise ParameterError(f"quality: {key} must be a number, got {q[key]!r}") from None
    return q


def accept_components(SNR_comp, r_values, cnn_preds=None, quality=None):
    """Indices kept and rejected from the three scores (see module doc).

    NaN scores (e.g. an ``r`` without active frames) neither accept nor
    reject. ``cnn_preds`` is ignored unless ``quality['use_cnn']``.

    Returns
    -------
    idx_components, idx_components_bad : int arrays
    """
    q = _quality(quality)
    snr = np.asarray(SNR_comp, dtype=float)
    r = np.asarray(r_values, dtype=float)
    with np.errstate(invalid="ignore"):
        good = (snr >= q["min_SNR"]) | (r >= q["rval_thr"])
        bad = (snr < q["SNR_lowest"]) | (r < q["rval_lowest"])
        if q["use_cnn"]:
            cnn = np.asarray(cnn_preds, dtype=float)
            if cnn.shape != snr.shape:
                raise ParameterError(f"cnn_preds: expected {snr.shape[0]} scores, got "
                                     f"{cnn.shape}")
            good |= cnn >= q["min_cnn_thr"]
            bad |= cnn < q["cnn_lowest"]
    keep = good & ~bad
    return np.flatnonzero(keep), np.flatnonzero(~keep)


def estimate_gSig(A, dims) -> np.ndarray:
    """Typical footprint half-size (px per axis): the median, over
    components, of each footprint's intensity-weighted std along each axis."""
    A = sp.csc_matrix(A)
    coo = A.tocoo()
    if coo.nnz == 0:
        return np.array([5.0, 5.0])
    yy = coo.row % dims[0]
    xx = (coo.row // dims[0]) % dims[1]
    w = np.clip(coo.data, 0, None).astype(float)
    K = A.shape[1]
    m = np.bincount(coo.col, w, K)
    ok = m > 0
    out = []
    for pos in (yy, xx):
        mu = np.bincount(coo.col, w * pos, K) / np.where(ok, m, 1)
        var = np.bincount(coo.col, w * (pos - mu[coo.col]) ** 2, K) / np.where(ok, m, 1)
        out.append(np.median(np.sqrt(var[ok])))
    return np.maximum(np.array(out), 1.0)


def evaluate_components(images, A, C, b, f, YrA, dims, fr, decay_time, quality=None,
                        use_cuda=False, *, gSig=None, chunk_frames=None,
                        weights=None, samples=None) -> dict:
    """Score every component and split them into accepted and rejected.

    Parameters
    ----------
    images : ndarray, tensor or MovieSource, ``(T, *dims)``
        The movie the components were fitted to (e.g. the memory-mapped,
        motion-corrected movie reshaped to frames).
    A : sparse (pixels, K);  C : (K, T);  b : (pixels, nb);  f : (nb, T)
    YrA : (K, T) or None
        Residual traces; computed from the movie when None.
    dims : tuple
        Frame shape.
    fr, decay_time : float
        Frame rate (Hz) and decay time (s), ``params.data``.
    quality : dict
        ``params.get_group('quality')``; missing keys take their defaults.
    use_cuda : bool or device
    gSig : int or pair, optional
        Expected neuron half-size for the CNN (``params.init['gSig']``);
        estimated from the footprints when None.
    chunk_frames : int, optional
        Frames per chunk when reading the movie.
    weights : path, optional
        CNN weights other than the shipped ones.
    samples : MovieSamples, optional
        The movie's values kept by the refit (see :func:`spatial_correlation`).

    Returns
    -------
    dict
        ``idx_components``, ``idx_components_bad`` (int arrays), ``SNR_comp``,
        ``r_values``, ``cnn_preds`` (float arrays of length K; ``cnn_preds``
        is empty when ``use_cnn`` is False).
    """
    q = _quality(quality)
    dims = tuple(int(d) for d in dims)
    A = sp.csc_matrix(A)
    K = A.shape[1]
    C = np.asarray(C, dtype=np.float32).reshape(K, -1)
    if YrA is None:
        YrA = compute_residuals(images, A, C, b, f, dims, use_cuda, chunk_frames)
    YrA = np.asarray(YrA, dtype=np.float32)
    if YrA.shape != C.shape:
        raise ParameterError(f"YrA: expected shape {C.shape} like C, got {YrA.shape}")
    if K == 0:
        empty = np.zeros(0)
        return {"idx_components": np.zeros(0, int), "idx_components_bad": np.zeros(0, int),
                "SNR_comp": empty, "r_values": empty, "cnn_preds": empty}
    snr = compute_snr(C + YrA, fr, decay_time, use_cuda)
    r = spatial_correlation(images, A, C, b, f, dims, use_cuda=use_cuda,
                            chunk_frames=chunk_frames, samples=samples)
    if q["use_cnn"]:
        g = estimate_gSig(A, dims) if gSig is None else gSig
        cnn = predict_cnn(A, dims, g, q["gSig_range"], use_cuda, weights)
    else:
        cnn = np.zeros(0)
    good, bad = accept_components(snr, r, cnn, q)
    return {"idx_components": good, "idx_components_bad": bad, "SNR_comp": snr,
            "r_values": r, "cnn_preds": cnn}


# --------------------------------------------------------------------------
# subsets

# arrays whose components are columns; every other per-component array has
# them along its first axis
_COLUMN_ARRAYS = ("A", "A_thr")


def _n_components(arrays: dict) -> int:
    for key, val in arrays.items():
        if val is None:
            continue
        if key in _COLUMN_ARRAYS:
            return val.shape[1]
        return len(val)
    raise ParameterError("select_components: give at least one array, e.g. A=..., C=...")


def _as_index(idx, K: int) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.dtype == bool:
        if idx.shape != (K,):
            raise ParameterError(f"idx: a boolean mask needs {K} entries, got {idx.shape}")
        return np.flatnonzero(idx)
    idx = idx.astype(np.int64).ravel()
    if idx.size and (idx.min() < -K or idx.max() >= K):
        raise ParameterError(f"idx: indices must lie in [0, {K}), got "
                             f"{idx.min()}..{idx.max()}")
    idx = np.where(idx < 0, idx + K, idx)
    if len(np.unique(idx)) != len(idx):
        raise ParameterError("idx: indices must not repeat")
    return idx


def select_components(idx, **arrays) -> dict:
    """Keep the components ``idx`` (indices in the order given, or a mask).

    Pass any per-component arrays by name, e.g.
    ``select_components(idx, A=A, C=C, S=S, YrA=YrA, SNR_comp=snr)``;
    ``A`` (and ``A_thr``) are sliced by column, everything else by its first
    axis (lists too). None values pass through. Returns a dict with the
    same keys.
    """
    K = _n_components(arrays)
    idx = _as_index(idx, K)
    out = {}
    for key, val in arrays.items():
        if val is None:
            out[key] = None
            continue
        n = val.shape[1] if key in _COLUMN_ARRAYS else len(val)
        if n != K:
            raise ParameterError(f"{key}: has {n} components, expected {K}")
        if key in _COLUMN_ARRAYS:
            out[key] = sp.csc_matrix(val)[:, idx] if sp.issparse(val) else np.asarray(val)[:, idx]
        elif isinstance(val, list):
            out[key] = [val[i] for i in idx]
        elif isinstance(val, torch.Tensor):
            out[key] = val[torch.as_tensor(idx, device=val.device)]
        else:
            out[key] = np.asarray(val)[idx]
    return out


def remove_components(idx, **arrays) -> dict:
    """Drop the components ``idx`` (indices or mask); the rest keep their order."""
    K = _n_components(arrays)
    drop = _as_index(idx, K)
    keep = np.setdiff1d(np.arange(K), drop)
    return select_components(keep, **arrays)


# --------------------------------------------------------------------------
# ΔF/F

def running_percentile(x, q, window: int, device="cpu") -> torch.Tensor:
    """Percentile ``q`` (scalar or one per row) of each row of ``x`` over a
    sliding window of ``window`` frames.

    The window of frame ``t`` spans ``t - window//2 ... t - window//2 +
    window - 1`` with mirrored ends (scipy.ndimage's 'reflect'), and the
    percentile interpolates linearly between order statistics, as
    ``np.percentile``.
    """
    x = to_tensor(x, device, dtype=torch.float64)
    K, T = x.shape
    w = int(window)
    if w < 1:
        raise ParameterError(f"frames_window: expected a positive number, got {window}")
    qv = torch.as_tensor(np.broadcast_to(np.asarray(q, dtype=float), (K,)).copy(),
                         dtype=torch.float64, device=x.device)
    left = w // 2
    idx = torch.arange(-left, T + w - 1 - left, device=x.device)
    idx = torch.remainder(idx, 2 * T)
    idx = torch.where(idx >= T, 2 * T - 1 - idx, idx)
    xp = x[:, idx]                                       # (K, T + w - 1)
    pos = qv / 100.0 * (w - 1)
    lo = pos.floor().long().clamp(0, w - 1)
    hi = (lo + 1).clamp(max=w - 1)
    frac = (pos - lo)[:, None]
    out = torch.empty((K, T), dtype=torch.float64, device=x.device)
    per_row = max(1, (memory_budget(x.device) // 24) // max(w, 1))
    step = max(1, min(T, per_row // max(K, 1)))
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        win = xp[:, t0:t1 + w - 1].unfold(1, w, 1)         # (K, n, w)
        s = torch.sort(win, dim=2).values
        a = s.gather(2, lo[:, None, None].expand(K, t1 - t0, 1)).squeeze(2)
        b = s.gather(2, hi[:, None, None].expand(K, t1 - t0, 1)).squeeze(2)
        out[:, t0:t1] = a + (b - a) * frac
    return out


def _block_percentile(x: torch.Tensor, q, window: int) -> torch.Tensor:
    """Fast baseline: the percentile of each block of ``window`` frames,
    linearly interpolated between block centres (flat beyond the ends)."""
    K, T = x.shape
    qv = np.broadcast_to(np.asarray(q, dtype=float), (K,))
    n_blocks = max(1, int(np.ceil(T / window)))
    centres, vals = [], []
    for i in range(n_blocks):
        s, e = i * window, min(T, (i + 1) * window)
        blk = to_numpy(x[:, s:e])
        vals.append([np.percentile(row, qq) for row, qq in zip(blk, qv)])
        centres.append((s + e - 1) / 2)
    vals = np.array(vals).T                                # (K, n_blocks)
    t = np.arange(T)
    out = np.stack([np.interp(t, centres, v) for v in vals])
    return torch.as_tensor(out, dtype=torch.float64, device=x.device)


def mode_percentile(x, n_bins: int = 512) -> np.ndarray:
    """For each row, the percentile at which its distribution peaks.

    The density is a histogram smoothed with a Gaussian of Silverman's
    bandwidth; its peak (the mode) is the baseline of a trace whose
    transients are positive, and the share of values below it is the
    percentile to use as F0.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    K, T = x.shape
    lo = x.amin(1, keepdim=True)
    hi = x.amax(1, keepdim=True)
    span = (hi - lo).clamp_min(1e-12)
    bins = ((x - lo) / span * (n_bins - 1)).round().long().clamp(0, n_bins - 1)
    hist = torch.zeros((K, n_bins), dtype=torch.float64).scatter_add_(
        1, bins, torch.ones_like(x))
    xn = x.numpy()
    q75, q25 = np.percentile(xn, [75, 25], axis=1)
    sd = xn.std(1)
    spread = np.minimum(sd, (q75 - q25) / 1.349)
    spread = np.where(spread > 0, spread, sd)
    bw = 0.9 * spread * T ** (-0.2) / span.squeeze(1).numpy() * (n_bins - 1)   # in bins
    bw = torch.as_tensor(np.maximum(bw, 0.5))
    # smooth each histogram with its own Gaussian, by FFT (zero-padded: no wrap)
    freq = torch.fft.rfftfreq(2 * n_bins, dtype=torch.float64)
    gain = torch.exp(-2 * (np.pi * freq[None, :] * bw[:, None]) ** 2)
    dens = torch.fft.irfft(torch.fft.rfft(hist, n=2 * n_bins) * gain, n=2 * n_bins)
    mode = lo + span * dens[:, :n_bins].argmax(1, keepdim=True).double() / (n_bins - 1)
    return 100.0 * (x <= mode).double().mean(1).numpy()


def detrend_df_f(A, b, C, f, YrA=None, quantileMin: float = 8, frames_window: int = 500,
                 flag_auto: bool = True, use_fast: bool = False,
                 detrend_only: bool = False, use_cuda=False) -> np.ndarray:
    """ΔF/F of each component, with a running-percentile baseline (CaImAn's
    ``detrend_df_f``).

    Footprints are scaled to unit norm (traces scaled up to match), the
    fluorescence is ``F = C + YrA`` and the background under each footprint
    ``B = A' b f``. With ``F0`` and ``B0`` their running ``quantileMin``-th
    percentiles over ``frames_window`` frames:

        ΔF/F = (F - F0) / (B0 + F0)        (``F - F0`` if ``detrend_only``)

    Parameters
    ----------
    A : (pixels, K) sparse or dense;  b : (pixels, nb) or None;
    C : (K, T);  f : (nb, T) or None;  YrA : (K, T) or None
    quantileMin : float
        Percentile of the baseline (ignored with ``flag_auto``).
    frames_window : int or None
        Window length; None or longer than the movie: one baseline value per
        trace over all frames.
    flag_auto : bool
        Choose the percentile per trace: the percentile of the mode of its
        distribution (:func:`mode_percentile`).
    use_fast : bool
        Percentiles of consecutive blocks of ``frames_window`` frames,
        interpolated, instead of a sliding window.

    Returns
    -------
    ndarray (K, T) float64
    """
    device = get_device(use_cuda)
    A = sp.csc_matrix(A, dtype=np.float64, copy=True)   # scipy sorts indices in place
    K = A.shape[1]
    C = np.asarray(C, dtype=np.float64).reshape(K, -1)
    T = C.shape[1]
    nA = np.sqrt(np.asarray(A.multiply(A).sum(0)).ravel())
    nA = np.where(nA > 0, nA, 1.0)
    F = C * nA[:, None]
    if YrA is not None:
        YrA = np.asarray(YrA, dtype=np.float64)
        if YrA.shape != C.shape:
            raise ParameterError(f"YrA: expected shape {C.shape} like C, got {YrA.shape}")
        F = F + YrA * nA[:, None]
    if b is not None and f is not None and np.size(b) and np.size(f):
        bd = b.toarray() if sp.issparse(b) else np.asarray(b, dtype=np.float64)
        bd = bd.reshape(A.shape[0], -1)
        fd = np.asarray(f, dtype=np.float64).reshape(bd.shape[1], -1)
        B = (np.asarray(A.T @ bd) / nA[:, None]) @ fd
    else:
        B = np.zeros_like(F)
    q = mode_percentile(F) if flag_auto else np.full(K, float(quantileMin))
    if np.any((q < 0) | (q > 100)):
        raise ParameterError(f"quantileMin: expected a percentile in [0, 100], got {quantileMin}")
    if frames_window is None or frames_window >= T:
        F0 = np.array([np.percentile(row, qq) for row, qq in zip(F, q)])[:, None]
        B0 = np.array([np.percentile(row, qq) for row, qq in zip(B, q)])[:, None]
    elif use_fast:
        F0 = to_numpy(_block_percentile(torch.as_tensor(F), q, frames_window))
        B0 = to_numpy(_block_percentile(torch.as_tensor(B), q, frames_window))
    else:
        F0 = to_numpy(running_percentile(F, q, frames_window, device))
        B0 = to_numpy(running_percentile(B, q, frames_window, device))
    if detrend_only:
        return F - F0
    den = B0 + F0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, (F - F0) / np.where(den != 0, den, 1), 0.0)
