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

import torch

from ..errors import ParameterError
from . import footprints as fp
from .config import MEDW, structure_3x3
from .hals import color_groups, hals_rows, hals_sparse_rows, lookup, pack_rows
from .morphology import (closing, crop_apply, diamond, dilate, largest_component, median_filter,
                         reconstruct_from_peak, structure)

# HALS passes for the spatial problem (warm started) and their tolerance.
SPATIAL_ITERS = 30
SPATIAL_TOL = 1e-3
# With extract_cc, the footprint is reduced to the component around its
# peak at every level, not only at the mask's (near-zero, for nrgthr
# 0.9999) level, where the support's noisy fringe joins specks and bits of
# neighbouring structure to the cell (issue 15: on the real 2p movie 27 %
# of accepted footprints fell apart at 20 % of their peak, into 1-7 px
# specks at 0.2-0.3 of it). Pixels that the peak reaches only through
# values below PEAK_PATH of their own are dropped; every other pixel is
# lowered to the highest level at which it is still connected to the peak
# (grey reconstruction), so that every threshold of the footprint is one
# piece. Lowering alone, without the drop, keeps the specks' surroundings,
# and the supports, which the next update dilates, grow by 20-60 %.
PEAK_PATH = 0.7


def expand_supports(A, dims, method_exp="dilate", dist=3.0, expandCore=None):
    """Where each footprint may be nonzero in the next spatial update.

    Parameters
    ----------
    A : (d, K) tensor, dense or sparse (:mod:`.footprints`)
        Current footprints.
    method_exp : 'dilate' or 'ellipse'
    dist : float
        Ellipse size in standard deviations of the footprint ('ellipse').
    expandCore : array, optional
        Structuring element for 'dilate'; CaImAn's default is the
        city-block ball of radius 2.

    Returns
    -------
    pix, comp : LongTensors of the support entries, sorted by component
        then pixel.
    """
    if method_exp not in ("dilate", "ellipse"):
        raise ParameterError(f"method_exp: expected 'dilate' or 'ellipse', got {method_exp!r}")
    dev = A.device
    K = A.shape[1]
    pix, comp, val = fp.entries(A)
    if method_exp == "ellipse":
        return ellipse_supports(pix, comp, val.clamp_min(0), K, dims, dist)
    se = diamond(2, dev) if expandCore is None else structure(expandCore, dev)
    pad = max(se.shape) // 2 + 1
    p, k, _ = crop_apply(pix, comp, val > 0, K, dims, pad, lambda m: dilate(m, se))
    return p, k


