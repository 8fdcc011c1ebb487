"""Matching components across sessions (CaImAn's ``register_ROIs`` and
``register_multisession``; the method of Giovannucci et al., eLife 2019).

Two sessions of the same field of view give two sets of footprints ``A1``
and ``A2`` (pixels x K, Fortran pixel order). They are matched in three
steps:

1. **Alignment.** The session templates (mean or correlation images) are
   registered with :mod:`gpu_cnmf.motion`'s NoRMCorre registration: a rigid
   translation, or (``use_opt_flow``) a smooth dense displacement field
   made from piecewise-rigid patch shifts around the rigid one, our
   stand-in for CaImAn's Farneback optical flow. Every footprint of
   session 2 is carried into session 1's frame by that field, sampled at
   the nearest pixel (as CaImAn remaps them), so a footprint keeps its size.
2. **Distances.** Each footprint is thresholded (pixels above ``max_thr``
   times its maximum) into a mask; the distance of two components is the
   Jaccard distance ``1 - |a & b| / |a | b|`` of their masks
   (:func:`gpu_cnmf.metrics.jaccard_distance`), set to 1 when their centres
   of mass are ``max_dist`` pixels apart or more. With ``enclosed_thr``, a
   mask of session 1 wholly inside one of session 2 is given at most that
   distance (a ground-truth cell inside a larger estimated one).
3. **Assignment.** The Hungarian method on these distances
   (:func:`gpu_cnmf.metrics.match_distances`); pairs at ``thresh_cost`` or
   more count as unmatched.

With session 1 as ground truth, the matches score recall, precision,
accuracy and F1.

Several sessions (:func:`register_multisession`) are matched in turn: the
union of the components seen so far (in the previous session's frame) is
registered to the next session, matched components take the newer
session's footprint, unmatched new ones are appended, so the union ends in
the last session's frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .errors import ParameterError
from .metrics import _footprints, binary_masks, jaccard_distance, match_distances
from .motion import piecewise as pw
from .motion.registration import make_plan, register_translation

__all__ = ["com", "align_footprints", "template_field", "mask_distances",
           "register_rois", "register_multisession", "RoiMatch"]

# Registration of two templates: the search range of the rigid shift
# (pixels, capped by a quarter of the frame), and for the dense field the
# patch deviation around it; patches are a quarter of the frame plus an
# overlap (CaImAn's tile_and_correct settings for the same purpose).
_MAX_SHIFT = 10
_MAX_DEVIATION = 2
_OVERLAP = 16


def _dims(dims) -> tuple[int, ...]:
    try:
        d = tuple(int(v) for v in dims)
    except TypeError:
        raise ParameterError(f"dims: expected the frame shape (d1, d2), got {dims!r}") from None
    if len(d) not in (2, 3) or min(d) < 1:
        raise ParameterError(f"dims: expected the frame shape (d1, d2) or (d1, d2, d3), "
                             f"got {dims!r}")
    return d


def com(A, dims) -> np.ndarray:
    """Centres of mass of footprints, ``(K, len(dims))``, in pixel
    coordinates along (d1, d2[, d3]); an all-zero footprint gives NaN.

    Parameters
    ----------
    A : (pixels, K) dense or sparse, Fortran pixel order
    dims : frame shape
    """
    dims = _dims(dims)
    A = _footprints(A, dims, "A")
    coords = np.indices(dims).reshape(len(dims), -1, order="F").astype(np.float64)
    mass = np.asarray(A.sum(0)).ravel()
    num = (A.T @ coords.T)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(num) / mass[:, None]


def _template_tensor(t, dims, name):
    t = np.asarray(t, dtype=np.float64)
    if t.shape != tuple(dims):
        raise ParameterError(f"{name}: expected an image of shape {tuple(dims)}, got {t.shape}")
    if not np.isfinite(t).any():
        raise ParameterError(f"{name}: no finite value")
    t = np.where(np.isfinite(t), t, np.nanmean(t))
    lo, hi = t.min(), t.max()
    t = (t - lo) / (hi - lo) if hi > lo else t - lo
    return torch.as_tensor(t, dtype=torch.float32)


def template_field(template1, template2, dims, use_opt_flow: bool = True) -> np.ndarray:
    """The displacement that carries session 2's frame onto session 1's.

    Returns
    -------
    field : ndarray ``(2, d1, d2)``
        Correcting shift of each pixel (gpu_cnmf's convention:
        ``aligned(p) = image2(p - field(p))``); constant (the rigid shift)
        unless ``use_opt_flow``.
    """
    dims = _dims(dims)
    if len(dims) != 2:
        raise ParameterError(f"dims: aligning templates needs 2D frames, got {dims}")
    t1 = _template_tensor(template1, dims, "template1")
    t2 = _template_tensor(template2, dims, "template2")
    max_shifts = [max(1, min(_MAX_SHIFT, n // 4)) for n in dims]
    plan = make_plan(t1, 2)
    _, spec = plan.spectra(t2[None])
    rigid = register_translation(spec, plan, max_shifts, upsample_factor=10, cropped=True)
    field = rigid[0].reshape(2, 1, 1).expand(2, *dims).clone()
    strides = [max(8, n // 4) for n in dims]
    overlaps = [min(_OVERLAP, s) for s in strides]
    starts, sizes, centres = pw.patch_grid(dims, strides, overlaps)
    if use_opt_flow and any(len(s) > 1 for s in starts):
        pplan = pw.patch_plan(t1, starts, sizes)
        dev = [_MAX_DEVIATION] * 2
        ps = pw.register_patches(t2[None], pplan, starts, sizes, rigid, dev, upsample_factor=10)
        r = rigid.reshape(1, 1, 1, 2)
        ps = torch.maximum(torch.minimum(ps, r + _MAX_DEVIATION), r - _MAX_DEVIATION)
        mats = [pw.interpolation_matrix(n, c, 4) for n, c in zip(dims, centres)]
        field = pw.shift_field(ps, mats)[0]
    return field.numpy().astype(np.float64)


def align_footprints(A, dims, field) -> sp.csc_matrix:
    """Carry footprints by a correcting field (see :func:`template_field`),
    nearest-pixel sampling; what comes from outside the frame is 0.

    Parameters
    ----------
    A : (pixels, K), Fortran pixel order
    field : ``(2, d1, d2)`` correcting shifts
    """
    dims = _dims(dims)
    A = _footprints(A, dims, "A")
    field = np.asarray(field, dtype=np.float64)
    if field.shape != (2,) + dims:
        raise ParameterError(f"field: expected shape {(2,) + dims}, got {field.shape}")
    grid = np.indices(dims).astype(np.float64)
    src = np.rint(grid - field).astype(np.int64)
    inside = np.all([(src[a] >= 0) & (src[a] < dims[a]) for a in range(2)], axis=0)
    # output pixel (Fortran index) -> source pixel (Fortran index)
    out_idx = np.flatnonzero(inside.ravel(order="F"))
    src_idx = (src[0] + dims[0] * src[1]).ravel(order="F")[out_idx]
    P = sp.csc_matrix((np.ones(out_idx.size), (out_idx, src_idx)),
                      shape=(A.shape[0], A.shape[0]))
    return sp.csc_matrix(P @ A)


def _threshold(A: sp.csc_matrix, max_thr: float) -> sp.csc_matrix:
    """Keep each footprint's pixels above ``max_thr`` times its maximum
    (all positive pixels for 0)."""
    A = sp.csc_matrix(A, copy=True)
    A.data = np.clip(A.data, 0, None)
    if max_thr > 0 and A.nnz:
        peak = np.asarray(A.max(0).todense()).ravel()
        col = np.repeat(np.arange(A.shape[1]), np.diff(A.indptr))
        A.data[A.data <= max_thr * peak[col]] = 0
    A.eliminate_zeros()
    return A


def mask_distances(A1, A2, dims, max_dist: float = 10, enclosed_thr: float | None = None,
                   max_thr: float = 0) -> np.ndarray:
    """Jaccard distances of the thresholded masks, gated by the distance of
    the centres of mass, ``(K1, K2)`` (see the module docstring)."""
    dims = _dims(dims)
    A1 = _threshold(_footprints(A1, dims, "A1"), max_thr)
    A2 = _threshold(_footprints(A2, dims, "A2"), max_thr)
    K1, K2 = A1.shape[1], A2.shape[1]
    if not (K1 and K2):
        return np.ones((K1, K2))
    M1, M2 = binary_masks(A1, dims, 0.0), binary_masks(A2, dims, 0.0)
    D = jaccard_distance(M1, M2)
    c1, c2 = com(A1, dims), com(A2, dims)
    far = np.linalg.norm(c1[:, None, :] - c2[None, :, :], axis=-1)
    D[~(far < float(max_dist))] = 1.0     # NaN centres (empty masks) are far too
    if enclosed_thr is not None:
        inter = (sp.csc_matrix(M1, dtype=np.float64).T @ sp.csc_matrix(M2, dtype=np.float64)
                 ).toarray()
        size1 = np.asarray(M1.sum(0)).ravel()
        enclosed = (inter == size1[:, None]) & (size1[:, None] > 0) & (far < float(max_dist))
        D = np.where(enclosed, np.minimum(D, float(enclosed_thr)), D)
    return D


@dataclass
class RoiMatch:
    """Result of :func:`register_rois`."""
    matched1: np.ndarray
    matched2: np.ndarray
    non_matched1: np.ndarray
    non_matched2: np.ndarray
    performance: dict
    A2: sp.csc_matrix
    D: np.ndarray

    def as_tuple(self):
        """CaImAn's order: matched1, matched2, non_matched1, non_matched2,
        performance, A2 aligned."""
        return (self.matched1, self.matched2, self.non_matched1, self.non_matched2,
                self.performance, self.A2)


def register_rois(A1, A2, dims, template1=None, template2=None, align_flag: bool = True,
                  D=None, max_thr: float = 0, use_opt_flow: bool = True,
                  thresh_cost: float = 0.7, max_dist: float = 10,
                  enclosed_thr: float | None = None) -> RoiMatch:
    """Match the components of two sessions (see the module docstring).

    Parameters
    ----------
    A1, A2 : (pixels, K1), (pixels, K2) footprints, dense or sparse
    dims : frame shape
    template1, template2 : images of the two sessions, optional
        Needed for the alignment; without either, none is done.
    align_flag : bool
        Align session 2 to session 1 first.
    D : (K1, K2) array, optional
        Precomputed distances, used instead of computing them (``A2`` is
        still aligned for the result).
    max_thr, use_opt_flow, thresh_cost, max_dist, enclosed_thr
        As in the module docstring.

    Returns
    -------
    RoiMatch
    """
    dims = _dims(dims)
    A1 = _footprints(A1, dims, "A1")
    A2 = _footprints(A2, dims, "A2")
    if not 0 <= float(max_thr) < 1:
        raise ParameterError(f"max_thr: expected a fraction of the peak in [0, 1), got {max_thr}")
    if not float(max_dist) > 0:
        raise ParameterError(f"max_dist: expected a positive distance in pixels, got {max_dist}")
    if template1 is not None and template2 is not None and align_flag:
        A2 = align_footprints(A2, dims, template_field(template1, template2, dims,
                                                       use_opt_flow))
    if D is None:
        D = mask_distances(A1, A2, dims, max_dist, enclosed_thr, max_thr)
    else:
        D = np.asarray(D, dtype=np.float64)
        if D.shape != (A1.shape[1], A2.shape[1]):
            raise ParameterError(f"D: expected a ({A1.shape[1]}, {A2.shape[1]}) distance "
                                 f"matrix, got shape {D.shape}")
    m1, m2 = match_distances(D, float(thresh_cost), strict=True)
    K1, K2 = D.shape
    tp = float(m1.size)
    fn, fp = K1 - tp, K2 - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        perf = {"recall": tp / (tp + fn) if K1 else np.nan,
                "precision": tp / (tp + fp) if K2 else np.nan,
                "accuracy": tp / (tp + fp + fn) if (K1 or K2) else np.nan,
                "f1_score": 2 * tp / (2 * tp + fp + fn) if (K1 or K2) else np.nan}
    return RoiMatch(m1, m2, np.setdiff1d(np.arange(K1), m1), np.setdiff1d(np.arange(K2), m2),
                    perf, A2, D)


def register_multisession(A: list, dims, templates=None, align_flag: bool = True,
                          max_thr: float = 0, use_opt_flow: bool = True,
                          thresh_cost: float = 0.7, max_dist: float = 10,
                          enclosed_thr: float | None = None):
    """Match components across several sessions.

    Parameters
    ----------
    A : list of (pixels, K_s) footprints, one per session
    templates : list of images (one per session), or None
    Others as in :func:`register_rois`.

    Returns
    -------
    A_union : csc_matrix (pixels, N)
        One footprint per distinct component, in the last session's frame.
    assignments : ndarray (N, n_sessions) float
        ``assignments[i, s]`` is the index in session ``s`` of union
        component ``i``, NaN where it was not found in that session.
    matchings : list of lists
        ``matchings[s][j]`` is the union index of component ``j`` of
        session ``s``.
    """
    dims = _dims(dims)
    if not isinstance(A, (list, tuple)) or len(A) < 2:
        raise ParameterError("A: expected a list of the footprints of 2 or more sessions")
    n = len(A)
    A = [_footprints(a, dims, f"A[{s}]") for s, a in enumerate(A)]
    if templates is None:
        templates = [None] * n
    templates = list(templates)
    if len(templates) == 1:
        templates = templates * n
    if len(templates) != n:
        raise ParameterError(f"templates: expected one image per session ({n}), got "
                             f"{len(templates)}")
    union = A[0]
    matchings = [list(range(union.shape[1]))]
    for s in range(1, n):
        res = register_rois(A[s], union, dims, template1=templates[s],
                            template2=templates[s - 1], align_flag=align_flag,
                            max_thr=max_thr, use_opt_flow=use_opt_flow,
                            thresh_cost=thresh_cost, max_dist=max_dist,
                            enclosed_thr=enclosed_thr)
        aligned = sp.lil_matrix(res.A2)
        # matched: the newest footprint replaces the union's
        if res.matched1.size:
            aligned[:, res.matched2] = A[s][:, res.matched1]
        n_old = aligned.shape[1]
        union = sp.hstack([sp.csc_matrix(aligned), A[s][:, res.non_matched1]]).tocsc()
        match = np.zeros(A[s].shape[1], dtype=int)
        match[res.matched1] = res.matched2
        match[res.non_matched1] = np.arange(n_old, union.shape[1])
        matchings.append(match.tolist())
    assignments = np.full((union.shape[1], n), np.nan)
    for s, m in enumerate(matchings):
        assignments[m, s] = np.arange(len(m))
    return union, assignments, matchings
