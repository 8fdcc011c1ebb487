"""CaImAn's ``caiman.summary_images``: correlation and PNR images.

Thin adapters over :mod:`gpu_cnmf.summary` (the algorithms and their
definitions live there). CaImAn's conventions kept here: ``swap_dim=True``
means time is the LAST axis of ``Y`` (``(d1, d2, T)``, MATLAB order), and it
is the default of ``local_correlations``, ``max_correlation_image`` and
``correlation_pnr`` as in CaImAn.

Differences from CaImAn, on purpose:

- ``local_correlations(eight_neighbours=True)`` averages each pixel's own
  correlations with its 8 neighbours, CaImAn's documented definition (and
  what its ``local_correlations_fft`` computes). CaImAn's direct
  ``local_correlations`` adds, for two of the four diagonals, the
  correlation between two of the pixel's edge neighbours instead, which
  moves its values by up to ~0.1 (see :func:`gpu_cnmf.summary.local_correlations`).
- A constant pixel correlates 0 with everything (CaImAn: NaN, spreading to
  its neighbours).
- Volumes (4D ``Y``): 26 or 6 neighbours by ``eight_neighbours`` (CaImAn's
  direct version always uses 6).
"""
from __future__ import annotations

import numpy as np

from .. import summary as _summary

__all__ = ["local_correlations", "local_correlations_fft", "max_correlation_image",
           "local_correlations_movie_offline", "correlation_pnr"]


def _movie_class():
    # the movie class of this namespace (CaImAn returns caiman.movie)
    from .base.movies import movie
    return movie


def local_correlations(Y, eight_neighbours: bool = True, swap_dim: bool = True,
                       order_mean: float = 1) -> np.ndarray:
    """Local correlation image: for each pixel, the mean over its
    neighbours of its Pearson correlation in time with them.

    Parameters
    ----------
    Y : ndarray (T, d1, d2[, d3]), or (d1, d2[, d3], T) with ``swap_dim``
    eight_neighbours : bool
        8 neighbours (26 in 3D), else the 4 (6) sharing an edge.
    swap_dim : bool
        Time is the last axis of ``Y`` (CaImAn's default).
    order_mean : float
        Power of the mean over neighbours (1 arithmetic, 0 geometric).

    Returns
    -------
    ndarray (d1, d2[, d3])
    """
    return _summary.local_correlations(np.asarray(Y), eight_neighbours=eight_neighbours,
                                       swap_dim=swap_dim, order_mean=order_mean)


def local_correlations_fft(Y, eight_neighbours: bool = True, swap_dim: bool = True,
                           opencv: bool = True, rolling_window=None) -> np.ndarray:
    """The same image as :func:`local_correlations` (CaImAn's FFT variant
    computes the same definition; ``opencv`` only chose its filter)."""
    if rolling_window is not None:
        raise NotImplementedError(
            "local_correlations_fft(rolling_window=...) is not supported; use "
            "local_correlations_movie_offline(..., window=, stride=) for images of "
            "sliding windows")
    return local_correlations(Y, eight_neighbours, swap_dim)


def max_correlation_image(Y, bin_size: int = 1000, eight_neighbours: bool = True,
                          swap_dim: bool = True) -> np.ndarray:
    """Pixelwise maximum of the local correlation images of bins of
    ``bin_size`` frames (see :func:`gpu_cnmf.summary.max_correlation_image`)."""
    return _summary.max_correlation_image(np.asarray(Y), bin_size=bin_size,
                                          eight_neighbours=eight_neighbours,
                                          swap_dim=swap_dim)


def local_correlations_movie_offline(file_name, Tot_frames=None, fr: float = 10.,
                                     window: int = 100, stride: int = 100,
                                     swap_dim: bool = False, eight_neighbours: bool = True,
                                     order_mean: float = 1, ismulticolor: bool = False,
                                     dview=None, remove_baseline: bool = False,
                                     winSize_baseline: int = 50,
                                     quantil_min_baseline: float = 8,
                                     gaussian_blur: bool = False,
                                     mean_subtract: bool = False):
    """Local correlation images of sliding windows of a movie file.

    Windows of ``window`` frames every ``stride`` frames, plus one ending
    at the last frame; each optionally blurred (5 x 5 Gaussian, std 1),
    baseline-removed (``quantil_min_baseline`` percentile of runs of
    ``winSize_baseline`` frames) and, with ``mean_subtract``, freed of each
    frame's spatial mean, then :func:`local_correlations`
    (:func:`gpu_cnmf.summary.local_correlations_movie`).

    Parameters
    ----------
    file_name : str or list of str
        Any movie file :func:`gpu_cnmf.io.open_movie` reads (or an array).
    Tot_frames : int, optional
        Use the first ``Tot_frames`` frames (default: all).
    fr : float
        Frame rate of the movie; the result's rate is ``fr`` divided by the
        number of windows, as in CaImAn.
    dview : ignored
        Windows are computed one after the other (each already uses every
        core, or the GPU).

    Returns
    -------
    movie (n_windows, d1, d2), float32
    """
    if ismulticolor:
        raise NotImplementedError(
            "local_correlations_movie_offline(ismulticolor=True) is not supported; the "
            "nearest is local_correlations_movie_offline(...) on each colour channel")
    if swap_dim:
        # CaImAn's swap_dim here is passed to local_correlations of each
        # window of frames loaded as (T, d1, d2): it would read the frames
        # with time last, i.e. wrongly; frames from a file are time-first.
        raise NotImplementedError(
            "local_correlations_movie_offline(swap_dim=True) is not supported: movies read "
            "from files are (T, d1, d2); use swap_dim=False")
    from ..io import open_movie
    src = open_movie(file_name) if not hasattr(file_name, "read") else file_name
    try:
        images = _summary.local_correlations_movie(
            src, window=window, stride=stride, eight_neighbours=eight_neighbours,
            order_mean=order_mean, swap_dim=False, remove_baseline=remove_baseline,
            winSize_baseline=winSize_baseline, quantil_min_baseline=quantil_min_baseline,
            gaussian_blur=gaussian_blur, mean_subtract=mean_subtract, n_frames=Tot_frames)
    finally:
        if src is not file_name:
            src.close()
    return _movie_class()(images, fr=float(fr) / len(images))


def correlation_pnr(Y, gSig=None, center_psf: bool = True, swap_dim: bool = True,
                    background_filter: str = 'disk'):
    """CNMF-E's correlation and peak-to-noise ratio images of the
    spatially filtered movie; the definition is
    :func:`gpu_cnmf.cnmf.corr_pnr.correlation_pnr`.

    Parameters
    ----------
    Y : ndarray (T, d1, d2), or (d1, d2, T) with ``swap_dim`` (the default)
    gSig : int or (int, int), optional
        Neuron radius of the filter kernel; None: no filter.
    center_psf : bool
        Mean-centred kernel (removes the smooth background).
    background_filter : 'disk' or 'box'

    Returns
    -------
    cn, pnr : ndarray (d1, d2)
    """
    from ..cnmf.corr_pnr import correlation_pnr as _core
    return _core(np.asarray(Y), gSig=gSig, center_psf=center_psf, swap_dim=swap_dim,
                 background_filter=background_filter)
