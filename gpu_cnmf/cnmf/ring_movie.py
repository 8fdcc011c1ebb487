"""A one-photon movie with its CNMF-E background removed, read lazily.

CNMF-E explains a 1p movie ``Y`` as ``A C + B + E`` with the ring background
``B = W (Y - A C - b0 1') + b0 1'`` (see :mod:`.ring_model`; ``W`` is kept,
as in CaImAn, as a sparse matrix over a grid downsampled by ``ssub_B``).
Whatever scores components against the movie (the spatial correlation of
component evaluation) must see ``Y - B``, not ``Y``: the background is many
times brighter than the neurons and its spatial gradients would swamp a
footprint's correlation with the data. :class:`BackgroundRemovedSource`
yields ``Y - B`` frame range by frame range, so it streams like any other
:class:`~gpu_cnmf.io.MovieSource`.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import ParameterError
from ..io import ArraySource, MovieSource
from .ring_model import _frames_view, _pixels_view, downsample_pixels, upsample_pixels


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
