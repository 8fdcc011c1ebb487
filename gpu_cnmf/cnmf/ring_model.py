"""CNMF-E: the ring background model and the one-photon fit.

One-photon (microendoscopic) movies sit on a background many times brighter
than the neurons, smooth in space but fluctuating in time and not low rank.
CNMF-E (Zhou et al. 2018, eLife 7:e28728) models the movie ``Y`` (pixels x
T, Fortran pixel order) as

    Y = A C + B + E,      B = W (Y - A C - b0 1') + b0 1'

- ``A`` (pixels x K) footprints and ``C`` (K x T) calcium traces, as in
  CNMF; ``S`` spikes, ``YrA`` residual traces, ``g`` AR coefficients,
  ``bl`` baselines, ``c1`` initial values, ``neurons_sn`` trace noise and
  ``sn`` pixel noise as in :mod:`gpu_cnmf.cnmf.temporal`;
- ``b0`` (pixels,) the constant part of the background, the temporal mean
  of ``Y - A C``;
- ``W`` (pixels x pixels, sparse): the fluctuating background at pixel
  ``i`` is a weighted sum of the residual ``Y - A C - b0`` on a ring of
  radius ``r = round(ring_size_factor * gSiz)`` around ``i``. The ring lies
  outside the neuron at ``i``, so it sees that neuron's surroundings (the
  background) but not the neuron itself.

Row ``i`` of ``W`` is the least-squares fit of pixel ``i``'s residual on its
ring's residuals. As in CNMF-E this is done on a grid downsampled by
``ssub_B`` (ring radius ``r / ssub_B``), and the background computed there is
interpolated back to full resolution.

The fit is batched: the downsampled field is cut into square tiles; the Gram
matrix of the residual over a tile grown by the ring radius (one matrix
product) holds the normal equations of every pixel of the tile, which are
gathered and solved all at once. Applying ``W`` is a sum over the ring's
offsets of per-pixel weights times shifted frames (a locally connected
filter), never a pixels x pixels matrix.

The CNMF-E fit that uses this model is :mod:`.cnmfe`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..errors import MovieError, ParameterError

# Relative ridge added to each pixel's normal equations: keeps the solve
# well posed where ring pixels are nearly collinear (a flat background).
RIDGE = 1e-4
# Device budget (bytes) for one batch of tiles' residual data.
_TILE_BYTES = 256 * 2 ** 20


# --------------------------------------------------------------------------
# geometry

def ring_radius(gSiz, ring_size_factor):
    """Ring radius in pixels, CaImAn's ``round(ring_size_factor * gSiz)``."""
    g = float(np.mean(np.atleast_1d(np.asarray(gSiz, dtype=float))))
    if not g > 0:
        raise ParameterError(f"gSiz: expected a positive neuron box size, got {gSiz!r}")
    if not ring_size_factor > 0:
        raise ParameterError(f"ring_size_factor: expected > 0, got {ring_size_factor!r}")
    return max(1, int(round(ring_size_factor * g)))


def ring_offsets(radius):
    """Offsets ``(dy, dx)`` of the one-pixel-thick ring of ``radius``:
    the pixels whose distance from the centre rounds to ``radius``.

    Returns
    -------
    (n, 2) int64 ndarray
    """
    r = int(radius)
    if r < 1:
        raise ParameterError(f"ring radius: expected >= 1 pixel, got {radius!r}")
    y, x = np.mgrid[-r - 1:r + 2, -r - 1:r + 2]
    dist = np.sqrt(y ** 2 + x ** 2)
    keep = np.abs(dist - r) < 0.5
    return np.stack([y[keep], x[keep]], 1).astype(np.int64)


def ring_mask(radius):
    """Boolean image ``(2r+3, 2r+3)`` of :func:`ring_offsets` (for display)."""
    off = ring_offsets(radius)
    r = int(radius) + 1
    m = np.zeros((2 * r + 1, 2 * r + 1), dtype=bool)
    m[off[:, 0] + r, off[:, 1] + r] = True
    return m


def _frames_view(Ymat, dims):
    """(d, T) Fortran-order pixels x time -> (T, d1, d2) view."""
    d1, d2 = dims
    return Ymat.reshape(d2, d1, -1).permute(2, 1, 0)


def _pixels_view(frames):
    """(T, d1, d2) -> (d, T) Fortran-order matrix (a copy when needed)."""
    T, d1, d2 = frames.shape
    return frames.permute(2, 1, 0).reshape(d1 * d2, T)


# The background works on "Fortran images" (x, y, T): the (d, T) matrix
# reshaped to (d2, d1, T) without a copy, time last, so that shifting by
# ring offsets or pooling moves whole rows of T contiguous samples.

