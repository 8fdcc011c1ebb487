"""Batched binary/grey morphology on component images.

Footprints are small compared with the field of view, so per-component
image operations (support dilation, median filtering, closing, connected
components) run on crops: each component's bounding box plus a margin,
gathered into ``(n, H, W)`` batches of similar size and processed at once.

Images of footprints: column ``k`` of ``A`` (pixels x K, Fortran pixel order)
is the ``(d1, d2)`` image ``A[:, k].reshape((d1, d2), order='F')``.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
import torch.nn.functional as F

# Components per crop batch; bounds the temporaries of one batch.
_BATCH = 256


def to_images(A: torch.Tensor, dims) -> torch.Tensor:
    """(d, K) Fortran-order columns -> (K, d1, d2) images (a view)."""
    d1, d2 = dims
    return A.T.reshape(A.shape[1], d2, d1).transpose(1, 2)


def from_images(imgs: torch.Tensor) -> torch.Tensor:
    """(K, d1, d2) images -> (d, K) Fortran-order columns."""
    K = imgs.shape[0]
    return imgs.transpose(1, 2).reshape(K, -1).T


def structure(se, device) -> torch.Tensor:
    """A structuring element as a bool tensor with odd sides."""
    se = torch.as_tensor(np.asarray(se) != 0, device=device)
    if se.ndim != 2 or se.shape[0] % 2 == 0 or se.shape[1] % 2 == 0:
        raise ValueError(f"structuring element must be 2-D with odd sides, got {tuple(se.shape)}")
    return se


def diamond(radius: int, device="cpu") -> torch.Tensor:
    """City-block ball of ``radius`` (scipy's iterated cross)."""
    r = np.arange(-radius, radius + 1)
    return torch.as_tensor(np.abs(r)[:, None] + np.abs(r)[None, :] <= radius, device=device)


def _shift_reduce(x: torch.Tensor, se: torch.Tensor, op: str, fill) -> torch.Tensor:
    """Max (dilation) or min (erosion) of ``x`` over the offsets of ``se``."""
    kh, kw = se.shape
    rh, rw = kh // 2, kw // 2
    H, W = x.shape[-2:]
    if bool(se.all()) and x.ndim == 3 and (fill == 0 or op == "max"):
        # a full box is one pooling call; erosion is a pooling of -x
        xf = x.float()[:, None]
        if op == "max":
            return F.max_pool2d(F.pad(xf, (rw, rw, rh, rh), value=float(fill)), (kh, kw),
                                stride=1)[:, 0].to(x.dtype)
        return (-F.max_pool2d(F.pad(-xf, (rw, rw, rh, rh), value=-float(fill)), (kh, kw),
                              stride=1))[:, 0].to(x.dtype)
    xp = F.pad(x, (rw, rw, rh, rh), value=fill)
    out = None
    for di, dj in torch.nonzero(se).tolist():
        v = xp[..., di:di + H, dj:dj + W]
        out = v.clone() if out is None else (torch.maximum(out, v) if op == "max" else torch.minimum(out, v))
    return out


def dilate(mask: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
    """Binary dilation of a batch of masks (..., H, W); ``se`` is symmetric-agnostic."""
    return _shift_reduce(mask.to(torch.uint8), se.flip(0, 1), "max", 0).bool()


def erode(mask: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
    """Binary erosion, border treated as background (as scipy's default)."""
    return _shift_reduce(mask.to(torch.uint8), se, "min", 0).bool()


def closing(mask, se):
    """Binary closing: dilation then erosion by ``se``."""
    return erode(dilate(mask, se), se)


def median_filter(x: torch.Tensor, window) -> torch.Tensor:
    """Median over a ``window`` neighbourhood of each image (n, H, W), zero padded."""
    mh, mw = int(window[0]), int(window[1])
    if mh <= 1 and mw <= 1:
        return x
    n, H, W = x.shape
    cols = F.unfold(x[:, None], (mh, mw), padding=(mh // 2, mw // 2))
    return cols.median(dim=1).values.reshape(n, H, W)


def reconstruct_from_peak(x: torch.Tensor, ss: torch.Tensor, check_every: int = 4
                          ) -> torch.Tensor:
    """Grey reconstruction by dilation of each image (n, H, W) from its peak.

    ``R(p)`` is the largest level ``l`` such that ``p`` lies in the
    connected component (connectivity ``ss``) of ``{x >= l}`` that holds
    the peak, i.e. the highest path minimum over paths from the peak to
    ``p``; ``R <= x``, with equality on every pixel reachable from the peak
    without dipping below its own value. Iterated geodesic dilation:
    ``R <- min(dilate(R, ss), x)`` until it stops changing.
    """
    n = x.shape[0]
    if n == 0:
        return x
    x = x.clamp_min(0)
    flat = x.reshape(n, -1)
    R = torch.zeros_like(flat)
    top = flat.argmax(1, keepdim=True)
    R.scatter_(1, top, flat.gather(1, top))
    R = R.reshape(x.shape)
    it = 0
    while True:
        prev = R
        for _ in range(check_every):
            R = torch.minimum(_shift_reduce(R, ss, "max", 0), x)
        it += check_every
        if torch.equal(R, prev) or it > 4 * sum(x.shape[1:]):
            return R


def largest_component(mask: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """Keep the largest connected component (connectivity ``ss``) of each mask.

    All crops are labelled in one call of ``scipy.ndimage.label`` on the
    stack, with a structuring element that does not connect neighbouring
    crops; the sizes of all labels come from one ``bincount``.
    """
    n, H, W = mask.shape
    if n == 0:
        return mask
    m = mask.detach().cpu().numpy()
    st = np.zeros((3,) + tuple(ss.shape), dtype=bool)
    st[1] = ss.cpu().numpy()
    lab, n_lab = ndimage.label(m, structure=st)
    flat = lab.reshape(n, -1)
    counts = np.bincount(flat.ravel(), minlength=n_lab + 1)
    counts[0] = 0
    crop_of = np.zeros(n_lab + 1, dtype=np.int64)
    crop_of[flat.ravel()] = np.repeat(np.arange(n), H * W)
    best = np.zeros(n, dtype=counts.dtype)
    np.maximum.at(best, crop_of[1:], counts[1:])
    keep = (counts == best[crop_of]) & (counts > 0)
    keep[0] = False
    return torch.as_tensor(keep[flat].reshape(n, H, W), device=mask.device)


def boxes(imgs_mask: torch.Tensor):
    """Bounding boxes (y0, y1, x0, x1) of the nonzero pixels of each image;
    an empty image gets the 1-pixel box at the origin."""
    rows = imgs_mask.any(2)
    cols = imgs_mask.any(1)
    d1, d2 = rows.shape[1], cols.shape[1]
    ar1 = torch.arange(d1, device=rows.device)
    ar2 = torch.arange(d2, device=rows.device)
    big = d1 + d2
    y0 = torch.where(rows, ar1, big).amin(1).clamp_max(d1 - 1)
    y1 = torch.where(rows, ar1, -1).amax(1).clamp_min(0) + 1
    x0 = torch.where(cols, ar2, big).amin(1).clamp_max(d2 - 1)
    x1 = torch.where(cols, ar2, -1).amax(1).clamp_min(0) + 1
    y1 = torch.maximum(y1, y0 + 1)
    x1 = torch.maximum(x1, x0 + 1)
    return y0, y1, x0, x1


def crop_map(imgs: torch.Tensor, support: torch.Tensor, pad: int, fn):
    """Apply ``fn`` to crops of ``imgs`` around each image's ``support``.

    Parameters
    ----------
    imgs : (K, d1, d2) tensor
        Images (any dtype) passed to ``fn`` as crops.
    support : (K, d1, d2) bool
        Where each image lives; crops are its bounding box plus ``pad``.
    pad : int
        Margin, at least the reach of ``fn``'s operators.
    fn : callable (n, H, W) -> (n, H, W)
        Batched operation on crops; its output outside the crops is zero.

    Returns
    -------
    (K, d1, d2) tensor of ``fn``'s dtype.
    """
    K, d1, d2 = imgs.shape
    dev = imgs.device
    y0, y1, x0, x1 = boxes(support)
    Pd1, Pd2 = d1 + 2 * pad, d2 + 2 * pad
    padded = F.pad(imgs, (pad, pad, pad, pad))
    hs = (y1 - y0 + 2 * pad)
    ws = (x1 - x0 + 2 * pad)
    order = torch.argsort(torch.maximum(hs, ws)).tolist()
    out = None
    hs_l, ws_l, y0_l, x0_l = hs.tolist(), ws.tolist(), y0.tolist(), x0.tolist()
    for s in range(0, K, _BATCH):
        idx = order[s:s + _BATCH]
        H = max(hs_l[i] for i in idx)
        W = max(ws_l[i] for i in idx)
        ys = torch.tensor([min(y0_l[i], Pd1 - H) for i in idx], device=dev)
        xs = torch.tensor([min(x0_l[i], Pd2 - W) for i in idx], device=dev)
        kk = torch.tensor(idx, device=dev)
        rr = ys[:, None] + torch.arange(H, device=dev)
        cc = xs[:, None] + torch.arange(W, device=dev)
        crops = padded[kk[:, None, None], rr[:, :, None], cc[:, None, :]]
        res = fn(crops)
        if out is None:
            out = torch.zeros((K, Pd1, Pd2), dtype=res.dtype, device=dev)
        out[kk[:, None, None], rr[:, :, None], cc[:, None, :]] = res
    return out[:, pad:pad + d1, pad:pad + d2]