def ellipse_supports(pix, comp, w, K, dims, dist=3.0):
    """Pixels within Mahalanobis distance ``dist`` of each footprint's
    centre of mass, using the footprint's weighted spatial covariance
    (plus the footprint's own pixels); entries sorted as in
    :func:`expand_supports`."""
    d1, d2 = dims
    dev = pix.device
    ii, jj = (pix % d1).float(), (pix // d1).float()

    def csum(x):
        return torch.zeros(K, device=dev).index_add_(0, comp, x * w)

    tot = csum(torch.ones_like(w)).clamp_min(1e-12)
    mi, mj = csum(ii) / tot, csum(jj) / tot
    # regularise so single-pixel footprints still get a small disc
    sii = csum(ii ** 2) / tot - mi ** 2 + 0.25
    sjj = csum(jj ** 2) / tot - mj ** 2 + 0.25
    sij = csum(ii * jj) / tot - mi * mj
    det = (sii * sjj - sij ** 2).clamp_min(1e-6)
    # the ellipse lies within dist * sqrt(s_ii) of the centre along i
    ri = torch.ceil(dist * torch.sqrt(sii)).long() + 1
    rj = torch.ceil(dist * torch.sqrt(sjj)).long() + 1
    out_p, out_k = [pix], [comp]
    present = torch.nonzero(torch.zeros(K, dtype=torch.bool, device=dev).index_fill_(
        0, comp, True)).flatten()
    for s in range(0, present.numel(), 256):
        kk = present[s:s + 256]
        H, W = int(2 * ri[kk].max() + 1), int(2 * rj[kk].max() + 1)
        gi = torch.round(mi[kk]).long()[:, None, None] - H // 2 + \
            torch.arange(H, device=dev)[None, :, None]
        gj = torch.round(mj[kk]).long()[:, None, None] - W // 2 + \
            torch.arange(W, device=dev)[None, None, :]
        gi, gj = gi.expand(-1, H, W), gj.expand(-1, H, W)
        di = gi - mi[kk, None, None]
        dj = gj - mj[kk, None, None]
        a, b, c, dt = (x[kk, None, None] for x in (sjj, sij, sii, det))
        m2 = (a * di ** 2 - 2 * b * di * dj + c * dj ** 2) / dt
        ok = (m2 <= dist ** 2) & (gi >= 0) & (gi < d1) & (gj >= 0) & (gj < d2)
        n, r, c_ = torch.nonzero(ok, as_tuple=True)
        out_p.append(gi[n, r, c_] + gj[n, r, c_] * d1)
        out_k.append(kk[n])
    keys = torch.unique(torch.cat(out_k) * (d1 * d2) + torch.cat(out_p))
    return keys % (d1 * d2), keys // (d1 * d2)


def threshold_components(A, dims, medw=MEDW, thr_method="nrg", maxthr=0.1,
                         nrgthr=0.9999, extract_cc=True, se=None, ss=None, peak_path=None):
    """CaImAn's footprint post-processing, batched over components.

    Parameters
    ----------
    A : (d, K) tensor, dense or sparse
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
        reaches (connectivity ``ss``) without dropping below ``peak_path``
        times their own value, and lower the others to the highest level at
        which they are connected to the peak (grey reconstruction): every
        threshold of the result is one piece. The spatial update passes
        :data:`PEAK_PATH`; None: CaImAn's thresholding alone.

    Returns
    -------
    (d, K) tensor in ``A``'s layout: ``A`` where the mask is set, 0 elsewhere.
    """
    K = A.shape[1]
    if K == 0:
        return A
    dev = A.device
    medw = MEDW if medw is None else tuple(int(x) for x in medw)
    se_t = structure(structure_3x3() if se is None else se, dev)
    ss_t = structure(structure_3x3() if ss is None else ss, dev)
    if thr_method not in ("nrg", "max"):
        raise ParameterError(f"thr_method: expected 'nrg' or 'max', got {thr_method!r}")
    pad = max(max(medw), max(se_t.shape), max(ss_t.shape)) // 2 + 2
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
        x = torch.where(bw, crops, torch.zeros_like(crops))
        if extract_cc and peak_path:
            R = reconstruct_from_peak(x, ss_t)
            x = torch.where(R >= float(peak_path) * x, x, torch.zeros_like(x))
            x = reconstruct_from_peak(x, ss_t)
        return x

    pix, comp, val = fp.entries(A)
    pos = val > 0
    p, k, v = crop_apply(pix[pos], comp[pos], val[pos], K, dims, pad, fn)
    return fp.from_entries(p, k, v, A.shape, A)


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
    Arguments have components in rows (``Wt``, ``U``, ``mask``: (K+nb, n))."""
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


def _prune_l0_compact(W, U, Hb, Ub, V, idx, yy, sn, T, block=16384):
    """:func:`_prune_l0` on compact footprints, a block of pixels at a
    time (each block densified: (K + nb) x block). Returns the (K, L) bool
    of entries kept."""
    K, L = W.shape
    d = Hb.shape[1] - 1
    keep = idx < d
    rows = torch.arange(K, device=W.device)[:, None].expand(K, L)
    p_all, r_all = idx[keep], rows[keep]
    flat = torch.nonzero(keep.reshape(-1)).flatten()
    order = torch.argsort(p_all)
    p_s, r_s, f_s = p_all[order], r_all[order], flat[order]
    out = keep.reshape(-1).clone()
    for p0 in range(0, d, block):
        p1 = min(d, p0 + block)
        a, b = (int(x) for x in torch.searchsorted(p_s, torch.tensor([p0, p1], device=p_s.device)))
        if a == b:
            continue
        r, p, f = r_s[a:b], p_s[a:b] - p0, f_s[a:b]
        Wd = torch.zeros((K, p1 - p0), device=W.device)
        Ud = torch.zeros_like(Wd)
        Wd[r, p] = W.reshape(-1)[f]
        Ud[r, p] = U.reshape(-1)[f]
        Wd = torch.cat([Wd, Hb[:, p0:p1]], 0)
        Ud = torch.cat([Ud, Ub[:, p0:p1]], 0)
        m = torch.zeros_like(Wd, dtype=torch.bool)
        m[r, p] = True
        m[K:] = True
        kept = _prune_l0(Wd, Ud, V, m, yy[p0:p1], sn[p0:p1], T, K)
        out[f] = kept[r, p]
    return out.view(K, L)


def _overlaps(idx, K, d, b_mask, nb):
    """(K + nb, K + nb) bool: which rows' supports share a pixel."""
    dev = idx.device
    L = idx.shape[1]
    valid = idx < d
    rows = torch.arange(K, device=dev)[:, None].expand(K, L)[valid]
    S = fp.coo(torch.stack([idx[valid], rows]), torch.ones(rows.numel(), device=dev), (d, K))
    R = K + nb
    out = torch.ones((R, R), dtype=torch.bool, device=dev)
    out[:K, :K] = fp.overlap_counts(S) > 0
    if b_mask is not None and nb:
        bm = b_mask.float()
        cb = fp.t_matmul(S, bm) > 0
        out[:K, K:], out[K:, :K] = cb, cb.T
        out[K:, K:] = (bm.T @ bm) > 0
    return out


def update_spatial(mm, A, b, C, f, sn, *, method_exp="dilate", dist=3.0, expandCore=None,
                   method_ls="lasso_lars", normalize_yyt_one=True,
                   update_background_components=True, thr_method="nrg", maxthr=0.1,
                   nrgthr=0.9999, extract_cc=True, medw=MEDW, se=None, ss=None,
                   b_mask=None, yy=None, n_iter=SPATIAL_ITERS):
    """One spatial update (one pass over the movie for ``Y [C; f]'``).

    Footprints are handled in compact form throughout: each component's
    support (at most ``L`` pixels) as a row of indices, its values and its
    data projection beside them, so the memory is that of the supports,
    not pixels x K (:mod:`.footprints`).

    Parameters
    ----------
    mm : MovieMatrix
    A : (d, K) tensor (dense or sparse), b : (d, nb) tensor, C : (K, T), f : (nb, T)
    sn : (d,) tensor of pixel noise levels
    b_mask : (d, nb) bool tensor, optional
        Support of each background column (patch backgrounds kept full
        rank); None means the whole field of view.
    yy : (d,) tensor, optional
        Per-pixel sum of squares of Y (needed by 'nnls_L0').

    Returns
    -------
    A : updated footprints, in ``A``'s layout
    b : updated background
    keep : (K,) bool tensor, False for components that became empty
    """
    if method_ls not in ("lasso_lars", "nnls_L0"):
        raise ParameterError(f"method_ls: expected 'lasso_lars' or 'nnls_L0', got {method_ls!r}")
    if method_ls == "nnls_L0" and yy is None:
        raise ParameterError("method_ls='nnls_L0' needs the per-pixel energy yy")
    dev = C.device
    K, nb = A.shape[1], b.shape[1]
    d = mm.d
    spix, scomp = expand_supports(A, mm.dims, method_exp, dist, expandCore)
    idx, = pack_rows(scomp, spix, K, d)
    Ct = torch.cat([C, f], 0)
    norms = torch.sqrt((Ct ** 2).sum(1)).clamp_min(1e-12) if normalize_yyt_one \
        else torch.ones(K + nb, device=dev)
    Cn = Ct / norms[:, None]
    V = Cn @ Cn.T
    zero_col = torch.zeros((nb, 1), device=dev)
    U, Ub = mm.CYt_at(Cn[:K], idx, Cn[K:])                      # (K, L), (nb, d)
    Ub = torch.cat([Ub, zero_col], 1)
    apix, acomp, aval = fp.entries(A)
    pos, found = lookup(acomp * (d + 1) + apix,
                        torch.arange(K, device=dev)[:, None] * (d + 1) + idx)
    W = torch.where(found, aval[pos.clamp_max(max(aval.numel() - 1, 0))],
                    torch.zeros((), device=dev)) if aval.numel() else torch.zeros_like(U)
    W = W * norms[:K, None]
    Hb = torch.cat([b.T * norms[K:, None], zero_col], 1)
    if b_mask is not None:
        Hb[:, :d] *= b_mask.T
    overlap = _overlaps(idx, K, d, b_mask, nb)
    groups = color_groups(overlap)
    sparse_groups = [g[g < K] for g in groups]
    sparse_groups = [g for g in sparse_groups if g.numel()]
    dense_groups = [g[g >= K] for g in groups] if update_background_components else []
    dense_groups = [g for g in dense_groups if g.numel()]
    lam_row = lam_col = None
    if method_ls == "lasso_lars":
        lam_row, lam_col = lasso_weights(sn, V, K, nb, normalize_yyt_one)
        lam_row = lam_row[:K]
    kw = dict(dense_groups=dense_groups, overlap=overlap, b_mask=b_mask)
    hals_sparse_rows(W, U, Hb, Ub, V, sparse_groups, idx, lam_row, lam_col, n_iter=n_iter,
                     tol=SPATIAL_TOL, **kw)
    if method_ls == "nnls_L0":
        kept = _prune_l0_compact(W, U, Hb, Ub, V, idx, yy, sn, mm.T)
        rows = torch.arange(K, device=dev)[:, None].expand_as(idx)
        idx, W, U = pack_rows(rows[kept], idx[kept], K, d, W[kept], U[kept])
        hals_sparse_rows(W, U, Hb, Ub, V, sparse_groups, idx, n_iter=5, **kw)
    valid = idx < d
    rows = torch.arange(K, device=dev)[:, None].expand_as(idx)
    vals = (W / norms[:K, None])[valid]
    pos = vals > 0
    A_new = fp.from_entries(idx[valid][pos], rows[valid][pos], vals[pos], (d, K), A)
    b_new = (Hb[:, :d] / norms[K:, None]).T.contiguous()
    A_new = threshold_components(A_new, mm.dims, medw, thr_method, maxthr, nrgthr,
                                 extract_cc, se, ss, peak_path=PEAK_PATH)
    keep = fp.nonempty(A_new)
    return A_new, b_new, keep


def background_solver(A, b, C, f, b_mask=None, n_iter=10):
    """The background update of a range of pixels.

    ``min_{b >= 0} ||Y - A C - b f||^2`` is separate for every pixel (the
    traces are fixed), so it is solved block of pixels by block: the
    returned ``solve(p0, p1, fYt)`` takes ``f Y'`` of pixels ``p0:p1``
    ((nb, p1 - p0), from a pixel block of the movie as it is read) and
    returns their rows of ``b`` ((p1 - p0, nb)), by HALS on ``f Y' - f C' A'``
    and ``f f'`` within ``b_mask`` (patch-local columns).
    """
    nb = b.shape[1]
    CF = C @ f.T                                        # (K, nb)
    Q = f @ f.T
    groups = [torch.tensor([i], device=b.device) for i in range(nb)]

    def solve(p0, p1, fYt):
        P = fYt - fp.matmul(fp.row_block(A, p0, p1), CF).T
        H = b[p0:p1].T.contiguous()
        mask = None if b_mask is None else b_mask[p0:p1].T.contiguous()
        hals_rows(H, P, Q, groups, mask=mask, n_iter=n_iter)
        return H.T.contiguous()

    return solve


def update_background(mm, A, b, C, f, b_mask=None, n_iter=10):
    """Background footprints ``b`` given everything else (one movie pass).

    Solves ``min_{b >= 0} ||Y - A C - b f||^2`` (within ``b_mask`` when the
    background columns are patch-local), see :func:`background_solver`;
    used after patches, whose compressed background must be refitted to
    the whole movie before the traces are (:func:`background_and_AtY` does
    both in one pass).
    """
    if b.shape[1] == 0:
        return b
    return background_solver(A, b, C, f, b_mask, n_iter)(0, mm.d, mm.CYt(f))


def background_and_AtY(mm, A, b, C, f, b_mask=None, n_iter=10):
    """:func:`update_background`, then ``[A b]' Y`` with the new ``b``, in
    one pass over a pixel-major movie (each pixel block's ``b`` is solved
    as the block is read, then projected); two passes otherwise.

    Returns
    -------
    b : (d, nb) tensor, AtY : (K + nb, T) tensor
    """
    if b.shape[1] == 0 or mm.layout != "pixels":
        b = update_background(mm, A, b, C, f, b_mask, n_iter)
        return b, mm.AtY(A, b)
    solve = background_solver(A, b, C, f, b_mask, n_iter)
    AtY, b = mm.AtY(A, b, b_from_block=lambda p0, p1, Yb: solve(p0, p1, f @ Yb.T))
    return b, AtY
