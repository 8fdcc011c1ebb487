"""Scores of a result against ground truth.

Source extraction: :func:`roi_f1` matches estimated footprints to true ones
(Hungarian assignment on the Jaccard distance of thresholded masks, as in
CaImAn's and suite2p's benchmarks), then :func:`trace_correlation` and
:func:`spike_correlation` compare the matched pairs' traces.
Registration: :func:`registration_error` (RMS distance between true and
estimated shifts or flows), :func:`crispness` (NoRMCorre's sharpness of the
mean image) and :func:`frame_correlations` (each frame against a template).

Footprints ``A`` are (pixels, K), dense or scipy.sparse, pixels in Fortran
order (index ``i + j*d1``); traces ``C`` (calcium) and ``S`` (spikes) are
(K, T). Torch tensors are accepted anywhere an array is.
"""
from __future__ import annotations


import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

from .errors import ParameterError

__all__ = ["binary_masks", "jaccard_distance", "match_distances", "roi_f1",
           "footprint_pieces", "fragmented_share", "trace_correlation",
           "spike_correlation", "registration_error", "crispness", "frame_correlations"]

# Cost given to pairs beyond max_cost, so the assignment prefers any set of
# valid pairs to one that uses an invalid pair; such pairs are dropped after.
_INVALID = 1e3


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):              # torch tensor, any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _footprints(A, dims, name: str) -> sp.csc_matrix:
    """(pixels, K) csc from dense/sparse (pixels, K) or a (K, d1, d2) stack."""
    if sp.issparse(A):
        A = sp.csc_matrix(A, dtype=np.float64, copy=True)   # never the caller's arrays
    else:
        A = _np(A).astype(np.float64)
        if A.ndim == 3:                      # (K, d1, d2) image stack
            if dims is not None and tuple(A.shape[1:]) != tuple(dims):
                raise ParameterError(f"{name}: image stack of shape {A.shape[1:]} does "
                                     f"not match dims={tuple(dims)}")
            A = A.transpose(0, 2, 1).reshape(A.shape[0], -1).T   # Fortran pixel order
        elif A.ndim == 1:
            A = A[:, None]
        elif A.ndim != 2:
            raise ParameterError(f"{name}: expected (pixels, K) footprints, got shape {A.shape}")
        A = sp.csc_matrix(A)
    if dims is not None and A.shape[0] != int(np.prod(dims)):
        raise ParameterError(f"{name}: {A.shape[0]} pixels do not match dims={tuple(dims)} "
                             f"({int(np.prod(dims))} pixels)")
    return A


def binary_masks(A, dims=None, thr: float = 0.2, method: str = "max") -> sp.csc_matrix:
    """Binary masks of footprints, (pixels, K) boolean csc.

    Parameters
    ----------
    A : (pixels, K) dense or sparse, or a (K, d1, d2) stack
    dims : (d1, d2), optional check of the pixel count
    thr : float
        method 'max': keep pixels >= ``thr`` times the column's max.
        method 'nrg': keep the largest pixels holding a fraction ``thr`` of
        the column's energy (sum of squares), e.g. ``thr=0.9``.
    """
    if method not in ("max", "nrg"):
        raise ParameterError(f"method: expected 'max' or 'nrg', got {method!r}")
    A = _footprints(A, dims, "A")
    A.sum_duplicates()
    A.data = np.clip(A.data, 0, None)
    rows, cols = [], []
    for k in range(A.shape[1]):
        lo, hi = A.indptr[k], A.indptr[k + 1]
        idx, val = A.indices[lo:hi], A.data[lo:hi]
        if val.size == 0 or val.max() <= 0:
            continue
        if method == "max":
            keep = val >= thr * val.max()
        else:
            order = np.argsort(val)[::-1]
            e = np.cumsum(val[order] ** 2)
            n = int(np.searchsorted(e, thr * e[-1])) + 1
            keep = np.zeros(val.size, bool)
            keep[order[:n]] = True
        keep &= val > 0
        rows.append(idx[keep])
        cols.append(np.full(keep.sum(), k))
    rows = np.concatenate(rows) if rows else np.zeros(0, int)
    cols = np.concatenate(cols) if cols else np.zeros(0, int)
    return sp.csc_matrix((np.ones(rows.size, bool), (rows, cols)), shape=A.shape)


def footprint_pieces(A, dims, thr: float = 0.2) -> np.ndarray:
    """Number of connected pieces (8-connectivity) of each footprint's mask
    at ``thr`` times its peak, ``(K,)`` ints.

    A footprint should be one piece around its cell; specks and fragments
    of neighbouring structure show up as extra pieces.
    """
    from scipy import ndimage

    d1, d2 = (int(d) for d in dims)
    M = binary_masks(A, (d1, d2), thr=thr, method="max")
    out = np.zeros(M.shape[1], dtype=np.int64)
    full = np.ones((3, 3), bool)
    for k in range(M.shape[1]):
        idx = M.indices[M.indptr[k]:M.indptr[k + 1]]
        if idx.size == 0:
            continue
        r, c = idx % d1, idx // d1
        img = np.zeros((r.max() - r.min() + 1, c.max() - c.min() + 1), bool)
        img[r - r.min(), c - c.min()] = True
        out[k] = ndimage.label(img, structure=full)[1]
    return out


