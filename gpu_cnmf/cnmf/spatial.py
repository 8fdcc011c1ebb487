"""Spatial update: footprints A and background b given traces C and f.

Each footprint may only grow into a neighbourhood of its current support
(``method_exp``: 'dilate' by ``expandCore``, or 'ellipse' of ``dist`` times
its spatial spread). Inside those supports the nonnegative least squares
problem ``min_A>=0 ||Y - A C - b f||^2`` is solved by batched HALS on the
products ``Y [C; f]'`` and ``[C; f][C; f]'`` (one pass over the movie).

CaImAn solves the same problem pixel by pixel with a sparsity method
(``method_ls``); here:

- 'lasso_lars': an L1 penalty on every footprint entry with CaImAn's weight
  for pixel p, ``0.5 * sn_p * max_k ||c_k||`` (scikit-learn's lasso
  ``alpha = 0.5 sn_p sqrt(max diag CC') / T`` times T), which HALS handles
  exactly by shifting the update.
- 'nnls_L0': NNLS, then per pixel the entries whose removal costs least are
  dropped while the pixel's residual stays within its noise budget
  ``T sn_p^2`` (the L0-constrained reading of CaImAn's method), followed by
  a few HALS passes on the remaining support.

The updated footprints are then thresholded as CaImAn does (median filter
of width ``medw``, energy 'nrg' or 'max' threshold, closing with ``se``,
largest connected component under ``ss`` when ``extract_cc``, and then the
component around the peak at every level, see ``PEAK_PATH``), and emptied
components are reported so the caller drops them.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ParameterError
from .hals import color_groups, hals_rows, hals_sparse_rows, support_index
from .morphology import (closing, crop_map, diamond, dilate, from_images,
                         largest_component, median_filter, reconstruct_from_peak, structure,
                         to_images)

# HALS passes for the spatial problem (warm started) and their tolerance.
SPATIAL_ITERS = 30
SPATIAL_TOL = 1e-3
# With extract_cc, a pixel stays in a footprint only if some path from the
# footprint's peak reaches it without dropping below this fraction of the
# pixel's own value: the connected component around the peak taken at every
# threshold level, so a footprint is one piece around its cell (issue 15:
# on real 2p data 57 % of accepted footprints fell apart at 20 % of their
# peak, specks joined to the cell only through the support's noisy fringe).
PEAK_PATH = 0.7


def expand_supports(A, dims, method_exp="dilate", dist=3.0, expandCore=None):
    """Where each footprint may be nonzero in the next spatial update.

    Parameters
    ----------
    A : (d, K) tensor
        Current footprints.
    method_exp : 'dilate' or 'ellipse'
    dist : float
        Ellipse size in standard deviations of the footprint ('ellipse').
    expandCore : array, optional
        Structuring element for 'dilate'; CaImAn's default is the
        city-block ball of radius 2.

    Returns
    -------
    (d, K) bool tensor
    """
    dev = A.device
    K = A.shape[1]
    if K == 0:
        return torch.zeros_like(A, dtype=torch.bool)
    if method_exp == "dilate":
        se = diamond(2, dev) if expandCore is None else structure(expandCore, dev)
        pad = max(se.shape) // 2 + 1
        masks = to_images(A > 0, dims)
        out = crop_map(masks, masks, pad, lambda m: dilate(m, se))
        return from_images(out)
    if method_exp == "ellipse":
        return ellipse_supports(A, dims, dist)
    raise ParameterError(f"method_exp: expected 'dilate' or 'ellipse', got {method_exp!r}")


def ellipse_supports(A, dims, dist=3.0):
    """Pixels within Mahalanobis distance ``dist`` of each footprint's
    centre of mass, using the footprint's weighted spatial covariance."""
    d1, d2 = dims
    dev = A.device
    ii = torch.arange(d1, device=dev, dtype=torch.float32).repeat(d2)
    jj = torch.arange(d2, device=dev, dtype=torch.float32).repeat_interleave(d1)
    w = A.clamp_min(0)
    tot = w.sum(0).clamp_min(1e-12)
    mi = (ii @ w) / tot
    mj = (jj @ w) / tot
    sii = ((ii ** 2) @ w) / tot - mi ** 2
    sjj = ((jj ** 2) @ w) / tot - mj ** 2
    sij = ((ii * jj) @ w) / tot - mi * mj
    # regularise so single-pixel footprints still get a small disc
    sii = sii + 0.25
    sjj = sjj + 0.25
    det = (sii * sjj - sij ** 2).clamp_min(1e-6)
    di = ii[:, None] - mi[None, :]
    dj = jj[:, None] - mj[None, :]
    m2 = (sjj * di ** 2 - 2 * sij * di * dj + sii * dj ** 2) / det
    return (m2 <= dist ** 2) | (A > 0)