def downsample_pixels(R, dims, ssub):
    """Means of ``ssub x ssub`` blocks of a (d, T) Fortran-order movie.

    Partial border blocks are completed by edge replication, so every block
    is a plain mean. Returns the (d2_B, d1_B, T) Fortran image.
    """
    d1, d2 = dims
    X = R.reshape(d2, d1, -1)
    if ssub == 1:
        return X
    p1, p2 = (-d1) % ssub, (-d2) % ssub
    if p1:
        X = torch.cat([X, X[:, -1:].expand(-1, p1, -1)], 1)
    if p2:
        X = torch.cat([X, X[-1:].expand(p2, -1, -1)], 0)
    w2, h2 = X.shape[0] // ssub, X.shape[1] // ssub
    return X.reshape(w2, ssub, h2, ssub, -1).mean((1, 3))


def _interp_index(n_out, n_in, ssub, device):
    """Source indices and weights of bilinear upsampling by ``ssub``
    (block centres at ``ssub * k + (ssub - 1) / 2``; edges clamped)."""
    pos = (torch.arange(n_out, device=device, dtype=torch.float32) + 0.5) / ssub - 0.5
    i0 = torch.floor(pos)
    wgt = pos - i0
    i0 = i0.long()
    lo = i0.clamp(0, n_in - 1)
    hi = (i0 + 1).clamp(0, n_in - 1)
    return lo, hi, wgt


def upsample_pixels(Xd, dims, ssub):
    """Inverse of :func:`downsample_pixels`: (d2_B, d1_B, T) -> (d, T)."""
    d1, d2 = dims
    if ssub == 1:
        return Xd.reshape(d1 * d2, -1)
    w2, h2, T = Xd.shape
    lo, hi, wy = _interp_index(d1, h2, ssub, Xd.device)
    X = Xd[:, lo] * (1 - wy)[None, :, None] + Xd[:, hi] * wy[None, :, None]
    lo, hi, wx = _interp_index(d2, w2, ssub, Xd.device)
    X = X[lo] * (1 - wx)[:, None, None] + X[hi] * wx[:, None, None]
    return X.reshape(d1 * d2, T)


# --------------------------------------------------------------------------
# the model

