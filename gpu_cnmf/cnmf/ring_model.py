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

:func:`cnmfe_fit` runs the whole CNMF-E sequence on the device: corr-PNR
initialisation (:mod:`.corr_pnr`), then rounds of spatial update, temporal
update (OASIS) and merging on ``Y - B`` with the CNMF building blocks of
:mod:`.engine`, the ring background refitted between rounds.
"""
from __future__ import annotations

import copy
import time
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
    """

    weights: torch.Tensor
    offsets: np.ndarray
    dims: tuple
    ssub_B: int
    radius: int

    @property
    def dims_B(self):
        """(d1_B, d2_B): shape of the downsampled frame."""
        return (self.weights.shape[1], self.weights.shape[0])

    def to(self, device):
        return RingModel(self.weights.to(device), self.offsets, self.dims, self.ssub_B, self.radius)

    def apply_downsampled(self, Xd):
        """``W X`` on the downsampled grid for a (d2_B, d1_B, T) image."""
        w2, h2, T = Xd.shape
        r = int(np.abs(self.offsets).max())
        out = torch.zeros_like(Xd)
        # rows of x (the slowest axis) in chunks bound the padded copy
        step = max(1, int(2 ** 25 // max(1, (h2 + 2 * r) * T)))
        for x0 in range(0, w2, step):
            x1 = min(w2, x0 + step)
            lo, hi = max(0, x0 - r), min(w2, x1 + r)
            pad = F.pad(Xd[lo:hi], (0, 0, r, r, r - (x0 - lo), r - (hi - x1)))
            acc = out[x0:x1]
            for k, (dy, dx) in enumerate(self.offsets):
                acc += self.weights[x0:x1, :, k, None] * \
                    pad[r + dx:r + dx + x1 - x0, r + dy:r + dy + h2]
        return out

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


def fit_background(Y, A, C, dims, radius, ssub_B=2, ring=None):
    """``b0``, the ring weights and the background for the current ``A, C``.

    Parameters
    ----------
    Y : (d, T) tensor
    A : (d, K) tensor, C : (K, T) tensor
    ring : RingModel, optional
        Keep these weights (only ``b0`` and ``B`` are recomputed).

    Returns
    -------
    b0 : (d,) tensor, ring : RingModel, B : (d, T) tensor (the background)
    """
    R = Y - A @ C if A.shape[1] else Y.clone()
    b0 = R.mean(1)
    R -= b0[:, None]
    if ring is None:
        ring = fit_ring_weights(R, dims, radius, ssub_B)
    B = ring_fluctuation(ring, R)
    del R
    B += b0[:, None]
    return b0, ring, B


# --------------------------------------------------------------------------
# movies in memory on the device

def movie_matrix(images, device, dims=None):
    """The movie as a float32 (d, T) Fortran-order tensor on ``device``.

    ``images`` is (T, d1, d2) (array, memory map, tensor, or the Fortran view
    of a pixels x T memory map), or the (d, T) matrix with ``dims``.
    """
    device = torch.device(device)
    if dims is not None:
        Y = torch.as_tensor(np.asarray(images, dtype=np.float32) if not isinstance(images, torch.Tensor)
                            else images, dtype=torch.float32, device=device)
        if Y.ndim != 2 or Y.shape[0] != int(np.prod(dims)):
            raise MovieError(f"images: expected a ({int(np.prod(dims))}, T) matrix for dims {dims}, "
                             f"got {tuple(Y.shape)}")
        return Y.contiguous(), tuple(int(x) for x in dims)
    if isinstance(images, torch.Tensor):
        if images.ndim != 3:
            raise MovieError(f"images: expected a (T, d1, d2) movie, got shape {tuple(images.shape)}")
        fr = images.to(device=device, dtype=torch.float32)
        return _pixels_view(fr).contiguous(), tuple(images.shape[1:])
    from .products import as_pixel_matrix
    arr, layout, dims, T = as_pixel_matrix(images)
    # np.array copies: CNMF-E holds its own dense copy of Y, and a tensor that
    # shared a (possibly writable) memmap could change the user's file.
    host = torch.from_numpy(np.array(arr, dtype=np.float32))
    if layout == "pixels":
        return host.to(device).contiguous(), dims
    return _pixels_view(host.to(device)).contiguous(), dims


class DenseMovie:
    """A (d, T) device tensor with the product interface of
    :class:`gpu_cnmf.cnmf.products.MovieMatrix` (``AtY``, ``CYt``,
    ``blocks``), so the CNMF spatial and temporal steps run on ``Y - B``."""

    def __init__(self, Y, dims):
        self.Y = Y
        self.dims = tuple(dims)
        self.d, self.T = Y.shape
        self.device = Y.device
        self.cols_per_block = self.dims[1]

    def AtY(self, A):
        return A.T @ self.Y

    def CYt(self, C):
        return C @ self.Y.T

    def blocks(self):
        yield 0, self.d, self.Y

    def release(self):
        pass


# --------------------------------------------------------------------------
# the CNMF-E fit

def _cfg(params):
    """Parameter groups as plain dicts with CaImAn's fit-time defaults."""
    groups = ("data", "patch", "preprocess", "init", "spatial", "temporal", "merge", "quality")
    cfg = {g: copy.deepcopy(params.get_group(g)) for g in groups}
    s = cfg["spatial"]
    for key, val in (("medw", (3, 3)), ("se", np.ones((3, 3), np.uint8)),
                     ("ss", np.ones((3, 3), np.uint8))):
        if s[key] is None:
            s[key] = val
    ini = cfg["init"]
    if ini["gSiz"] is None:
        ini["gSiz"] = [int(round(2 * x + 1)) for x in ini["gSig"]]
    return cfg


def cnmfe_fit(images, params, Ain=None, n_iter=2, dims=None, device=None):
    """CNMF-E on a one-photon movie held on the device.

    Parameters
    ----------
    images : (T, d1, d2) array / memory map / tensor, or (d, T) with ``dims``
    params : CNMFParams
        ``init``: gSig, gSiz, min_corr, min_pnr, ring_size_factor, ssub_B,
        init_iter, center_psf, seed_method, nb, K (cap on the number of
        neurons, None for no cap); ``spatial``, ``temporal``, ``merge`` as
        in CNMF; the device is ``params.use_cuda`` unless ``device`` given.
    Ain : (d, K) array or sparse, optional
        Footprints to start from instead of the corr-PNR search (their
        traces are fitted on the background-corrected movie).
    n_iter : int
        Rounds of (background, spatial, temporal, merge); the last round
        skips merging.

    Returns
    -------
    dict
        A (scipy.sparse.csc, d x K), C, S, YrA (K, T), b0 (d,), W
        (scipy.sparse.csr on the ``ssub_B`` grid), ring (RingModel), sn (d,),
        g, bl, c1, neurons_sn, b, f (low-rank background when ``nb > 0``;
        empty otherwise), B (the full background when ``nb == -1``),
        Cn, pnr (seed images), model (an :class:`.engine.Model` of device
        tensors, b and f empty), timings, dims.

    Notes
    -----
    The whole movie, the background-corrected copy and the background are
    held on the device (3 x the float32 movie); there is no patch mode. For
    movies larger than that, the Ring-CNN route streams
    (:func:`gpu_cnmf.pipeline.run_pipeline` with ``ring_cnn=True``).
    """
    from ..backend import get_device
    from ..deconvolution import estimate_noise
    from .corr_pnr import initialize_corr_pnr
    from .engine import Model, merge_step, spatial_step, temporal_step
    from .initialization import hals_refine

    t_all = time.perf_counter()
    timings = {}
    cfg = _cfg(params)
    ini = cfg["init"]
    dev = get_device(params.use_cuda) if device is None else torch.device(device)
    nb = int(ini["nb"])
    Y, dims = movie_matrix(images, dev, dims)
    d, T = Y.shape
    radius = ring_radius(ini["gSiz"], ini["ring_size_factor"])
    ssub_B = int(round(float(ini["ssub_B"])))
    pre = cfg["preprocess"]
    t0 = time.perf_counter()
    sn = estimate_noise(Y, noise_range=tuple(pre["noise_range"]), noise_method=pre["noise_method"],
                        max_num_samples_fft=pre["max_num_samples_fft"])
    sn = torch.as_tensor(sn, device=dev, dtype=torch.float32)
    timings["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if Ain is None:
        A, C, b0, ring0, extra = initialize_corr_pnr(
            Y, ini["gSig"], ini["gSiz"], ini["min_corr"], ini["min_pnr"],
            ini["ring_size_factor"], ssub_B, ini["init_iter"], center_psf=ini["center_psf"],
            seed_method=ini["seed_method"], nb=0, device=dev, dims=dims, K=ini["K"],
            noise_range=pre["noise_range"], noise_method=pre["noise_method"],
            border_pix=cfg["patch"]["border_pix"])
    else:
        A0 = Ain.toarray() if sp.issparse(Ain) else np.asarray(Ain)
        if A0.shape[0] != d:
            raise ParameterError(f"Ain: expected {d} rows (pixels, Fortran order), got {A0.shape}")
        A = torch.as_tensor(A0, dtype=torch.float32, device=dev)
        # the ring sees around each neuron, not the neuron itself, so a first
        # background can be fitted with no traces at all; traces follow on Y - B
        C = Y.new_zeros((A.shape[1], T))
        for _ in range(max(1, int(ini["init_iter"]))):
            b0, ring, B = fit_background(Y, A, C, dims, radius, ssub_B)
            _, C, _, _ = hals_refine(Y - B, dims, A, C, Y.new_zeros((d, 0)), Y.new_zeros((0, T)),
                                     maxIter=5, update_A=False)
            del B
        extra = dict(Cn=None, pnr=None)
        ring0 = None
    timings["init"] = time.perf_counter() - t0
    model = Model(A=A, C=C, b=Y.new_zeros((d, 0)), f=Y.new_zeros((0, T)), sn=sn)
    p = int(cfg["temporal"]["p"])
    B = None
    for it in range(max(1, int(n_iter))):
        t0 = time.perf_counter()
        # the first round reuses the initialisation's ring weights
        b0, ring, B = fit_background(Y, model.A, model.C, dims, radius, ssub_B,
                                     ring=ring0 if it == 0 else None)
        mm = DenseMovie(Y - B, dims)
        del B
        timings["background"] = timings.get("background", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        spatial_step(mm, model, cfg)
        timings["spatial"] = timings.get("spatial", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        temporal_step(mm, model, cfg, p)
        timings["temporal"] = timings.get("temporal", 0.0) + time.perf_counter() - t0
        if cfg["merge"]["do_merge"] and it < int(n_iter) - 1:
            t0 = time.perf_counter()
            merge_step(model, cfg, p)
            timings["merge"] = timings.get("merge", 0.0) + time.perf_counter() - t0
        del mm
    # final background for the final components (what W and b0 describe)
    t0 = time.perf_counter()
    b0, ring, B = fit_background(Y, model.A, model.C, dims, radius, ssub_B)
    b = Y.new_zeros((d, 0))
    f = Y.new_zeros((0, T))
    if nb > 0:
        from .background import nmf_hals
        b, f = nmf_hals(B.clamp_min(0), nb)
    timings["background"] = timings.get("background", 0.0) + time.perf_counter() - t0
    model.timings = dict(timings)
    model.timings["total"] = time.perf_counter() - t_all

    def host(x):
        return None if x is None else x.detach().cpu().numpy()

    A_sp = sp.csc_matrix(host(model.A).astype(np.float32))
    A_sp.eliminate_zeros()
    out = dict(A=A_sp, C=host(model.C), S=host(model.S), YrA=host(model.YrA), b0=host(b0),
               W=ring.to_sparse(), ring=ring, sn=host(sn), g=host(model.g),
               bl=host(model.bl), c1=host(model.c1), neurons_sn=host(model.neurons_sn),
               b=host(b), f=host(f), B=host(B) if nb == -1 else None, Cn=extra.get("Cn"),
               pnr=extra.get("pnr"), model=model, timings=model.timings, dims=dims,
               merged_ROIs=model.merged_ROIs)
    return out
