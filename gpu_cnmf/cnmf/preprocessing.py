"""One pass over the movie before CNMF: per-pixel statistics and the
downsampled movie that initialisation works on.

In a single read of ``Y`` (block by block) this computes, for each pixel,
the noise level ``sn`` (power spectral density of the high frequencies,
with the deconvolution package's estimator, batched over the block), the
mean and the energy ``sum_t y^2``, checks for NaNs, and builds the movie
averaged over ``ssub x ssub`` pixels and ``tsub`` frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MovieError


@dataclass
class PixelStats:
    """Per-pixel statistics (local Fortran order) and the small movie.

    Attributes
    ----------
    sn, mean, yy : (d,) tensors
        Noise std, temporal mean, sum of squares.
    Yd : (hd, wd, Td) tensor
        Downsampled movie (``ssub`` in space, ``tsub`` in time).
    """

    sn: torch.Tensor
    mean: torch.Tensor
    yy: torch.Tensor
    Yd: torch.Tensor
    ssub: int
    tsub: int
    frame_mean: torch.Tensor = None


def pixel_stats(mm, ssub=1, tsub=1, noise_range=(0.25, 0.5), noise_method="mean",
                max_num_samples_fft=3072, check_nan=True, sn=None, small=True):
    """Read the movie once; see the module docstring.

    Parameters
    ----------
    mm : MovieMatrix
    ssub, tsub : int
        Spatial and temporal downsampling of the returned small movie.
    noise_range, noise_method, max_num_samples_fft
        Passed to :func:`gpu_cnmf.deconvolution.estimate_noise`.
    check_nan : bool
        Raise :class:`MovieError` if the movie holds NaNs.
    sn : array, optional
        Known noise levels (``preprocess['sn']``); not re-estimated then.
    small : bool
        Build the downsampled movie (False: statistics only).

    Returns
    -------
    PixelStats
    """
    from ..deconvolution import estimate_noise

    ssub, tsub = max(1, int(round(ssub))), max(1, int(round(tsub)))
    h, w = mm.dims
    T, dev = mm.T, mm.device
    # blocks must hold whole groups of ssub image columns
    if mm.cols_per_block % ssub and mm.cols_per_block < w:
        mm.cols_per_block = max(ssub, mm.cols_per_block - mm.cols_per_block % ssub)
        mm.release()
    hd, wd, Td = -(-h // ssub), -(-w // ssub), -(-T // tsub)
    Yd = torch.empty((hd, wd, Td) if small else (0, 0, 0), dtype=torch.float32, device=dev)
    sn_out = torch.empty(mm.d, dtype=torch.float32, device=dev)
    mean = torch.empty(mm.d, dtype=torch.float32, device=dev)
    yy = torch.empty(mm.d, dtype=torch.float32, device=dev)
    frame_sum = torch.zeros(T, dtype=torch.float64, device=dev)
    given = None
    if sn is not None:
        given = torch.as_tensor(np.asarray(sn, dtype=np.float32).ravel(), device=dev)
        if given.numel() != mm.d:
            raise MovieError(f"preprocess['sn']: expected {mm.d} noise values, got {given.numel()}")
    for p0, p1, Yb in mm.blocks():
        if check_nan and bool(torch.isnan(Yb).any()):
            bad = int(torch.isnan(Yb).any(1).sum())
            raise MovieError(f"images: {bad} pixel(s) in columns {p0 // h}-{p1 // h - 1} hold NaN "
                             "values; fix the movie or set check_nan=False")
        if given is None:
            s = estimate_noise(Yb, noise_range=tuple(noise_range), noise_method=noise_method,
                               max_num_samples_fft=max_num_samples_fft)
            sn_out[p0:p1] = torch.as_tensor(s, device=dev, dtype=torch.float32)
        mean[p0:p1] = Yb.mean(1)
        frame_sum += Yb.sum(0, dtype=torch.float64)
        yy[p0:p1] = torch.linalg.vector_norm(Yb, dim=1) ** 2
        if not small:
            continue
        nj = (p1 - p0) // h
        x = Yb
        if tsub > 1:
            x = F.avg_pool1d(x[:, None], tsub, tsub, ceil_mode=True)[:, 0]
        x = x.reshape(nj, h, -1).permute(2, 0, 1)  # (Td, nj, h)
        if ssub > 1:
            x = F.avg_pool2d(x[None], ssub, ssub, ceil_mode=True)[0]
        jd0 = (p0 // h) // ssub
        Yd[:, jd0:jd0 + x.shape[1], :] = x.permute(2, 1, 0)
    if given is not None:
        sn_out = given
    return PixelStats(sn=sn_out, mean=mean, yy=yy, Yd=Yd, ssub=ssub, tsub=tsub,
                      frame_mean=(frame_sum / mm.d).float())
