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
W : scipy.sparse (pixels x pixels), b0 : ndarray (pixels,)
    One-photon data (CNMF-E): the ring model of the background,
    ``B = W (Y - A C - b0 1') + b0 1'``, in place of ``b f``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import ParameterError


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
        # one-photon (CNMF-E) ring background: B = W (Y - A C - b0) + b0
        self.W = None
        self.b0 = None
        # summary images (local correlation, peak-to-noise ratio)
        self.Cn = None
        self.pnr = None
        # timings per stage, seconds
        self.timings = {}

    def to_dict(self) -> dict:
        """Public fields by name, for result files (``R``, an alias of
        ``YrA``, is stored once)."""
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        if fields.get("R") is fields.get("YrA"):
            fields.pop("R", None)
        return fields

    @classmethod
    def from_dict(cls, fields: dict) -> "Estimates":
        """Inverse of :meth:`to_dict`."""
        est = cls(dims=fields.get("dims"))
        for name, value in fields.items():
            setattr(est, name, value)
        if "R" not in fields:
            est.R = est.YrA
        return est

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

    def evaluate_components(self, images, params, dview=None):
        """Score every component and split them into accepted and rejected.

        Sets ``idx_components``, ``idx_components_bad``, ``SNR_comp``,
        ``r_values`` and ``cnn_preds`` with the ``quality`` parameters of
        ``params`` (a CNMFParams), as CaImAn does. A CNMF-E result (with
        ``W`` and ``b0``) is scored against the movie minus its ring
        background. ``dview`` is accepted for
        compatibility and ignored. Returns self.
        """
        from ..evaluation import evaluate_components

        if self.W is not None and self.b0 is not None:
            # CNMF-E: components are scored against the movie minus its
            # ring background, as they were fitted
            from .ring_movie import BackgroundRemovedSource
            images = BackgroundRemovedSource(images, self.A, self.C, self.b0, self.W,
                                             params.init.get("ssub_B"))
        res = evaluate_components(images, self.A, self.C, self.b, self.f, self.YrA, self.dims,
                                  params.data["fr"], params.data["decay_time"],
                                  params.get_group("quality"), use_cuda=params.use_cuda,
                                  gSig=params.init["gSig"])
        for name, value in res.items():
            setattr(self, name, value)
        return self

    def detrend_df_f(self, quantileMin=8, frames_window=500, flag_auto=True, use_fast=False,
                     use_residuals=True, detrend_only=False):
        """ΔF/F of every component into ``F_dff`` (see
        :func:`gpu_cnmf.evaluation.detrend_df_f`). Returns self."""
        from ..evaluation import detrend_df_f

        self.F_dff = detrend_df_f(self.A, self.b, self.C, self.f,
                                  YrA=self.YrA if use_residuals else None,
                                  quantileMin=quantileMin, frames_window=frames_window,
                                  flag_auto=flag_auto, use_fast=use_fast,
                                  detrend_only=detrend_only)
        return self

    def remove_components(self, ind_rm):
        """Drop components ``ind_rm`` (indices or boolean mask), in place."""
        ind_rm = np.asarray(ind_rm)
        keep = np.ones(self.nr, dtype=bool)
        keep[np.flatnonzero(ind_rm) if ind_rm.dtype == bool else ind_rm.astype(int)] = False
        return self.select_components(keep)

    def select_components(self, idx=None, use_object=False):
        """Keep only components ``idx`` (indices or boolean mask), in place;
        with ``use_object=True`` keep the accepted ``idx_components``."""
        if use_object or idx is None:
            if self.idx_components is None:
                raise ParameterError("select_components: no idx given and no "
                                     "idx_components yet (run evaluate_components first)")
            idx = self.idx_components
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