def threshold_components(A, dims, medw=(3, 3), thr_method="nrg", maxthr=0.1,
                         nrgthr=0.9999, extract_cc=True, se=None, ss=None, peak_path=None):
    """CaImAn's footprint post-processing, batched over components.

    Parameters
    ----------
    A : (d, K) tensor
    medw : (int, int)
        Median filter window applied before thresholding.
    thr_method : 'nrg' or 'max'
        'nrg' keeps the brightest pixels holding ``nrgthr`` of the energy
        (sum of squares); 'max' keeps pixels above ``maxthr`` times the peak.
    extract_cc : bool
        Keep only the largest connected component (connectivity ``ss``).
    se : array
        Structuring element of the binary closing of the mask.
    peak_path : float, optional
        With ``extract_cc``, also drop pixels that no path from the peak
        reaches without dropping below ``peak_path`` times their own value
        (the spatial update passes :data:`PEAK_PATH`; None: CaImAn's
        thresholding alone).

    Returns
    -------
    (d, K) tensor: ``A`` where the mask is set, 0 elsewhere.
    """
    K = A.shape[1]
    if K == 0:
        return A
    dev = A.device
    medw = (3, 3) if medw is None else tuple(int(x) for x in medw)
    se_t = structure(np.ones((3, 3)) if se is None else se, dev)
    ss_t = structure(np.ones((3, 3)) if ss is None else ss, dev)
    if thr_method not in ("nrg", "max"):
        raise ParameterError(f"thr_method: expected 'nrg' or 'max', got {thr_method!r}")
    pad = max(max(medw), max(se_t.shape), max(ss_t.shape)) // 2 + 2
    imgs = to_images(A, dims)

    def fn(crops):
        x = median_filter(crops, medw)
        n = x.shape[0]
        flat = x.reshape(n, -1)
        if thr_method == "nrg":
            vals = torch.sort(flat.clamp_min(0), dim=1, descending=True).values
            energy = torch.cumsum(vals ** 2, 1)
            total = energy[:, -1:].clamp_min(1e-30)
            count = (energy / total < nrgthr).sum(1).clamp_max(flat.shape[1] - 1)
            thr = vals.gather(1, count[:, None])
            bw = (flat >= thr) & (flat > 0)
        else:
            bw = flat > maxthr * flat.amax(1, keepdim=True).clamp_min(1e-30)
        bw = closing(bw.reshape(x.shape), se_t)
        if extract_cc:
            bw = largest_component(bw, ss_t)
        if extract_cc and peak_path:
            # The component around the peak at every level, not only at the
            # (near-zero, for nrgthr=0.9999) mask level: drop pixels reached
            # from the peak only through values below PEAK_PATH of their own
            # (specks and pieces of neighbouring structure that the support
            # joins through its noisy low fringe).
            R = reconstruct_from_peak(torch.where(bw, crops, torch.zeros_like(crops)), ss_t)
            bw = bw & (R >= float(peak_path) * crops)
        return bw

    mask = crop_map(imgs, imgs > 0, pad, fn)
    return A * from_images(mask)


def lasso_weights(sn, V, K, nb, normalized):
    """L1 weights of the 'lasso_lars' reading as a row factor (components,
    0 for background) and a column factor (pixel noise, plus the padding
    column): entry (k, p) is weighted ``0.5 * max_k ||c_k|| * sn_p``."""
    scale = 1.0
    if not normalized and K:
        scale = float(torch.sqrt(torch.diagonal(V)[:K].max().clamp_min(0)))
    rows = torch.zeros(K + nb, device=sn.device)
    rows[:K] = 0.5 * scale
    return rows, torch.cat([sn, sn.new_zeros(1)])


def _prune_l0(Wt, U, V, mask, yy, sn, T, K):
    """Drop the cheapest footprint entries of each pixel within its noise
    budget ``T sn^2`` (batched over pixels); returns the reduced mask.
    Arguments have components in rows (``Wt``, ``U``, ``mask``: (K+nb, d))."""
    VW = V @ Wt
    rss = (yy - 2 * (Wt * U).sum(0) + (VW * Wt).sum(0)).clamp_min(0)
    slack = (T * sn ** 2 - rss).clamp_min(0)
    Wn = Wt[:K]
    dq = torch.diagonal(V)[:K, None]
    cost = Wn ** 2 * dq - 2 * Wn * (U[:K] - VW[:K])
    cost = torch.where(Wn > 0, cost.clamp_min(0), torch.full_like(cost, float("inf")))
    sc, order = torch.sort(cost, dim=0)
    drop_sorted = torch.cumsum(sc, 0) <= slack[None, :]
    drop = torch.zeros_like(drop_sorted)
    drop.scatter_(0, order, drop_sorted)
    new = mask.clone()
    new[:K] &= ~drop
    return new


