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
    K, d1, d2 = imgs.shape
    return imgs.transpose(1, 2).reshape(K, d1 * d2).T     # K may be 0


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


def crop_apply(pix, comp, val, K, dims, pad, fn):
    """Apply ``fn`` to crops around each component, given as entries.

    The crop of component ``k`` is the bounding box of its entries plus
    ``pad``; components of similar size are batched into (n, H, W) stacks.
    Nothing of the size of the field of view is formed, so this works on
    the whole field's sparse footprints as on a patch's dense ones.

    Parameters
    ----------
    pix, comp : (nnz,) LongTensor
        Fortran-order pixel (``i + j * d1``) and component of each entry.
    val : (nnz,) tensor
        Entry values (any dtype) placed in the crops.
    K : int
        Number of components (those without entries get no crop).
    dims : (d1, d2)
    pad : int
        Margin, at least the reach of ``fn``'s operators.
    fn : callable (n, H, W) -> (n, H, W)
        Batched operation on crops.

    Returns
    -------
    pix, comp, val : the nonzero entries of ``fn``'s output inside the
        field of view, sorted by component then pixel.
    """
    d1, d2 = dims
    dev = pix.device
    if pix.numel() == 0:
        e = torch.zeros(0, dtype=torch.long, device=dev)
        return e, e.clone(), val[:0]
    ii, jj = pix % d1, pix // d1
    big = d1 + d2
    y0 = torch.full((K,), big, dtype=torch.long, device=dev).scatter_reduce(0, comp, ii, "amin")
    y1 = torch.full((K,), -1, dtype=torch.long, device=dev).scatter_reduce(0, comp, ii, "amax") + 1
    x0 = torch.full((K,), big, dtype=torch.long, device=dev).scatter_reduce(0, comp, jj, "amin")
    x1 = torch.full((K,), -1, dtype=torch.long, device=dev).scatter_reduce(0, comp, jj, "amax") + 1
    present = torch.nonzero(y1 > 0).flatten()
    # crops in padded coordinates, kept inside the padded field
    Pd1, Pd2 = d1 + 2 * pad, d2 + 2 * pad
    hs = (y1 - y0 + 2 * pad).clamp_max(Pd1)
    ws = (x1 - x0 + 2 * pad).clamp_max(Pd2)
    order = present[torch.argsort(torch.maximum(hs[present], ws[present]))].tolist()
    # entries grouped by component: start offset and count of each
    srt = torch.argsort(comp, stable=True)
    pix_s, comp_s, val_s = pix[srt], comp[srt], val[srt]
    counts = torch.bincount(comp_s, minlength=K)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    counts = counts.tolist()
    hs_l, ws_l, y0_l, x0_l = hs.tolist(), ws.tolist(), y0.tolist(), x0.tolist()
    outs = []
    for s in range(0, len(order), _BATCH):
        idx = order[s:s + _BATCH]
        H = max(hs_l[i] for i in idx)
        W = max(ws_l[i] for i in idx)
        ys = torch.tensor([min(y0_l[i], Pd1 - H) - pad for i in idx], device=dev)
        xs = torch.tensor([min(x0_l[i], Pd2 - W) - pad for i in idx], device=dev)
        sel = torch.cat([torch.arange(starts[i], starts[i] + counts[i], device=dev) for i in idx])
        slot = torch.repeat_interleave(torch.arange(len(idx), device=dev),
                                       torch.tensor([counts[i] for i in idx], device=dev))
        crops = torch.zeros((len(idx), H, W), dtype=val.dtype, device=dev)
        p = pix_s[sel]
        crops[slot, p % d1 - ys[slot], p // d1 - xs[slot]] = val_s[sel]
        res = fn(crops)
        n, r, c = torch.nonzero(res, as_tuple=True)
        gi, gj = r + ys[n], c + xs[n]
        inside = (gi >= 0) & (gi < d1) & (gj >= 0) & (gj < d2)
        n, r, c, gi, gj = n[inside], r[inside], c[inside], gi[inside], gj[inside]
        kk = torch.tensor(idx, device=dev)[n]
        outs.append((gi + gj * d1, kk, res[n, r, c]))
    p_o = torch.cat([o[0] for o in outs])
    k_o = torch.cat([o[1] for o in outs])
    v_o = torch.cat([o[2] for o in outs])
    srt = torch.argsort(k_o * (d1 * d2) + p_o)
    return p_o[srt], k_o[srt], v_o[srt]


def crop_map(imgs: torch.Tensor, support: torch.Tensor, pad: int, fn):
    """:func:`crop_apply` on a stack of images (K, d1, d2): ``fn`` sees the
    crops of ``imgs`` around each image's ``support`` (entries outside the
    support read as zero); returns its output as a (K, d1, d2) stack."""
    K, d1, d2 = imgs.shape
    k, i, j = torch.nonzero(support, as_tuple=True)
    p, kk, v = crop_apply(i + j * d1, k, imgs[k, i, j], K, (d1, d2), pad, fn)
    out = None
    if v.numel():
        out = torch.zeros((K, d1, d2), dtype=v.dtype, device=imgs.device)
        out[kk, p % d1, p // d1] = v
    else:
        probe = fn(torch.zeros((1, 3, 3), dtype=imgs.dtype, device=imgs.device))
        out = torch.zeros((K, d1, d2), dtype=probe.dtype, device=imgs.device)
    return out
