"""Initial footprints and traces on the downsampled movie.

- :func:`greedy_roi`: Pnevmatikakis et al. (2016)'s greedy search. The movie,
  minus each pixel's slow baseline (:func:`pixel_baseline`: medians over
  runs of ``rolling_length`` frames, so that bleaching is not taken for
  activity), is filtered with a Gaussian of width ``gSig`` (or the user's
  ``kernel``); the pixel with the largest (rolling, over ``rolling_length``
  frames) filtered energy seeds a component whose footprint in the ``gSiz``
  box and trace are refined by ``nIter`` rank-1 NMF steps; the component is
  subtracted, the filtered movie and energy are updated locally, and the
  search repeats until ``K`` components. A box whose trace correlates at
  ``merge_thr`` with a component whose box it touches refits that component
  on both boxes instead of adding one (a cell larger than ``gSiz`` peaks
  again beside its first box; its copies took the K of weaker cells).
- :func:`sparse_nmf`: L1-regularised NMF (``alpha_snmf``) of the smoothed
  (``sigma_smooth_snmf``), baseline-subtracted (``perc_baseline_snmf``) movie,
  for dendrites and other non-round sources.
- :func:`hals_refine`: ``maxIter`` rounds of HALS on footprints (in a
  dilation of their current support), traces and the ``nb`` background
  components, also used to start seeded CNMF from given masks.

Everything runs on the movie averaged over ``ssub`` pixels and ``tsub``
frames, equalised by its mean image when ``normalize_init``; the result is
brought back to full resolution by :func:`upsample`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError
from ..params import default_gsiz
from .background import nmf_hals
from .hals import color_groups, group_columns, hals_rows
from .morphology import crop_map, dilate, from_images, to_images


def gaussian_1d(sigma, size, device):
    """Normalised Gaussian of std ``sigma`` on ``size`` (odd) taps."""
    r = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * max(float(sigma), 1e-3) ** 2))
    return g / g.sum()


def filter_frames(Y, kern_y, kern_x=None):
    """Filter each frame of ``Y`` (h, w, T); separable when ``kern_x`` is given,
    otherwise ``kern_y`` is a full 2-D kernel. Zero padding: the movie is
    median-subtracted, and the greedy search updates the filtered movie
    locally with the same zero-padded filter, so both stay consistent."""
    x = Y.permute(2, 0, 1)[:, None]
    if kern_x is None:
        k = kern_y
        x = F.pad(x, (k.shape[1] // 2, (k.shape[1] - 1) // 2, k.shape[0] // 2, (k.shape[0] - 1) // 2),
                  mode="constant")
        x = F.conv2d(x, k[None, None])
    else:
        ky, kx = kern_y.numel(), kern_x.numel()
        x = F.pad(x, (kx // 2, kx // 2, ky // 2, ky // 2), mode="constant")
        x = F.conv2d(x, kern_y.reshape(1, 1, ky, 1))
        x = F.conv2d(x, kern_x.reshape(1, 1, 1, kx))
    return x[:, 0].permute(1, 2, 0)


def _energy(rho, rolling_sum, rolling_length):
    """Per-pixel score: max rolling (or total) sum of rho^2 over time.

    Only positive excursions count: transients are positive, and the
    negative residue a subtracted component leaves must not attract the
    search back to the same place."""
    e = rho.clamp_min(0) ** 2
    T = e.shape[-1]
    if not rolling_sum or rolling_length >= T:
        return e.sum(-1)
    cs = torch.cumsum(e, -1)
    L = int(rolling_length)
    win = torch.cat([cs[..., L - 1:L], cs[..., L:] - cs[..., :-L]], -1)
    return win.amax(-1)


def _rank1(Yb, c, n_iter):
    """``n_iter`` alternating nonnegative rank-1 steps on a box (pix, T)."""
    c = c.clamp_min(0)
    a = None
    for _ in range(max(1, int(n_iter))):
        cc = float(c @ c)
        if cc <= 0:
            break
        a = (Yb @ c).clamp_min(0) / cc
        na = a.norm()
        if float(na) <= 0:
            break
        a = a / na
        c = (a @ Yb).clamp_min(0)
    if a is None:
        a = torch.zeros(Yb.shape[0], device=Yb.device)
    return a, c


def _corr(c, C):
    """Pearson correlation of trace ``c`` with each row of ``C``."""
    cc = c - c.mean()
    Cc = C - C.mean(1, keepdim=True)
    return (Cc @ cc) / (Cc.norm(dim=1) * cc.norm()).clamp_min(1e-12)


def greedy_roi(Y, K, gSig, gSiz, nIter=5, kernel=None, rolling_sum=True, rolling_length=100,
               same_thr=None):
    """Greedy search of ``K`` components in a (h, w, T) movie.

    Parameters
    ----------
    Y : (h, w, T) tensor
        Movie, median-subtracted; modified in place (the residual is left).
    K : int
    gSig, gSiz : sequences of 2 floats
        Gaussian std and box size (pixels of this movie).
    nIter : int
        Rank-1 refinement steps per component.
    kernel : 2-D array, optional
        Template that replaces the Gaussian.
    rolling_sum, rolling_length
        Score pixels by the largest sum of filtered energy over a window
        of ``rolling_length`` frames instead of the whole movie.
    same_thr : float, optional
        A new box whose trace correlates at ``same_thr`` or more with a
        component whose box it touches is more of that component (a cell
        larger than the box leaves a residual that peaks again beside it):
        the component is refitted on the union of both boxes instead of a
        new one being added, so that ``K`` goes to other cells. ``None``:
        every box is a new component (the original greedy search).

    Returns
    -------
    A : (h, w, K') tensor (K' <= K, unit-norm footprints)
    C : (K', T) tensor
    centers : (K', 2) int array
    """
    h, w, T = Y.shape
    dev = Y.device
    half = [max(1, int(s) // 2) for s in gSiz]
    if kernel is not None:
        kern = torch.as_tensor(np.asarray(kernel, dtype=np.float32), device=dev)
        kh, kw = kern.shape
        filt = lambda x: filter_frames(x, kern)  # noqa: E731
    else:
        gy = gaussian_1d(gSig[0], 2 * half[0] + 1, dev)
        gx = gaussian_1d(gSig[1], 2 * half[1] + 1, dev)
        kern = gy[:, None] * gx[None, :]
        kh, kw = kern.shape
        filt = lambda x: filter_frames(x, gy, gx)  # noqa: E731
    rho = filt(Y)
    v = _energy(rho, rolling_sum, rolling_length)
    A = torch.zeros((h, w, K), device=dev)
    C = torch.zeros((K, T), device=dev)
    boxes = np.zeros((K, 4), dtype=int)
    centers = np.zeros((K, 2), dtype=int)
    picked = torch.zeros((h, w), dtype=torch.bool, device=dev)

    def update_filtered(y0, y1, x0, x1, a_img, c, sign):
        """rho -= sign * filt(a) c near the box; rescore there."""
        ey0, ey1 = max(0, y0 - kh // 2), min(h, y1 + kh // 2)
        ex0, ex1 = max(0, x0 - kw // 2), min(w, x1 + kw // 2)
        canvas = torch.zeros((ey1 - ey0, ex1 - ex0), device=dev)
        canvas[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0] = a_img
        fa = F.conv2d(canvas[None, None], kern[None, None], padding=(kh // 2, kw // 2))[0, 0]
        fa = fa[:ey1 - ey0, :ex1 - ex0]
        rho[ey0:ey1, ex0:ex1] -= sign * fa[..., None] * c
        v[ey0:ey1, ex0:ex1] = _energy(rho[ey0:ey1, ex0:ex1], rolling_sum, rolling_length) \
            * ~picked[ey0:ey1, ex0:ex1]

    n = 0
    for _attempt in range(3 * K):
        if n == K:
            break
        ind = int(torch.argmax(v))
        i, j = divmod(ind, w)
        if float(v[i, j]) <= 0:
            break
        y0, y1 = max(0, i - half[0]), min(h, i + half[0] + 1)
        x0, x1 = max(0, j - half[1]), min(w, j + half[1] + 1)
        box = Y[y0:y1, x0:x1]
        a, c = _rank1(box.reshape(-1, T), rho[i, j].clone(), nIter)
        picked[i, j] = True
        if float(c.max()) <= 0:
            v[i, j] = 0
            continue
        owner = -1
        if same_thr is not None and n:
            # components whose box touches this one
            bx = boxes[:n]
            touch = (bx[:, 0] <= y1) & (bx[:, 1] >= y0) & (bx[:, 2] <= x1) & (bx[:, 3] >= x0)
            cand = np.flatnonzero(touch)
            if cand.size:
                r = _corr(c, C[torch.as_tensor(cand, device=dev)]).cpu().numpy()
                if r.max() >= same_thr:
                    owner = int(cand[r.argmax()])
        if owner < 0:
            a_img = a.reshape(y1 - y0, x1 - x0)
            A[y0:y1, x0:x1, n] = a_img
            C[n] = c
            centers[n] = (i, j)
            boxes[n] = (y0, y1, x0, x1)
            n += 1
            box -= a_img[..., None] * c
            update_filtered(y0, y1, x0, x1, a_img, c, 1.0)
            continue
        # more of component `owner`: put it back and fit both boxes as one
        oy0, oy1, ox0, ox1 = boxes[owner]
        uy0, uy1, ux0, ux1 = min(y0, oy0), max(y1, oy1), min(x0, ox0), max(x1, ox1)
        a_old = A[uy0:uy1, ux0:ux1, owner].clone()
        c_old = C[owner].clone()
        ub = Y[uy0:uy1, ux0:ux1]
        ub += a_old[..., None] * c_old
        update_filtered(uy0, uy1, ux0, ux1, a_old, c_old, -1.0)
        a2, c2 = _rank1(ub.reshape(-1, T), c_old + c, nIter)
        a2_img = a2.reshape(uy1 - uy0, ux1 - ux0)
        A[uy0:uy1, ux0:ux1, owner] = a2_img
        C[owner] = c2
        boxes[owner] = (uy0, uy1, ux0, ux1)
        ub -= a2_img[..., None] * c2
        update_filtered(uy0, uy1, ux0, ux1, a2_img, c2, 1.0)
    return A[..., :n], C[:n], centers[:n]


def pixel_baseline(Y, window):
    """Slow baseline of each pixel of a (h, w, T) movie: the median of each
    run of ``window`` frames, linearly interpolated between the runs'
    centres and flat beyond the first and last (one median for the whole
    movie when it holds under two runs).

    Photobleaching and slow drifts of the resting fluorescence are not
    neurons' activity: with one median per pixel subtracted they leave a
    positive excursion over the first part of the recording that the
    greedy search takes for a component (and that correlates neighbouring
    traces, so that distinct cells merge).

    Returns
    -------
    meds : (h, w, n) tensor, the runs' medians
    centres : (n,) tensor, the runs' centres (frames)
    """
    T = Y.shape[-1]
    n = T // max(1, int(window))
    if n < 2:
        return Y.median(-1, keepdim=True).values, torch.zeros(1, device=Y.device)
    L = T // n
    meds = torch.stack([Y[..., i * L:(i + 1) * L].median(-1).values for i in range(n)], -1)
    centres = (torch.arange(n, device=Y.device, dtype=torch.float32) + 0.5) * L - 0.5
    return meds, centres


def add_baseline(Y, meds, centres, sign=1.0, chunk=256):
    """``Y += sign * baseline`` in place (see :func:`pixel_baseline`), a
    ``chunk`` of frames at a time so that no second movie is formed."""
    T = Y.shape[-1]
    n = meds.shape[-1]
    for t0 in range(0, T, chunk):
        t = torch.arange(t0, min(T, t0 + chunk), device=Y.device, dtype=torch.float32)
        if n == 1:
            Y[..., t0:t0 + t.numel()] += sign * meds
            continue
        k = torch.searchsorted(centres, t).clamp(1, n - 1)
        wgt = ((t - centres[k - 1]) / (centres[k] - centres[k - 1])).clamp(0, 1)
        Y[..., t0:t0 + t.numel()] += sign * (meds[..., k - 1] * (1 - wgt) + meds[..., k] * wgt)
    return Y


def gaussian_smooth(Y, sigmas):
    """Gaussian smoothing of a (h, w, T) movie along each axis (reflect)."""
    x = Y
    for axis, s in enumerate(sigmas):
        if s is None or s <= 0:
            continue
        r = int(math.ceil(3 * s))
        if r == 0 or x.shape[axis] <= r:
            continue
        g = gaussian_1d(s, 2 * r + 1, x.device)
        xt = x.movedim(axis, -1)
        shp = xt.shape
        z = F.pad(xt.reshape(-1, 1, shp[-1]), (r, r), mode="reflect")
        z = F.conv1d(z, g.reshape(1, 1, -1))
        x = z.reshape(shp).movedim(-1, axis)
    return x


def sparse_nmf(Y, K, alpha_snmf=100.0, max_iter_snmf=500, sigma_smooth_snmf=(0.5, 0.5, 0.5),
               perc_baseline_snmf=20, tol=1e-4):
    """L1-sparse NMF of a (h, w, T) movie into ``K`` components.

    Minimises ``1/2 ||Y' - A C||^2 + alpha_snmf (|A|_1 + |C|_1)`` (scikit-
    learn's classic NMF objective with ``l1_ratio=1`` on both factors, as
    CaImAn configures it) by HALS, from an NNDSVD start, where ``Y'`` is
    the smoothed movie minus its ``perc_baseline_snmf`` percentile per pixel,
    clipped at zero.

    Returns
    -------
    A : (h*w, K) tensor (Fortran pixel order), C : (K, T) tensor
    """
    h, w, T = Y.shape
    Ys = gaussian_smooth(Y, sigma_smooth_snmf)
    base = torch.quantile(Ys.reshape(-1, T)[:, :: max(1, T // 2000)],
                          float(perc_baseline_snmf) / 100, dim=1).reshape(h, w, 1)
    Ys = (Ys - base).clamp_min(0)
    Ymat = Ys.permute(1, 0, 2).reshape(h * w, T)
    from .background import _svd_start
    A, C = _svd_start(Ymat, K)
    At = A.T.contiguous()
    groups = [torch.tensor([k], device=Y.device) for k in range(K)]
    lam = torch.tensor(float(alpha_snmf), device=Y.device)
    prev = None
    for it in range(int(max_iter_snmf)):
        hals_rows(C, At @ Ymat, At @ At.T, groups, lam=lam)
        hals_rows(At, C @ Ymat.T, C @ C.T, groups, lam=lam)
        if it % 10 == 9:
            obj = float(((Ymat - At.T @ C) ** 2).sum()) / 2 + alpha_snmf * float(At.sum() + C.sum())
            if prev is not None and abs(prev - obj) <= tol * abs(prev):
                break
            prev = obj
    A = At.T
    keep = (A.amax(0) > 0) & (C.amax(1) > 0)
    return A[:, keep], C[keep]


def hals_refine(Ymat, dims, A, C, b, f, maxIter=5, update_A=True, inner=3):
    """``maxIter`` rounds of HALS on a dense (d, T) movie.

    Footprints stay inside a 3x3 dilation of their support (CaImAn's
    ``bSiz``); the background columns are free. With ``update_A=False``
    (seeded CNMF) only traces and background move.

    Returns
    -------
    A, C, b, f
    """
    K, nb = A.shape[1], b.shape[1]
    dev = Ymat.device
    masks = to_images(A > 0, dims)
    se = torch.ones((3, 3), dtype=torch.bool, device=dev)
    supp = from_images(crop_map(masks, masks, 2, lambda m: dilate(m, se))) if K else A > 0
    mask = torch.cat([supp, torch.ones((A.shape[0], nb), dtype=torch.bool, device=dev)], 1)
    mask = mask.T.contiguous()
    Wt = (torch.cat([A, b], 1).T * mask).contiguous()
    H = torch.cat([C, f], 0).contiguous()
    groups_s = color_groups((mask.float() @ mask.T.float()) > 0)
    if not update_A:
        groups_s = [torch.arange(K, K + nb, device=dev)[i:i + 1] for i in range(nb)]
    cols_s = group_columns(mask, groups_s)
    for _ in range(int(maxIter)):
        WtW = Wt @ Wt.T
        groups_t = color_groups(WtW > 0)
        hals_rows(H, Wt @ Ymat, WtW, groups_t, n_iter=inner)
        if groups_s:
            hals_rows(Wt, H @ Ymat.T, H @ H.T, groups_s, mask=mask, n_iter=inner, cols=cols_s)
    W = Wt.T
    return W[:, :K], H[:K], W[:, K:], H[K:]


def background_init(R, nb, n_iter=30):
    """Rank-``nb`` NMF of the nonnegative part of a residual (d, T)."""
    if nb <= 0:
        return (torch.zeros((R.shape[0], 0), device=R.device),
                torch.zeros((0, R.shape[1]), device=R.device))
    return nmf_hals(R.clamp_min(0), nb, n_iter=n_iter)


def upsample(Ad, dims_d, dims, Cd, T):
    """Bring footprints (Fortran order, ``dims_d``) and traces (``Td``
    frames) back to ``dims`` and ``T`` by bilinear / linear interpolation."""
    K = Ad.shape[1]
    if tuple(dims_d) != tuple(dims) and K:
        imgs = to_images(Ad, dims_d)[:, None]
        imgs = F.interpolate(imgs, size=tuple(dims), mode="bilinear", align_corners=False)[:, 0]
        Ad = from_images(imgs.clamp_min(0)).contiguous()
    if Cd.shape[1] != T and Cd.shape[0]:
        Cd = F.interpolate(Cd[None], size=T, mode="linear", align_corners=False)[0]
    return Ad, Cd


def downsample_masks(A, dims, ssub):
    """Average-pool footprints (d, K) by ``ssub`` (Fortran order out)."""
    if ssub == 1 or A.shape[1] == 0:
        return A
    imgs = to_images(A, dims)[:, None]
    imgs = F.avg_pool2d(imgs, ssub, ssub, ceil_mode=True)[:, 0]
    return from_images(imgs).contiguous()


def initialize(stats, dims, K, nb, *, method_init="greedy_roi", gSig=(5, 5), gSiz=None,
               nIter=5, rolling_sum=True, rolling_length=100, kernel=None, maxIter=5,
               normalize_init=True, alpha_snmf=100.0, max_iter_snmf=500,
               sigma_smooth_snmf=(0.5, 0.5, 0.5), perc_baseline_snmf=20, Ain=None, T=None,
               same_thr=None):
    """Initial ``A, C, b, f`` at full resolution from :class:`PixelStats`.

    Parameters
    ----------
    stats : PixelStats
        Holds the downsampled movie ``Yd`` and the mean image.
    dims : (d1, d2)
    K, nb : int
        Components and background components.
    Ain : (d, K) tensor, optional
        Seeded mode: given footprints; only traces and background are fit.
    same_thr : float, optional
        ``greedy_roi``: trace correlation at which a new box touching a
        component is more of it (:func:`greedy_roi`).

    Returns
    -------
    A (d, K'), C (K', T), b (d, nb), f (nb, T) tensors
    """
    Yd = stats.Yd
    ssub = stats.ssub
    h, w, Td = Yd.shape
    T = T if T is not None else Td * stats.tsub
    if normalize_init:
        img = stats.mean.clamp_min(0)
        img = img + img.median() + torch.finfo(torch.float32).eps
    else:
        img = torch.ones_like(stats.mean)
    img_d = downsample_masks(img[:, None], dims, ssub)[:, 0]
    img_d3 = img_d.reshape(w, h).T[..., None]
    Yn = Yd / img_d3                                         # (h, w, Td)
    Ymat = Yn.permute(1, 0, 2).reshape(h * w, Td)            # Fortran order
    med = Ymat.median(1).values
    if Ain is not None:
        An = downsample_masks(Ain, dims, ssub) / img_d[:, None]
        C0 = (An.T @ (Ymat - med[:, None])).clamp_min(0) / (An ** 2).sum(0).clamp_min(1e-12)[:, None]
        R = Ymat - An @ C0
        b0, f0 = background_init(R, nb)
        A_d, C_d, b_d, f_d = hals_refine(Ymat, (h, w), An, C0, b0, f0, max(int(maxIter), 5),
                                         update_A=False)
    else:
        if method_init == "greedy_roi":
            gSiz = default_gsiz(gSig) if gSiz is None else gSiz
            gSig = [float(s) / ssub for s in gSig]
            gSiz = [max(3, int(round(float(s) / ssub))) for s in gSiz]
            # activity, not slow drift (bleaching), is what the search looks for
            window = max(1, int(round(rolling_length / stats.tsub)))
            meds, centres = pixel_baseline(Yn, window)
            Yg = add_baseline(Yn.clone(), meds, centres, -1.0)
            Aimg, C0, _ = greedy_roi(Yg, int(K), gSig, gSiz, nIter, kernel, rolling_sum, window,
                                     same_thr=same_thr)
            An = Aimg.permute(1, 0, 2).reshape(h * w, -1)
            R = add_baseline(Yg, meds, centres).permute(1, 0, 2).reshape(h * w, Td)
            del Yg
        elif method_init == "sparse_NMF":
            An, C0 = sparse_nmf(Yn, int(K), alpha_snmf, max_iter_snmf, sigma_smooth_snmf,
                                perc_baseline_snmf)
            R = Ymat - An @ C0
        else:
            raise ParameterError(f"method_init: {method_init!r} is not available for 2p CNMF "
                                 "(expected 'greedy_roi' or 'sparse_NMF')")
        b0, f0 = background_init(R, nb)
        del R
        A_d, C_d, b_d, f_d = hals_refine(Ymat, (h, w), An, C0, b0, f0, maxIter)
    A, C = upsample(A_d, (h, w), dims, C_d, T)
    b, f = upsample(b_d, (h, w), dims, f_d, T)
    A = A * img[:, None]
    b = b * img[:, None]
    if Ain is not None:
        A = Ain
    keep = (A.amax(0) > 0) & (C.amax(1) > 0)
    if Ain is None:
        A, C = A[:, keep], C[keep]
    return A.contiguous(), C.contiguous(), b.contiguous(), f.contiguous()