def update_spatial(mm, A, b, C, f, sn, *, method_exp="dilate", dist=3.0, expandCore=None,
                   method_ls="lasso_lars", normalize_yyt_one=True,
                   update_background_components=True, thr_method="nrg", maxthr=0.1,
                   nrgthr=0.9999, extract_cc=True, medw=(3, 3), se=None, ss=None,
                   b_mask=None, yy=None, n_iter=SPATIAL_ITERS):
    """One spatial update (one pass over the movie for ``Y [C; f]'``).

    Parameters
    ----------
    mm : MovieMatrix
    A : (d, K) tensor, b : (d, nb) tensor, C : (K, T), f : (nb, T)
    sn : (d,) tensor of pixel noise levels
    b_mask : (d, nb) bool tensor, optional
        Support of each background column (patch backgrounds kept full
        rank); None means the whole field of view.
    yy : (d,) tensor, optional
        Per-pixel sum of squares of Y (needed by 'nnls_L0').

    Returns
    -------
    A, b : updated tensors
    keep : (K,) bool tensor, False for components that became empty
    """
    if method_ls not in ("lasso_lars", "nnls_L0"):
        raise ParameterError(f"method_ls: expected 'lasso_lars' or 'nnls_L0', got {method_ls!r}")
    dev = A.device
    K, nb = A.shape[1], b.shape[1]
    M = expand_supports(A, mm.dims, method_exp, dist, expandCore)
    bm = torch.ones((A.shape[0], nb), dtype=torch.bool, device=dev) if b_mask is None else b_mask
    d = A.shape[0]
    mask = torch.cat([M, bm], 1).T.contiguous()                 # (K+nb, d)
    Ct = torch.cat([C, f], 0)
    norms = torch.sqrt((Ct ** 2).sum(1)).clamp_min(1e-12) if normalize_yyt_one \
        else torch.ones(K + nb, device=dev)
    Cn = Ct / norms[:, None]
    zero_col = torch.zeros((K + nb, 1), device=dev)
    U = torch.cat([mm.CYt(Cn), zero_col], 1)                    # (K+nb, d+1)
    V = Cn @ Cn.T
    W = torch.cat([(torch.cat([A, b], 1).T * norms[:, None]) * mask, zero_col], 1)
    maskf = mask.float()
    overlap = (maskf @ maskf.T) > 0
    groups = color_groups(overlap)
    del maskf
    # footprints: sparse supports; background: whole field (or its patch)
    dense_bg = b_mask is None
    idx = support_index(mask if not dense_bg else torch.cat(
        [mask[:K], torch.zeros((nb, d), dtype=torch.bool, device=dev)], 0))
    sparse_groups = [g[g < K] if dense_bg else g for g in groups]
    sparse_groups = [g for g in sparse_groups if g.numel()]
    dense_groups = [g[g >= K] for g in groups] if dense_bg else []
    dense_groups = [g for g in dense_groups if g.numel()]
    if not update_background_components and nb:
        sparse_groups = [g[g < K] for g in sparse_groups]
        sparse_groups = [g for g in sparse_groups if g.numel()]
        dense_groups = []
    lam_row = lam_col = None
    if method_ls == "lasso_lars":
        lam_row, lam_col = lasso_weights(sn, V, K, nb, normalize_yyt_one)
    hals_sparse_rows(W, U, V, sparse_groups, idx, lam_row, lam_col, n_iter=n_iter,
                     tol=SPATIAL_TOL, dense_groups=dense_groups, overlap=overlap)
    if method_ls == "nnls_L0":
        if yy is None:
            raise ParameterError("method_ls='nnls_L0' needs the per-pixel energy yy")
        keep = _prune_l0(W[:, :d], U[:, :d], V, mask, yy, sn, mm.T, K)
        W[:, :d] *= keep
        idx = torch.where(torch.gather(torch.cat([keep, zero_col.bool()], 1), 1, idx), idx,
                          torch.full_like(idx, d))
        hals_sparse_rows(W, U, V, sparse_groups, idx, n_iter=5, dense_groups=dense_groups,
                         overlap=overlap)
    W = (W[:, :d] / norms[:, None]).T
    A_new, b_new = W[:, :K], W[:, K:].contiguous()
    A_new = threshold_components(A_new, mm.dims, medw, thr_method, maxthr, nrgthr,
                                 extract_cc, se, ss, peak_path=PEAK_PATH)
    keep = (A_new > 0).any(0)
    return A_new, b_new, keep


def update_background(mm, A, b, C, f, b_mask=None, n_iter=10):
    """Background footprints ``b`` given everything else (one movie pass).

    Solves ``min_{b >= 0} ||Y - A C - b f||^2`` (within ``b_mask`` when the
    background columns are patch-local) by HALS on ``f Y'`` and ``f f'``;
    used after patches, whose compressed background must be refitted to
    the whole movie before the traces are.
    """
    nb = b.shape[1]
    if nb == 0:
        return b
    dev = b.device
    P = mm.CYt(f) - (f @ C.T) @ A.T                   # (nb, d)
    Q = f @ f.T
    H = b.T.contiguous()
    mask = None if b_mask is None else b_mask.T.contiguous()
    groups = [torch.tensor([i], device=dev) for i in range(nb)]
    hals_rows(H, P, Q, groups, mask=mask, n_iter=n_iter)
    return H.T.contiguous()