@dataclass
class RingModel:
    """Fitted ring weights.

    Attributes
    ----------
    weights : (d2_B, d1_B, n) tensor
        Weight of each ring offset for each pixel of the downsampled grid,
        indexed ``[x, y, k]`` (so ``weights.reshape(-1, n)`` lists the grid's
        pixels in Fortran order); 0 where the ring leaves the field of view.
    offsets : (n, 2) int64 ndarray
        Ring offsets ``(dy, dx)`` on the downsampled grid.
    dims : (d1, d2)
        Full-resolution frame shape.
    ssub_B : int
        Downsampling factor of the grid.
    radius : int
        Ring radius at full resolution.
    b0 : (d,) tensor, optional
        The constant part of the background (temporal mean of ``Y - A C``).
    """

    weights: torch.Tensor
    offsets: np.ndarray
    dims: tuple
    ssub_B: int
    radius: int
    b0: torch.Tensor | None = None

    @property
    def dims_B(self):
        """(d1_B, d2_B): shape of the downsampled frame."""
        return (self.weights.shape[1], self.weights.shape[0])

    def to(self, device):
        b0 = None if self.b0 is None else self.b0.to(device)
        return RingModel(self.weights.to(device), self.offsets, self.dims, self.ssub_B,
                         self.radius, b0)

    def subtract(self, Y, AC=None):
        """``Y - B`` for frames ``Y`` (d, n) and the neurons' part ``AC``
        (d, n) of the same frames: ``Y - b0 - W (Y - A C - b0)``."""
        R = Y - self.b0[:, None]
        if AC is not None:
            R = R - AC
        out = Y - self.b0[:, None]
        out -= ring_fluctuation(self, R)
        return out

    def apply_downsampled(self, Xd):
        """``W X`` on the downsampled grid for a (d2_B, d1_B, T) image."""
        w2, h2, T = Xd.shape
        r = int(np.abs(self.offsets).max())
        out = torch.zeros_like(Xd)
        wk = self.weights.permute(2, 0, 1).unsqueeze(-1)              # (n, w2, h2, 1)
        # rows of x (the slowest axis) in chunks bound the padded copy
        step = max(1, int(2 ** 25 // max(1, (h2 + 2 * r) * T)))
        for x0 in range(0, w2, step):
            x1 = min(w2, x0 + step)
            lo, hi = max(0, x0 - r), min(w2, x1 + r)
            pad = F.pad(Xd[lo:hi], (0, 0, r, r, r - (x0 - lo), r - (hi - x1)))
            acc = out[x0:x1]
            for k, (dy, dx) in enumerate(self.offsets):
                # fused multiply-add in place: no frame-sized temporary per offset
                acc.addcmul_(wk[k, x0:x1], pad[r + dx:r + dx + x1 - x0, r + dy:r + dy + h2])
        return out

    @classmethod
    def from_sparse(cls, W, dims, ssub_B, b0=None, device="cpu"):
        """The model of a sparse ``W`` (as :meth:`to_sparse` writes it, or
        CaImAn's ``estimates.W``) over the ``ssub_B`` grid of ``dims``."""
        d1, d2 = (int(x) for x in dims)
        s = int(ssub_B)
        h, w = -(-d1 // s), -(-d2 // s)
        W = sp.coo_matrix(W)
        if W.shape != (h * w, h * w):
            raise ParameterError(f"W: expected a ({h * w}, {h * w}) matrix for frames {dims} "
                                 f"downsampled by ssub_B={s}, got {W.shape}")
        ri, rj, ci, cj = W.row % h, W.row // h, W.col % h, W.col // h
        off, inv = np.unique(np.stack([ci - ri, cj - rj], 1), axis=0, return_inverse=True)
        if len(off) == 0:
            raise ParameterError("W: the ring-weight matrix is empty")
        weights = np.zeros((w, h, len(off)), np.float32)
        weights[rj, ri, inv.ravel()] = W.data
        radius = max(1, int(round(float(np.hypot(off[:, 0], off[:, 1]).max()) * s)))
        b0 = None if b0 is None else torch.as_tensor(np.asarray(b0, np.float32).ravel(),
                                                     device=device)
        return cls(torch.as_tensor(weights, device=device), off.astype(np.int64), (d1, d2), s,
                   radius, b0)

    def to_sparse(self):
        """``W`` as a scipy CSR matrix over the downsampled grid's pixels in
        Fortran order (CaImAn's ``estimates.W``)."""
        h, w = self.dims_B
        wt = self.weights.detach().cpu().numpy()
        jj, ii = np.meshgrid(np.arange(w), np.arange(h), indexing="ij")    # [x, y]
        rows, cols, vals = [], [], []
        for k, (dy, dx) in enumerate(self.offsets):
            yi, xj = ii + dy, jj + dx
            ok = (yi >= 0) & (yi < h) & (xj >= 0) & (xj < w) & (wt[:, :, k] != 0)
            rows.append((ii + jj * h)[ok])
            cols.append((yi + xj * h)[ok])
            vals.append(wt[:, :, k][ok])
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(h * w, h * w))


def fit_ring_weights(residual, dims, radius, ssub_B=2, tile=16, ridge=RIDGE):
    """Least-squares ring weights for every pixel at once.

    Parameters
    ----------
    residual : (d, T) tensor
        ``Y - A C - b0 1'`` in Fortran pixel order (zero-mean rows).
    dims : (d1, d2)
    radius : int
        Ring radius at full resolution (:func:`ring_radius`).
    ssub_B : int
        Fit on ``ssub_B x ssub_B`` block means, ring radius ``radius / ssub_B``.
    tile : int
        Side of the tiles whose normal equations come from one Gram matrix.
    ridge : float
        Tikhonov term relative to the mean diagonal of each pixel's system.

    Returns
    -------
    RingModel
    """
    ssub_B = int(round(float(ssub_B)))
    if ssub_B < 1:
        raise ParameterError(f"ssub_B: expected an integer >= 1, got {ssub_B!r}")
    dims = tuple(int(x) for x in dims)
    if residual.ndim != 2 or residual.shape[0] != dims[0] * dims[1]:
        raise MovieError(f"residual: expected ({dims[0] * dims[1]}, T), got {tuple(residual.shape)}")
    dev = residual.device
    Xd = downsample_pixels(residual, dims, ssub_B)                     # (w, h, T)
    w, h, T = Xd.shape
    r_d = max(1, int(round(radius / ssub_B)))
    off = ring_offsets(r_d)
    n = off.shape[0]
    s = int(max(1, min(tile, max(h, w))))
    ntx, nty = -(-w // s), -(-h // s)
    S = s + 2 * r_d
    # zero-padded by the ring radius (and up to whole tiles); ring pixels
    # outside the field are masked below
    Rp = F.pad(Xd, (0, 0, r_d, r_d + nty * s - h, r_d, r_d + ntx * s - w))
    inside = torch.zeros((ntx * s + 2 * r_d, nty * s + 2 * r_d), dtype=torch.bool, device=dev)
    inside[r_d:r_d + w, r_d:r_d + h] = True
    # local indices inside one grown tile, [x, y] flattened (the same for every tile)
    ax, ay = torch.meshgrid(torch.arange(s, device=dev), torch.arange(s, device=dev), indexing="ij")
    ax, ay = ax.reshape(-1), ay.reshape(-1)
    oy = torch.as_tensor(off[:, 0], device=dev)
    ox = torch.as_tensor(off[:, 1], device=dev)
    ring_idx = (ax[:, None] + r_d + ox[None]) * S + (ay[:, None] + r_d + oy[None])   # (s², n)
    ctr_idx = (ax + r_d) * S + (ay + r_d)
    tiles = [(tx, ty) for tx in range(ntx) for ty in range(nty)]
    per_batch = max(1, int(_TILE_BYTES // max(1, S * S * T * 4)))
    weights = torch.zeros((ntx * s, nty * s, n), device=dev)
    eye = torch.eye(n, device=dev, dtype=torch.float64)
    for b0 in range(0, len(tiles), per_batch):
        batch = tiles[b0:b0 + per_batch]
        X = torch.stack([Rp[tx * s:tx * s + S, ty * s:ty * s + S].reshape(S * S, T)
                         for tx, ty in batch])                        # (nb, S², T)
        G = torch.bmm(X, X.transpose(1, 2))                           # (nb, S², S²)
        del X
        ok = torch.stack([inside[tx * s:tx * s + S, ty * s:ty * s + S].reshape(-1)
                          for tx, ty in batch])                        # (nb, S²)
        Gi = G[:, ring_idx[:, :, None], ring_idx[:, None, :]].double()  # (nb, s², n, n)
        bi = G[:, ring_idx, ctr_idx[:, None]].double()                # (nb, s², n)
        del G
        vf = ok[:, ring_idx].double()                                 # (nb, s², n)
        Gi = Gi * vf[..., :, None] * vf[..., None, :]
        bi = bi * vf
        diag = torch.diagonal(Gi, dim1=-2, dim2=-1)
        lam = ridge * diag.sum(-1).clamp_min(1e-30) / vf.sum(-1).clamp_min(1)
        Gi = Gi + eye * lam[..., None, None] + torch.diag_embed(1.0 - vf)
        L, info = torch.linalg.cholesky_ex(Gi)
        sol = torch.cholesky_solve(bi[..., None], L)[..., 0]
        bad = info != 0
        if bool(bad.any()):
            sol[bad] = torch.linalg.lstsq(Gi[bad], bi[bad][..., None]).solution[..., 0]
        sol = (sol * vf).float()
        for m, (tx, ty) in enumerate(batch):
            weights[tx * s:(tx + 1) * s, ty * s:(ty + 1) * s] = sol[m].reshape(s, s, n)
    return RingModel(weights[:w, :h].contiguous(), off, dims, ssub_B, int(radius))


def ring_background(ring, b0, Y_minus_AC):
    """The CNMF-E background ``B = W (Y - A C - b0 1') + b0 1'``.

    Parameters
    ----------
    ring : RingModel
    b0 : (d,) tensor
    Y_minus_AC : (d, T) tensor, Fortran pixel order

    Returns
    -------
    B : (d, T) tensor
    """
    B = ring_fluctuation(ring, Y_minus_AC - b0[:, None])
    B += b0[:, None]
    return B


def ring_fluctuation(ring, R):
    """``W R`` at full resolution for a zero-mean residual ``R`` (d, T)."""
    Xd = downsample_pixels(R, ring.dims, ring.ssub_B)
    return upsample_pixels(ring.apply_downsampled(Xd), ring.dims, ring.ssub_B)


def fit_ring(Y, A, C, dims, radius, ssub_B=2):
    """The ring model (``b0`` and ``W``) of the residual ``Y - A C``.

    Parameters
    ----------
    Y : (d, T) tensor, Fortran pixel order
    A : (d, K) tensor, C : (K, T) tensor
    dims : (d1, d2)
    radius : int
        Ring radius at full resolution (:func:`ring_radius`).
    ssub_B : int

    Returns
    -------
    RingModel (with ``b0``)
    """
    R = Y - A @ C if A.shape[1] else Y.clone()
    b0 = R.mean(1)
    R -= b0[:, None]
    ring = fit_ring_weights(R, dims, radius, ssub_B)
    del R
    ring.b0 = b0
    return ring


def subtract_background(ring, Y, A=None, C=None, chunk_bytes=_TILE_BYTES):
    """``Y - B`` for a (d, T) movie held on the device, frame chunk by frame
    chunk (the temporaries are one chunk large, ``B`` is never whole).

    Parameters
    ----------
    ring : RingModel (with ``b0``)
    Y : (d, T) tensor
    A : (d, K) tensor, C : (K, T) tensor, optional

    Returns
    -------
    (d, T) tensor
    """
    d, T = Y.shape
    out = torch.empty_like(Y)
    step = max(1, int(chunk_bytes // max(1, 4 * 4 * d)))
    use_ac = A is not None and A.shape[1] > 0
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        out[:, t0:t1] = ring.subtract(Y[:, t0:t1], A @ C[:, t0:t1] if use_ac else None)
    return out
