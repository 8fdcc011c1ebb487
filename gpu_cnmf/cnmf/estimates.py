"""The results of CNMF, with CaImAn's names.

The movie ``Y`` (pixels x T, pixel ``(i, j)`` of a ``(d1, d2)`` frame at row
``i + j * d1``) is modelled as ``Y ~ A C + b f + noise``:

A : scipy.sparse.csc_matrix (pixels x K)
    Spatial footprints of the K components.
C : ndarray (K, T)
    Denoised calcium traces (baseline removed).
S : ndarray (K, T)
    Deconvolved activity (spikes) from OASIS.
b : ndarray (pixels x nb), f : ndarray (nb, T)
    Background footprints and traces.
YrA : ndarray (K, T)
    Residual traces: ``C + YrA`` is each component's raw trace.
sn : ndarray (pixels,)
    Noise standard deviation of each pixel.
g : ndarray (K, p)
    AR coefficients of each trace; ``bl`` baselines, ``c1`` initial values,
    ``neurons_sn`` noise of each trace, ``lam`` sparsity penalties.
dims : tuple
    Frame shape.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class Estimates:
    """Container of CNMF results (see the module docstring for the names)."""

    def __init__(self, A=None, b=None, C=None, f=None, R=None, dims=None):
        self.A = A
        self.b = b
        self.C = C
        self.f = f
        self.R = R
        self.dims = tuple(dims) if dims is not None else None
        self.S = None
        self.YrA = None
        self.sn = None
        self.g = None
        self.bl = None
        self.c1 = None
        self.neurons_sn = None
        self.lam = None
        self.merged_ROIs = None
        self.center = None
        self.coordinates = None
        # component evaluation (filled by evaluate_components)
        self.idx_components = None
        self.idx_components_bad = None
        self.SNR_comp = None
        self.r_values = None
        self.cnn_preds = None
        self.F_dff = None
        # timings per stage, seconds
        self.timings = {}

    @property
    def nr(self) -> int:
        """Number of components."""
        return 0 if self.A is None else self.A.shape[1]

    def normalize_components(self):
        """Scale each footprint to unit L2 norm and its traces inversely,
        so that ``A C`` is unchanged."""
        if self.A is None or self.nr == 0:
            return self
        A = sp.csc_matrix(self.A)
        nA = np.sqrt(np.asarray(A.power(2).sum(0)).ravel())
        nA[nA == 0] = 1.0
        self.A = sp.csc_matrix(A @ sp.diags(1.0 / nA))
        for name in ("C", "S", "YrA"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, v * nA[:, None])
        for name in ("bl", "c1", "neurons_sn", "lam"):
            v = getattr(self, name)
            if v is not None and np.size(v) == nA.size:
                setattr(self, name, np.asarray(v) * nA)
        if self.b is not None and self.f is not None and np.size(self.b):
            nB = np.linalg.norm(self.b, axis=0)
            nB[nB == 0] = 1.0
            self.b = self.b / nB
            self.f = self.f * nB[:, None]
        return self

    def select_components(self, idx):
        """Keep only components ``idx`` (indices or boolean mask), in place."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        self.A = sp.csc_matrix(self.A)[:, idx]
        for name in ("C", "S", "YrA", "g"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, np.asarray(v)[idx])
        for name in ("bl", "c1", "neurons_sn", "lam", "SNR_comp", "r_values", "cnn_preds"):
            v = getattr(self, name)
            if v is not None and np.size(v) > 0:
                setattr(self, name, np.asarray(v)[idx])
        self.idx_components = None
        self.idx_components_bad = None
        return self

    def footprint_images(self):
        """Footprints as a (K, d1, d2) array."""
        A = sp.csc_matrix(self.A).toarray()
        return A.T.reshape((self.nr, self.dims[1], self.dims[0])).transpose(0, 2, 1)

    def __repr__(self):
        T = None if self.C is None else np.shape(self.C)[-1]
        return f"Estimates(K={self.nr}, dims={self.dims}, T={T})"