def fragmented_share(A, dims, thr: float = 0.2) -> float:
    """Share of footprints in more than one piece at ``thr`` of their peak
    (:func:`footprint_pieces`); NaN when there is no footprint."""
    n = footprint_pieces(A, dims, thr)
    return float(np.mean(n > 1)) if n.size else float("nan")


def jaccard_distance(M_true: sp.spmatrix, M_est: sp.spmatrix) -> np.ndarray:
    """1 - |a & b| / |a | b| between all pairs of binary mask columns,
    (K_true, K_est); 1 where both masks are empty."""
    Mt = sp.csc_matrix(M_true, dtype=np.float64)
    Me = sp.csc_matrix(M_est, dtype=np.float64)
    inter = (Mt.T @ Me).toarray()
    at = np.asarray(Mt.sum(0)).ravel()
    ae = np.asarray(Me.sum(0)).ravel()
    union = at[:, None] + ae[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        J = np.where(union > 0, inter / union, 0.0)
    return 1.0 - J


def match_distances(D, max_cost: float, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of rows to columns of a distance matrix.

    The Hungarian method (``scipy.optimize.linear_sum_assignment``) finds
    the assignment of least total distance among pairs no farther than
    ``max_cost`` (below it when ``strict``); pairs beyond count as unmatched.

    Returns
    -------
    rows, cols : int arrays of the matched pairs, sorted by row.
    """
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2:
        raise ParameterError(f"D: expected a 2D distance matrix, got shape {D.shape}")
    if D.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    if np.isnan(D).any():
        raise ParameterError("D: the distance matrix holds NaN")
    valid = D < max_cost if strict else D <= max_cost
    cost = np.where(valid, D, _INVALID)
    r, c = linear_sum_assignment(cost)
    ok = valid[r, c]
    r, c = r[ok], c[ok]
    order = np.argsort(r)
    return r[order].astype(int), c[order].astype(int)


def roi_f1(A_true, A_est, dims=None, thr: float = 0.2, max_cost: float = 0.7,
           method: str = "max") -> dict:
    """Match estimated footprints to true ones and score the detection.

    Masks are thresholded (:func:`binary_masks`), their pairwise Jaccard
    distances computed by sparse products, and the one-to-one assignment
    of least total distance found by the Hungarian method; pairs farther
    than ``max_cost`` count as unmatched.

    Returns
    -------
    dict with
        f1, precision, recall : float
        matched_true, matched_est : int arrays, the matched pairs (sorted
            by true index)
        n_true, n_est : int
        cost : float array, the Jaccard distance of each matched pair
    """
    if not 0 <= max_cost <= 1:
        raise ParameterError(f"max_cost: expected a Jaccard distance in [0, 1], got {max_cost}")
    Mt = binary_masks(A_true, dims, thr, method)
    Me = binary_masks(A_est, dims, thr, method)
    if Mt.shape[0] != Me.shape[0]:
        raise ParameterError(f"A_est: {Me.shape[0]} pixels, but A_true has {Mt.shape[0]}")
    n_true, n_est = Mt.shape[1], Me.shape[1]
    D = jaccard_distance(Mt, Me) if n_true and n_est else np.ones((n_true, n_est))
    r, c = match_distances(D, max_cost)
    pair_cost = D[r, c]
    m = r.size
    precision = m / n_est if n_est else 0.0
    recall = m / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if m else 0.0
    return dict(f1=f1, precision=precision, recall=recall, matched_true=r, matched_est=c,
                n_true=n_true, n_est=n_est, cost=pair_cost)


def _rowwise_pearson(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    X = X - X.mean(1, keepdims=True)
    Y = Y - Y.mean(1, keepdims=True)
    num = (X * Y).sum(1)
    den = np.sqrt((X * X).sum(1) * (Y * Y).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, 0.0)


def _pairs(T_true, T_est, matched_true, matched_est, name):
    X = _np(T_true).astype(np.float64)
    Y = _np(T_est).astype(np.float64)
    X, Y = np.atleast_2d(X), np.atleast_2d(Y)
    if X.shape[1] != Y.shape[1]:
        raise ParameterError(f"{name}: estimated traces have {Y.shape[1]} frames, "
                             f"true ones {X.shape[1]}")
    if matched_true is None:
        matched_true = np.arange(X.shape[0])
    if matched_est is None:
        matched_est = np.arange(Y.shape[0])
    mt, me = np.asarray(matched_true, int), np.asarray(matched_est, int)
    if mt.shape != me.shape:
        raise ParameterError("matched_true and matched_est must have the same length")
    return X[mt], Y[me]


def trace_correlation(C_true, C_est, matched_true=None, matched_est=None) -> np.ndarray:
    """Pearson correlation of each matched pair of traces, (n_pairs,).

    ``matched_*`` default to all rows in order. A constant trace scores 0.
    """
    X, Y = _pairs(C_true, C_est, matched_true, matched_est, "C_est")
    return _rowwise_pearson(X, Y)


def spike_correlation(S_true, S_est, matched_true=None, matched_est=None,
                      bin_size: int = 1) -> np.ndarray:
    """Pearson correlation of matched spike trains after summing them in
    non-overlapping bins of ``bin_size`` frames (a trailing partial bin is
    dropped); binning forgives one-frame timing jitter."""
    if int(bin_size) < 1:
        raise ParameterError(f"bin_size: expected an integer >= 1, got {bin_size}")
    X, Y = _pairs(S_true, S_est, matched_true, matched_est, "S_est")
    b = int(bin_size)
    n = X.shape[1] // b * b
    if b > 1:
        X = X[:, :n].reshape(X.shape[0], -1, b).sum(2)
        Y = Y[:, :n].reshape(Y.shape[0], -1, b).sum(2)
    return _rowwise_pearson(X, Y)


def registration_error(true, est, crop: int = 0, subtract_mean: bool = False) -> float:
    """RMS Euclidean distance (px) between true and estimated motion.

    Parameters
    ----------
    true, est : (T, 2) shifts or (T, 2, d1, d2) flows, (y, x) order; a
        (T, 2) estimate is compared with a flow at every pixel.
    crop : int
        Border pixels left out of flows (their estimates extrapolate).
    subtract_mean : bool
        Remove the mean difference first: registration to a template made
        from the data recovers shifts only up to one constant offset.
    """
    t, e = _np(true).astype(np.float64), _np(est).astype(np.float64)
    if t.ndim not in (2, 4) or e.ndim not in (2, 4) or t.shape[1] != 2 or e.shape[1] != 2:
        raise ParameterError(f"registration_error: expected (T, 2) shifts or (T, 2, d1, d2) "
                             f"flows, got {t.shape} and {e.shape}")
    if t.shape[0] != e.shape[0]:
        raise ParameterError(f"registration_error: {t.shape[0]} true frames, {e.shape[0]} "
                             "estimated")
    if t.ndim == 4 and e.ndim == 4 and t.shape[2:] != e.shape[2:]:
        raise ParameterError(f"registration_error: flows of shapes {t.shape} and {e.shape}")
    if t.ndim == 2 and e.ndim == 4:
        t, e = e, t   # symmetric: put the flow first
    if e.ndim == 2 and t.ndim == 4:
        e = e[:, :, None, None]
    d = t - e
    if d.ndim == 4 and crop:
        c = int(crop)
        d = d[:, :, c:d.shape[2] - c, c:d.shape[3] - c]
    if subtract_mean:
        d = d - d.mean(axis=0, keepdims=True).mean(
            axis=tuple(range(2, d.ndim)), keepdims=True)
    return float(np.sqrt((d ** 2).sum(1).mean()))


def crispness(image) -> float:
    """NoRMCorre's crispness: the Frobenius norm of the gradient magnitude
    of an image (a (T, d1, d2) movie is averaged first). Sharper mean
    images, i.e. better registration, score higher."""
    im = _np(image).astype(np.float64)
    if im.ndim == 3:
        im = im.mean(0)
    if im.ndim != 2:
        raise ParameterError(f"image: expected (d1, d2) or (T, d1, d2), got {im.shape}")
    gy, gx = np.gradient(im)
    return float(np.sqrt((gy ** 2 + gx ** 2).sum()))


def frame_correlations(movie, template=None, chunk: int = 512) -> np.ndarray:
    """Pearson correlation of each frame with a template (default: the
    movie's mean), (T,). Computed in chunks of frames to bound memory."""
    mov = movie if hasattr(movie, "shape") else _np(movie)
    if len(mov.shape) != 3:
        raise ParameterError(f"movie: expected (T, d1, d2), got shape {mov.shape}")
    if template is None:
        template = np.mean(_np(mov), axis=0)
    tpl = _np(template).astype(np.float64).ravel()
    if tpl.size != int(np.prod(mov.shape[1:])):
        raise ParameterError(f"template: shape {np.shape(template)} does not match frames "
                             f"{tuple(mov.shape[1:])}")
    tpl = tpl - tpl.mean()
    tn = np.sqrt((tpl ** 2).sum())
    out = np.empty(mov.shape[0])
    for s in range(0, mov.shape[0], chunk):
        F = _np(mov[s:s + chunk]).reshape(-1, tpl.size).astype(np.float64)
        F = F - F.mean(1, keepdims=True)
        den = np.sqrt((F ** 2).sum(1)) * tn
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + F.shape[0]] = np.where(den > 0, F @ tpl / den, 0.0)
    return out
