"""A one-photon movie with its CNMF-E background removed, made lazily.

CNMF-E explains a 1p movie ``Y`` as ``A C + B + E`` with the ring background
``B = W (Y - A C - b0 1') + b0 1'`` (see :mod:`.ring_model`; ``W`` is kept,
as in CaImAn, as a sparse matrix over a grid downsampled by ``ssub_B``).
Whatever fits or scores components against the movie must see ``Y - B``, not
``Y``: the background is many times brighter than the neurons. Three views
of ``Y - B``, each made frame chunk by frame chunk:

- :class:`BackgroundRemovedSource`, a :class:`~gpu_cnmf.io.MovieSource`
  for what reads frame ranges (component evaluation);
- :class:`RingCorrectedMovie`, the products the CNMF updates need
  (``A' (Y - B)``, ``C (Y - B)'`` on supports) from a
  :class:`.products.MovieMatrix`, a pass over it per product;
- :class:`FilteredRingMovie`, the same products on a tile held in memory
  as its ring-filtered movie (:mod:`.ring_tiles`), reading nothing.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from ..backend import memory_budget
from ..errors import ParameterError
from ..io import ArraySource, MovieSource
from . import footprints as fp
from .products import add_entry_products, support_entries
from .ring_model import _frames_view, _pixels_view, downsample_pixels, upsample_pixels

# Share of the memory budget that Y - B may take when held whole between
# passes (otherwise it is recomputed chunk by chunk on every pass).
_RESIDENT_FRACTION = 0.5
# frame-sized float32 buffers one chunk of Y - B holds at once
CHUNK_COPIES = 9


def grid_factor(W_shape, dims, ssub_B=None):
    """The downsampling factor of the ring grid that ``W`` lives on.

    ``ssub_B`` is checked against ``W``'s size when given, found from it
    otherwise (the grid of factor s has ceil(d1/s) * ceil(d2/s) pixels).
    """
    d1, d2 = dims
    n = int(W_shape[0])
    candidates = [ssub_B] if ssub_B is not None else range(1, max(d1, d2) + 1)
    for s in candidates:
        if math.ceil(d1 / s) * math.ceil(d2 / s) == n:
            return int(s)
    raise ParameterError(f"W: a ring-weight matrix of {n} pixels does not fit frames {dims}"
                         + (f" downsampled by ssub_B={ssub_B}" if ssub_B is not None else ""))


class BackgroundRemovedSource(MovieSource):
    """``Y - B`` for a CNMF-E result, computed chunk by chunk on read.

    Parameters
    ----------
    images : ndarray, np.memmap, tensor or MovieSource, ``(T, d1, d2)``
    A : sparse or ndarray (pixels, K)
    C : ndarray (K, T)
    b0 : ndarray (pixels,)
    W : sparse (pixels_B, pixels_B)
        Ring weights on the grid downsampled by ``ssub_B``.
    ssub_B : int, optional
        Found from ``W``'s size when omitted.
    """

    # frame-sized buffers a read holds at once (the frames, Y - b0, A C, the
    # residual, the upsampled background, the output): chunks are sized for them
    read_copies = 6

    def __init__(self, images, A, C, b0, W, ssub_B=None):
        self.source = images if isinstance(images, MovieSource) else ArraySource(images)
        T, *dims = self.source.shape
        if len(dims) != 2:
            raise ParameterError(f"images: the ring background is 2-D, got frames {tuple(dims)}")
        d = dims[0] * dims[1]
        self.A = sp.csr_matrix(A, dtype=np.float32)
        self.C = np.asarray(C, dtype=np.float32).reshape(self.A.shape[1], -1)
        self.b0 = np.asarray(b0, dtype=np.float32).ravel()
        if self.A.shape[0] != d or self.b0.size != d or self.C.shape[1] != T:
            raise ParameterError(f"A {self.A.shape}, C {self.C.shape}, b0 ({self.b0.size},): do "
                                 f"not match the movie's {T} frames of {tuple(dims)}")
        self.W = sp.csr_matrix(W, dtype=np.float32)
        self.ssub_B = grid_factor(self.W.shape, dims, ssub_B)
        self._setup((T, *dims), np.float32, f"{self.source.name} minus its ring background")

    def _read(self, start, stop):
        dims = self.dims
        Y = _pixels_view(torch.from_numpy(self.source.read(start, stop).astype(np.float32)))
        Y = Y - torch.from_numpy(self.b0)[:, None]
        R = Y - torch.from_numpy(np.asarray(self.A @ self.C[:, start:stop]))
        Rd = downsample_pixels(R, dims, self.ssub_B)
        w2, h2, n = Rd.shape
        Bd = torch.from_numpy(np.asarray(self.W @ Rd.reshape(w2 * h2, n).numpy()))
        Y -= upsample_pixels(Bd.reshape(w2, h2, n), dims, self.ssub_B)
        return np.ascontiguousarray(_frames_view(Y, dims).numpy())


class _ChunkedMovie:
    """The product interface the CNMF steps use (``AtY``, ``CYt_at``,
    ``blocks``) over a movie made frame chunk by frame chunk
    (``_compute``), held whole when ``_whole`` is set."""

    _whole = None

    def chunks(self):
        """Yield ``(t0, t1, Yc)``: frames t0:t1 of the movie, (d, t1 - t0)."""
        if self._whole is not None:
            yield 0, self.T, self._whole
            return
        yield from self._compute()

    def AtY(self, A, b=None):
        K = A.shape[1]
        nb = 0 if b is None else b.shape[1]
        out = torch.zeros((K + nb, self.T), dtype=torch.float32, device=self.device)
        if K + nb:
            for t0, t1, Yc in self.chunks():
                out[:K, t0:t1] = fp.t_matmul(A, Yc)
                if nb:
                    out[K:, t0:t1] = b.T @ Yc
        return out

    def CYt_at(self, C, idx, Cb=None):
        """``(C Y')[r, idx[r, l]]`` and optionally ``Cb Y'``, in one pass
        (see :meth:`.products.MovieMatrix.CYt_at`)."""
        K, L = idx.shape
        nb = 0 if Cb is None else Cb.shape[0]
        out = torch.zeros(K * L, dtype=torch.float32, device=self.device)
        outb = torch.zeros((nb, self.d), dtype=torch.float32, device=self.device)
        ent, pix, row = support_entries(idx, self.d)
        for t0, t1, Yc in self.chunks():
            add_entry_products(out, ent, row, pix, C[:, t0:t1], Yc)
            if nb:
                outb.addmm_(Cb[:, t0:t1], Yc.T)
        return out.view(K, L) if Cb is None else (out.view(K, L), outb)

    def blocks(self):
        """Yield ``(p0, p1, Yb)``: pixel blocks of the movie (all frames). When
        not held whole each block costs a pass (pixel statistics only)."""
        h = self.dims[0]
        step = max(1, self.cols_per_block) * h
        for p0 in range(0, self.d, step):
            p1 = min(self.d, p0 + step)
            if self._whole is not None:
                yield p0, p1, self._whole[p0:p1]
            else:
                yield p0, p1, torch.cat([Yc[p0:p1] for _, _, Yc in self._compute()], 1)

    def release(self):
        self._whole = None


class RingCorrectedMovie(_ChunkedMovie):
    """``Y - B`` of a :class:`.products.MovieMatrix` under a ring model, with
    the product interface the CNMF steps use.

    ``B`` is computed frame chunk by frame chunk (the ring is spatial, so a
    chunk of frames needs only those frames of ``Y`` and ``C``); the chunks
    are held between passes only when the whole of ``Y - B`` fits in
    ``_RESIDENT_FRACTION`` of the memory budget.

    Parameters
    ----------
    mm : MovieMatrix
    A : (d, K) tensor, C : (K, T) tensor
        The neurons whose part ``A C`` the ring does not see.
    ring : RingModel (with ``b0``)
    resident : bool, optional
        Hold ``Y - B`` whole; None decides from the budget.
    """

    def __init__(self, mm, A, C, ring, resident=None):
        self.mm, self.ring = mm, ring
        self.A, self.C = A, C
        self.dims, self.d, self.T, self.device = mm.dims, mm.d, mm.T, mm.device
        self.cols_per_block = mm.cols_per_block
        budget = memory_budget(self.device, memory_fact=mm.memory_fact)
        whole = self.d * self.T * 4
        if resident is None:
            resident = whole <= _RESIDENT_FRACTION * budget
        # a chunk holds the frames (and their contiguous copy), A C, the
        # residual before and after A C, the output, the upsampled ring term:
        # up to nine frame-sized buffers at once (measured peak), in what the
        # resident copy leaves of the budget
        left = budget - (whole if resident else 0)
        self.frames_per_chunk = int(max(1, min(self.T, left // (CHUNK_COPIES * 4 * self.d))))
        self._whole = None
        if resident:
            self._whole = torch.empty((self.d, self.T), dtype=torch.float32, device=self.device)
            for t0, t1, c in self._compute():
                self._whole[:, t0:t1] = c

    def _compute(self):
        use_ac = self.A.shape[1] > 0
        for t0 in range(0, self.T, self.frames_per_chunk):
            t1 = min(self.T, t0 + self.frames_per_chunk)
            Y = self.mm.frames(t0, t1)
            yield t0, t1, self.ring.subtract(Y, fp.matmul(self.A, self.C[:, t0:t1])
                                             if use_ac else None)


class FilteredRingMovie(_ChunkedMovie):
    """``Y - B`` on a piece of the field made from its ring-filtered movie
    (:mod:`.ring_tiles`): ``Z + A c̄ 1' + G (C - c̄ 1')``, where ``Z`` is
    held in memory, ``c̄`` are the traces' temporal means and ``G`` the
    footprints filtered by the ring (``W A``).

    Parameters
    ----------
    Z : (d, T) tensor
    dims : (d1, d2)
        The piece's frame shape.
    A, G : (d, K) sparse tensors, C : (K, T) tensor
    frames_per_chunk : int
    """

    def __init__(self, Z, dims, A, C, G, frames_per_chunk):
        self.Z, self.A, self.C, self.G = Z, A, C, G
        self.dims, self.d, self.T, self.device = tuple(dims), Z.shape[0], Z.shape[1], Z.device
        # pixel blocks (pixel statistics only) of a chunk's size
        self.cols_per_block = max(1, int(frames_per_chunk) * self.d // (self.T * dims[0]))
        self.frames_per_chunk = int(max(1, min(self.T, frames_per_chunk)))
        self.cbar = C.mean(1, keepdim=True)
        self.Acbar = fp.matmul(A, self.cbar)                          # (d, 1)

    def _compute(self):
        for t0 in range(0, self.T, self.frames_per_chunk):
            t1 = min(self.T, t0 + self.frames_per_chunk)
            out = self.Z[:, t0:t1] + self.Acbar
            if self.G.shape[1]:
                out += fp.matmul(self.G, self.C[:, t0:t1] - self.cbar)
            yield t0, t1, out

    def take(self, rows, frames):
        """Values at ``rows`` x ``frames`` (LongTensors)."""
        out = self.Z[rows[:, None], frames[None, :]] + self.Acbar[rows]
        if self.G.shape[1]:
            out += fp.matmul(fp.rows(self.G, rows), self.C[:, frames] - self.cbar)
        return out
