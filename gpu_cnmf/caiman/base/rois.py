"""CaImAn's ``caiman.base.rois``: matching components across sessions.

Adapters over :mod:`gpu_cnmf.rois` (alignment by NoRMCorre registration of
the templates, Jaccard distances of thresholded masks gated by the
distance of the centres, Hungarian assignment). ``use_opt_flow=True``
aligns with a smooth dense field from piecewise-rigid registration (CaImAn:
Farneback optical flow); ``use_opt_flow=False`` with one rigid shift.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ... import rois as _rois

__all__ = ["register_ROIs", "register_multisession", "com"]


def com(A, d1, d2, d3=None):
    """Centres of mass of the footprints ``A`` (pixels x K, Fortran order),
    ``(K, 2)`` (``(K, 3)`` with ``d3``) in pixel coordinates (row, column[,
    plane])."""
    dims = (d1, d2) if d3 is None else (d1, d2, d3)
    return _rois.com(A, dims)


def register_ROIs(A1, A2, dims, template1=None, template2=None, align_flag=True, D=None,
                  max_thr=0, use_opt_flow=True, thresh_cost=.7, max_dist=10,
                  enclosed_thr=None, print_assignment=False, plot_results=False, Cn=None,
                  cmap='viridis'):
    """Match the components of two sessions (session 1 taken as ground truth
    for the scores).

    Returns
    -------
    matched_ROIs1, matched_ROIs2 : int arrays, the matched pairs
    non_matched1, non_matched2 : int arrays
    performance : dict with 'recall', 'precision', 'accuracy', 'f1_score'
    A2 : csc_matrix, session 2's footprints aligned to session 1
    """
    if D is not None and isinstance(D, (list, tuple)):
        D = D[0]          # CaImAn's distance lists hold one matrix per pair of sessions
    res = _rois.register_rois(A1, A2, dims, template1=template1, template2=template2,
                              align_flag=align_flag, D=D, max_thr=max_thr,
                              use_opt_flow=use_opt_flow, thresh_cost=thresh_cost,
                              max_dist=max_dist, enclosed_thr=enclosed_thr)
    if print_assignment:
        for i, j in zip(res.matched1, res.matched2):
            print(f"{i} -> {j}: {res.D[i, j]:.3f}")
    if plot_results and res.matched1.size:
        from ... import plots
        plots.registration_figure(A1, res.A2, dims, res.matched1, res.matched2,
                                  res.non_matched1, res.non_matched2,
                                  Cn=Cn if Cn is not None else template1, cmap=cmap)
    return res.as_tuple()


def register_multisession(A, dims, templates=[None], align_flag=True, max_thr=0,
                          use_opt_flow=True, thresh_cost=.7, max_dist=10, enclosed_thr=None):
    """Match components across sessions, each registered to the union of
    the earlier ones.

    Returns
    -------
    A_union : ndarray (pixels, N), one footprint per distinct component
        (in the last session's frame)
    assignments : ndarray (N, n_sessions), the index of each union
        component in each session, NaN where absent
    matchings : list of lists, ``matchings[s][j]`` the union index of
        component ``j`` of session ``s``
    """
    union, assignments, matchings = _rois.register_multisession(
        list(A), dims, templates=templates, align_flag=align_flag, max_thr=max_thr,
        use_opt_flow=use_opt_flow, thresh_cost=thresh_cost, max_dist=max_dist,
        enclosed_thr=enclosed_thr)
    # CaImAn hands the union back as a dense array
    return np.asarray(sp.csc_matrix(union).toarray()), assignments, matchings
