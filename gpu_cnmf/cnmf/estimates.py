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
        # components set aside by select_components (an Estimates, or None)
        self.discarded_components = None
        # one-photon (CNMF-E) ring background: B = W (Y - A C - b0) + b0
        self.W = None
        self.b0 = None
        # summary images (local correlation, peak-to-noise ratio)
        self.Cn = None
        self.pnr = None
        # timings per stage, seconds
        self.timings = {}

    # ------------------------------------------------------------ pictures
    # Thin wrappers: the drawing lives in gpu_cnmf.plots (matplotlib, extra
    # gpu_cnmf[report]); everything works on a machine with no display.

    def _image(self, img):
        """The image to draw on: ``img``, else the mean footprint image."""
        if self.A is None or self.dims is None:
            raise ParameterError("Estimates: no components to draw (A and dims are needed)")
        if img is None:
            mean = np.asarray(sp.csc_matrix(self.A).mean(axis=1)).ravel()
            return mean.reshape(self.dims, order="F")
        img = np.asarray(img, dtype=np.float64)
        if img.shape != tuple(self.dims):
            raise ParameterError(f"img: expected an image of shape {tuple(self.dims)}, got "
                                 f"{img.shape}")
        return img

    def _split(self, idx):
        """Accepted (``idx``) and rejected component indices."""
        good = np.asarray(idx, dtype=int).ravel()
        if good.size and (good.min() < 0 or good.max() >= self.nr):
            raise ParameterError(f"idx: component indices must be in [0, {self.nr})")
        bad = (np.asarray(self.idx_components_bad, dtype=int).ravel()
               if self.idx_components_bad is not None else np.setdiff1d(np.arange(self.nr), good))
        return good, bad

    def plot_contours(self, img=None, idx=None, thr_method='max', thr=0.2, display_numbers=True,
                      params=None, cmap='viridis'):
        """Contours of the components over ``img`` (default: the mean of the
        footprints). With ``idx``, two panels: the components ``idx``
        (accepted) and the others (rejected). ``params`` puts the evaluation
        thresholds in the title. Returns self."""
        from .. import plots
        plt = plots._pyplot()
        img = self._image(img)
        coords = plots.get_contours(self.A, self.dims, thr, thr_method)
        fig = plt.figure()
        if params is not None:
            q = params.get_group("quality") if hasattr(params, "get_group") else params["quality"]
            fig.suptitle(f"min_SNR={q.get('min_SNR')}, rval_thr={q.get('rval_thr')}, "
                         f"use_cnn={q.get('use_cnn')}")
        if idx is None:
            plots.plot_contours(self.A, img, cmap=cmap, coordinates=coords,
                                display_numbers=display_numbers, ax=fig.add_subplot(1, 1, 1))
            return self
        good, bad = self._split(idx)
        A = sp.csc_matrix(self.A)
        for i, (sel, title) in enumerate(((good, "accepted components"),
                                          (bad, "rejected components"))):
            ax = fig.add_subplot(1, 2, i + 1)
            plots.plot_contours(A[:, sel], img, cmap=cmap, coordinates=[coords[k] for k in sel],
                                display_numbers=display_numbers, ax=ax)
            ax.set_title(title)
        return self

    def plot_contours_nb(self, img=None, idx=None, thr_method='max', thr=0.2, params=None,
                         line_color='white', cmap='viridis'):
        """The notebook variant of :meth:`plot_contours` (CaImAn draws it with
        bokeh; matplotlib here, inline in a notebook). Returns self."""
        return self.plot_contours(img=img, idx=idx, thr_method=thr_method, thr=thr,
                                  params=params, cmap=cmap)

    def view_components(self, Yr=None, img=None, idx=None):
        """Step through components (or those in ``idx``) with a slider: the
        image with the component's contour, its footprint and its traces
        ``C`` and ``C + YrA``. Returns self."""
        from .. import plots
        if self.C is None:
            raise ParameterError("Estimates: no traces C to show")
        img = self._image(img)
        plots.component_viewer(self.A, self.C, self.dims, YrA=self.YrA, img=img, idx=idx)
        return self

    def nb_view_components(self, Yr=None, img=None, idx=None, denoised_color=None,
                           cmap='jet', thr=0.99):
        """The notebook variant of :meth:`view_components` (matplotlib; the
        slider is live with an interactive backend such as ipympl). Returns
        self."""
        from .. import plots
        if self.C is None:
            raise ParameterError("Estimates: no traces C to show")
        img = self._image(img)
        plots.component_viewer(self.A, self.C, self.dims, YrA=self.YrA, img=img, idx=idx,
                               thr=thr)
        return self

    def play_movie(self, imgs, q_max=99.75, q_min=2, gain_res=1, magnification=1,
                   include_bck=True, frame_range=slice(None, None, None), bpx=0, thr=0.,
                   save_movie=False, movie_name='results_movie.avi', display=True,
                   opencv_codec='H264', use_color=False, gain_color=4, gain_bck=0.2):
        """The data, the model (``A C`` + background) and the residual
        (times ``gain_res``) side by side, frame by frame
        (:func:`gpu_cnmf.plots.results_movie_frames`); ``thr > 0`` outlines
        each footprint at ``thr`` of its peak.

        Shown in a window when a display is available (``display``); written
        to ``movie_name`` with ``save_movie`` (``.avi``/``.mp4``/``.mkv``
        through PyAV, MPEG-4 video, whatever ``opencv_codec`` says; ``.npy``
        or ``.tif`` as 8-bit frames). With no display and nothing to save it
        warns and returns. Returns self.
        """
        from .. import plots
        if use_color:
            raise NotImplementedError("Estimates.play_movie(use_color=True) (components in "
                                      "colour) is not supported; nearest: use_color=False")
        frames = plots.results_movie_frames(
            imgs, self.A, self.C, self.dims, b=self.b, f=self.f, W=self.W, b0=self.b0,
            frame_range=frame_range, include_bck=include_bck, gain_res=gain_res, bpx=bpx,
            magnification=magnification, q_min=q_min, q_max=q_max, thr=thr)
        plots.play_movie(frames, save_movie=save_movie, movie_name=movie_name,
                         display=display)
        return self

    def to_dict(self) -> dict:
        """Public fields by name, for result files (``R``, an alias of
        ``YrA``, is stored once; ``discarded_components`` as a dict)."""
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        if fields.get("R") is fields.get("YrA"):
            fields.pop("R", None)
        if isinstance(fields.get("discarded_components"), Estimates):
            fields["discarded_components"] = fields["discarded_components"].to_dict()
        return fields

    @classmethod
    def from_dict(cls, fields: dict) -> "Estimates":
        """Inverse of :meth:`to_dict`."""
        est = cls(dims=fields.get("dims"))
        for name, value in fields.items():
            if isinstance(getattr(cls, name, None), property):
                continue   # derived (CaImAn stores nr, the number of components)
            if name == "discarded_components" and isinstance(value, dict):
                value = cls.from_dict(value) if value else None
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

    def components_key(self):
        """A fingerprint of ``A`` and ``C`` (shapes, support size, sums):
        samples of a background-removed movie hold only for them."""
        if self.A is None or self.C is None:
            return None
        A = sp.csc_matrix(self.A)
        return (A.shape, A.nnz, float(A.sum()), float(np.asarray(self.C, np.float64).sum()))

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
        from .products import movie_key

        samples = None
        kept = getattr(self, "_movie_samples", None)
        if kept is not None and kept[0] is not None and kept[0] == movie_key(images) and \
                kept[2] in (None, self.components_key()):
            # the refit's tiles kept what the spatial correlation reads
            samples = kept[1]
        if self.W is not None and self.b0 is not None:
            # CNMF-E: components are scored against the movie minus its
            # ring background, as they were fitted
            from .ring_movie import BackgroundRemovedSource
            images = BackgroundRemovedSource(images, self.A, self.C, self.b0, self.W,
                                             params.init.get("ssub_B"))
        res = evaluate_components(images, self.A, self.C, self.b, self.f, self.YrA, self.dims,
                                  params.data["fr"], params.data["decay_time"],
                                  params.get_group("quality"), use_cuda=params.use_cuda,
                                  gSig=params.init["gSig"], samples=samples)
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

    def footprint_images(self):
        """Footprints as a (K, d1, d2) array."""
        A = sp.csc_matrix(self.A).toarray()
        return A.T.reshape((self.nr, self.dims[1], self.dims[0])).transpose(0, 2, 1)

    def __repr__(self):
        T = None if self.C is None else np.shape(self.C)[-1]
        return f"Estimates(K={self.nr}, dims={self.dims}, T={T})"

    # ---------------------------------------------------------------- subsets
    # per-component fields: rows (K, ...) of arrays, columns of A
    _PER_COMPONENT_ROWS = ("C", "S", "YrA", "g", "F_dff", "F_dff_dec", "S_dff", "bl", "c1",
                           "neurons_sn", "lam", "SNR_comp", "r_values", "cnn_preds", "center",
                           "coordinates")
    _PER_COMPONENT_COLS = ("A", "A_thr")

    def _per_component(self):
        """Names of the set per-component fields (rows or columns)."""
        K = self.nr
        rows = [n for n in self._PER_COMPONENT_ROWS
                if getattr(self, n, None) is not None and np.ndim(getattr(self, n)) >= 1
                and len(getattr(self, n)) == K]
        cols = [n for n in self._PER_COMPONENT_COLS
                if getattr(self, n, None) is not None and getattr(self, n).shape[1] == K]
        return rows, cols

    def _subset(self, idx):
        """A dict of the per-component fields restricted to ``idx``."""
        rows, cols = self._per_component()
        out = {}
        for n in rows:
            v = getattr(self, n)
            out[n] = [v[i] for i in idx] if isinstance(v, list) else np.asarray(v)[idx]
        for n in cols:
            out[n] = sp.csc_matrix(getattr(self, n))[:, idx]
        return out

    def select_components(self, idx_components=None, use_object=False,
                          save_discarded_components=True):
        """Keep only components ``idx_components`` (indices or a boolean
        mask), in place; with ``use_object=True`` (or no indices) the accepted
        ``idx_components`` of :meth:`evaluate_components`. Every per-component
        field follows (``A``, ``C``, ``S``, ``YrA``/``R``, ``g``, ``bl``,
        ``c1``, ``neurons_sn``, ``F_dff``, the scores, ...). The others are
        kept in ``discarded_components`` (unless ``save_discarded_components``
        is False) for :meth:`restore_discarded_components`. Returns self."""
        if use_object or idx_components is None:
            if self.idx_components is None:
                raise ParameterError("select_components: no idx given and no "
                                     "idx_components yet (run evaluate_components first)")
            idx_components = self.idx_components
        K = self.nr
        idx = np.asarray(idx_components)
        if idx.dtype == bool:
            if idx.size != K:
                raise ParameterError(f"idx_components: a mask of {idx.size} for {K} components")
            idx = np.flatnonzero(idx)
        idx = idx.astype(int)
        if idx.size and (idx.min() < -K or idx.max() >= K):
            raise ParameterError(f"idx_components: indices must be in [0, {K}), got "
                                 f"{idx.min()}..{idx.max()}")
        idx = np.where(idx < 0, idx + K, idx)
        bad = np.setdiff1d(np.arange(K), idx)
        if save_discarded_components and bad.size:
            gone = Estimates(dims=self.dims)
            for n, v in self._subset(bad).items():
                setattr(gone, n, v)
            gone.R = gone.YrA
            if self.discarded_components is not None and self.discarded_components.nr:
                gone = self.discarded_components._joined(gone)
            self.discarded_components = gone
        for n, v in self._subset(idx).items():
            setattr(self, n, v)
        self.R = self.YrA
        self.idx_components = None
        self.idx_components_bad = None
        return self

    def _joined(self, other):
        """Components of self followed by those of other (same fields)."""
        out = Estimates(dims=self.dims)
        rows, cols = self._per_component()
        orows, ocols = other._per_component()
        for n in set(rows) & set(orows):
            a, b = getattr(self, n), getattr(other, n)
            if isinstance(a, list) or isinstance(b, list):
                setattr(out, n, list(a) + list(b))
            else:
                setattr(out, n, np.concatenate([np.asarray(a), np.asarray(b)], axis=0))
        for n in set(cols) & set(ocols):
            setattr(out, n, sp.hstack([sp.csc_matrix(getattr(self, n)),
                                       sp.csc_matrix(getattr(other, n))]).tocsc())
        out.R = out.YrA
        return out

    def restore_discarded_components(self):
        """Put the components set aside by :meth:`select_components` back
        (after the kept ones). Returns self."""
        if self.discarded_components is None or self.discarded_components.nr == 0:
            raise ParameterError("restore_discarded_components: nothing was discarded "
                                 "(select_components(save_discarded_components=True) first)")
        joined = self._joined(self.discarded_components)
        for n in set(self._per_component()[0] + self._per_component()[1]):
            setattr(self, n, getattr(joined, n, None))
        self.R = self.YrA
        self.discarded_components = None
        self.idx_components = self.idx_components_bad = None
        return self

    def remove_components(self, ind_rm):
        """Drop components ``ind_rm`` (indices or boolean mask), in place;
        they are not kept in ``discarded_components``. Returns self."""
        ind_rm = np.asarray(ind_rm)
        keep = np.ones(self.nr, dtype=bool)
        keep[np.flatnonzero(ind_rm) if ind_rm.dtype == bool else ind_rm.astype(int)] = False
        return self.select_components(keep, save_discarded_components=False)

    # -------------------------------------------------- traces and residuals
    @staticmethod
    def _frames(Yr, dims):
        """A pixels x T matrix ``Yr`` (or a (T, *dims) movie) as frames."""
        arr = Yr
        if np.ndim(arr) == 2:
            d = int(np.prod(dims))
            if arr.shape[0] != d:
                raise ParameterError(f"Yr: expected {d} rows (pixels of {tuple(dims)}), got "
                                     f"{arr.shape}")
            return np.reshape(arr.T, (arr.shape[1],) + tuple(dims), order="F")
        return arr

    def compute_residuals(self, Yr):
        """Residual traces ``YrA`` (and ``R``) from the movie ``Yr``
        (pixels x T, or frames): what each footprint sees beyond the model,
        scaled like ``C``. Returns self."""
        from ..evaluation import compute_residuals
        if self.A is None or self.C is None:
            raise ParameterError("compute_residuals: needs A and C")
        images = self._frames(Yr, self.dims)
        self.YrA = compute_residuals(images, self.A, self.C, self.b, self.f, dims=self.dims)
        self.R = self.YrA
        return self

    def compute_background(self, Yr):
        """The background, pixels x T: ``b f``, or for the CNMF-E ring
        model ``W (Y - A C - b0) + b0``."""
        if self.W is not None and self.b0 is not None:
            W = sp.csr_matrix(self.W)
            Y = np.asarray(Yr, dtype=np.float32)
            if Y.ndim != 2:
                Y = np.reshape(Y, (Y.shape[0], -1), order="F").T
            d = Y.shape[0]
            if W.shape != (d, d):
                raise NotImplementedError("compute_background: the ring model was fitted on a "
                                          f"downsampled grid (W {W.shape}, {d} pixels); "
                                          "nearest: fit with ssub_B=1")
            b0 = np.asarray(self.b0, dtype=np.float32).reshape(-1, 1)
            AC = np.asarray(sp.csc_matrix(self.A) @ self.C, dtype=np.float32)
            return np.asarray(W @ (Y - AC - b0)) + b0
        if self.b is None or self.f is None:
            raise ParameterError("compute_background: no background (b, f) in these estimates")
        return np.asarray(self.b) @ np.asarray(self.f)

    def deconvolve(self, params, dview=None, dff_flag=False):
        """Deconvolve the raw traces ``C + YrA`` again with the ``temporal``
        parameters of ``params``: sets ``C``, ``S``, ``bl``, ``c1``, ``g``,
        ``neurons_sn`` and ``YrA``. With ``dff_flag`` the ΔF/F traces
        ``F_dff`` are deconvolved into ``F_dff_dec`` and ``S_dff`` instead.
        Returns self."""
        import torch
        from .temporal import deconvolve
        t = params.get_group("temporal")
        if dff_flag:
            if self.F_dff is None:
                raise ParameterError("deconvolve(dff_flag=True): run detrend_df_f first")
            Y = np.asarray(self.F_dff, dtype=np.float32)
        else:
            if self.C is None:
                raise ParameterError("deconvolve: no traces C")
            Y = np.asarray(self.C, dtype=np.float32) + (0 if self.YrA is None
                                                        else np.asarray(self.YrA, np.float32))
        device = params.device()
        c, s, bl, c1, g, sn = deconvolve(
            torch.as_tensor(Y, device=device), int(t["p"]),
            method_deconvolution=t["method_deconvolution"], bas_nonneg=t["bas_nonneg"],
            noise_range=t["noise_range"], noise_method=t["noise_method"], lags=t["lags"],
            fudge_factor=t["fudge_factor"], s_min=t["s_min"], optimize_g=t["optimize_g"],
            solvers=t["solvers"])
        n = lambda x: x.detach().cpu().numpy()  # noqa: E731
        if dff_flag:
            self.F_dff_dec, self.S_dff = n(c), n(s)
            return self
        self.C, self.S, self.bl, self.c1, self.g, self.neurons_sn = \
            n(c), n(s), n(bl), n(c1), n(g), n(sn)
        self.YrA = Y - self.C - self.bl[:, None]
        self.R = self.YrA
        return self

    # ------------------------------------------------ footprint-based selection
    def threshold_spatial_components(self, maxthr=0.25, dview=None):
        """``A_thr``: each footprint median-filtered, cut below ``maxthr``
        times its peak, closed and reduced to its largest connected piece
        (``A`` itself is unchanged). Returns self."""
        from . import footprints as fp
        from .spatial import threshold_components
        if self.A is None:
            raise ParameterError("threshold_spatial_components: no footprints A")
        if not 0 <= float(maxthr) <= 1:
            raise ParameterError(f"maxthr: expected a fraction in [0, 1], got {maxthr!r}")
        At = threshold_components(fp.from_scipy(self.A, "cpu"), self.dims,
                                  thr_method="max", maxthr=float(maxthr), extract_cc=True)
        self.A_thr = fp.to_scipy(At)
        return self

    def remove_small_large_neurons(self, min_size_neuro, max_size_neuro, select_comp=False):
        """Reject components whose thresholded footprint (``A_thr``, made with
        :meth:`threshold_spatial_components` if missing) has fewer than
        ``min_size_neuro`` or more than ``max_size_neuro`` pixels: they leave
        ``idx_components`` (all components count as accepted when it is
        unset); with ``select_comp`` the rest are selected. Returns self."""
        if getattr(self, "A_thr", None) is None or self.A_thr.shape[1] != self.nr:
            self.threshold_spatial_components()
        size = np.asarray((sp.csc_matrix(self.A_thr) > 0).sum(0)).ravel()
        ok = np.flatnonzero((size >= min_size_neuro) & (size <= max_size_neuro))
        self._restrict_accepted(ok)
        if select_comp:
            self.select_components(use_object=True)
        return self

    def _restrict_accepted(self, ok):
        base = np.arange(self.nr) if self.idx_components is None else \
            np.asarray(self.idx_components, dtype=int)
        self.idx_components = np.intersect1d(base, ok)
        self.idx_components_bad = np.setdiff1d(np.arange(self.nr), self.idx_components)

    def remove_duplicates(self, predictions=None, r_values=None, dist_thr=0.1, min_dist=10,
                          thresh_subset=0.6, plot_duplicates=False, select_comp=False):
        """Reject duplicated components: pairs of thresholded footprints
        (``A_thr``) whose centres are within ``min_dist`` px and whose
        Jaccard distance is below ``dist_thr``, or where one lies inside the
        other (overlap / smaller area above ``thresh_subset``). Of each pair
        the one with the lower score (``predictions``, else ``r_values``,
        else the smaller footprint) leaves ``idx_components``. Returns self;
        ``duplicates`` holds the pairs found, ``idx_duplicates`` the rejected."""
        if plot_duplicates:
            raise NotImplementedError("remove_duplicates(plot_duplicates=True): nearest: "
                                      "plot estimates.duplicates with plot_contours")
        if getattr(self, "A_thr", None) is None or self.A_thr.shape[1] != self.nr:
            self.threshold_spatial_components()
        M = (sp.csc_matrix(self.A_thr) > 0).astype(np.float64)
        area = np.asarray(M.sum(0)).ravel()
        inter = (M.T @ M).toarray()
        union = area[:, None] + area[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            jd = 1 - inter / union
            sub = inter / np.minimum(area[:, None], area[None, :])
        d1, d2 = self.dims[:2]
        yy, xx = np.meshgrid(np.arange(d1), np.arange(d2), indexing="ij")
        coords = np.stack([yy.ravel(order="F"), xx.ravel(order="F")], 1)
        cen = (M.T @ coords) / np.maximum(area[:, None], 1)
        near = np.linalg.norm(cen[:, None] - cen[None, :], axis=-1) < min_dist
        pair = near & ((jd < dist_thr) | (sub > thresh_subset))
        pair &= (area[:, None] > 0) & (area[None, :] > 0)
        ii, jj = np.nonzero(np.triu(pair, 1))
        score = predictions if predictions is not None else r_values
        score = area if score is None else np.asarray(score, dtype=float).ravel()
        if score.shape[0] != self.nr:
            raise ParameterError(f"predictions/r_values: expected {self.nr} scores, got "
                                 f"{score.shape[0]}")
        drop = np.unique([j if score[i] >= score[j] else i for i, j in zip(ii, jj)]).astype(int)
        self.duplicates = np.stack([ii, jj], 1) if ii.size else np.zeros((0, 2), int)
        self.idx_duplicates = drop
        self._restrict_accepted(np.setdiff1d(np.arange(self.nr), drop))
        if select_comp:
            self.select_components(use_object=True)
        return self

    def filter_components(self, imgs, params, new_dict=None, dview=None, select_mode="All"):
        """Accept/reject again with the ``quality`` thresholds of ``params``
        (updated by ``new_dict``) from the scores already computed (computed
        with :meth:`evaluate_components` when missing). Returns self."""
        from ..evaluation import accept_components
        if select_mode != "All":
            raise NotImplementedError(f"filter_components(select_mode={select_mode!r}): "
                                      "nearest: select_mode='All'")
        if new_dict:
            params.set("quality", dict(new_dict))
        q = params.get_group("quality")
        if self.SNR_comp is None or self.r_values is None or \
                (q["use_cnn"] and self.cnn_preds is None):
            return self.evaluate_components(imgs, params, dview=dview)
        self.idx_components, self.idx_components_bad = accept_components(
            self.SNR_comp, self.r_values, self.cnn_preds, q)
        return self

    def evaluate_components_CNN(self, params, neuron_class=1):
        """The CNN classifier's probability that each footprint is a neuron
        (``cnn_preds``); ``idx_components`` are those at or above
        ``quality.min_cnn_thr``. Returns self."""
        from ..evaluation import predict_cnn
        if neuron_class != 1:
            raise NotImplementedError("evaluate_components_CNN(neuron_class != 1): the "
                                      "classifier scores neurons only; nearest: 1 - cnn_preds")
        q = params.get_group("quality")
        self.cnn_preds = predict_cnn(self.A, self.dims, gSig=params.init["gSig"],
                                     gSig_range=q["gSig_range"], use_cuda=params.use_cuda)
        self.idx_components = np.flatnonzero(self.cnn_preds >= q["min_cnn_thr"])
        self.idx_components_bad = np.flatnonzero(self.cnn_preds < q["min_cnn_thr"])
        return self

    def manual_merge(self, components, params):
        """Merge each given group of component indices (a list of lists)
        into one: the rank-1 nonnegative fit of the group's ``A (C + YrA)``,
        deconvolved again. Merged components go to the end; ``merged_ROIs``
        lists the groups. Returns self."""
        import torch
        from . import footprints as fp
        from .engine import Model, merge_step
        groups = [np.unique(np.asarray(g, dtype=int)) for g in components]
        K = self.nr
        flat = np.concatenate(groups) if groups else np.zeros(0, int)
        if any(len(g) < 2 for g in groups):
            raise ParameterError("manual_merge: each group needs at least 2 components")
        if flat.size and (flat.min() < 0 or flat.max() >= K):
            raise ParameterError(f"manual_merge: component indices must be in [0, {K})")
        if len(np.unique(flat)) != flat.size:
            raise ParameterError("manual_merge: a component appears in two groups")
        dev = params.device()
        t = lambda x: None if x is None else torch.as_tensor(  # noqa: E731
            np.asarray(x, dtype=np.float32), device=dev)
        model = Model(A=fp.from_scipy(self.A, dev), C=t(self.C), b=t(self.b),
                      f=t(self.f), sn=t(self.sn), YrA=t(self.YrA), S=t(self.S), bl=t(self.bl),
                      c1=t(self.c1), g=t(self.g), neurons_sn=t(self.neurons_sn))
        cfg = {"merge": params.get_group("merge"), "temporal": params.get_group("temporal")}
        merge_step(model, cfg, groups=[torch.as_tensor(g, device=dev) for g in groups])
        n = lambda x: None if x is None else x.detach().cpu().numpy()  # noqa: E731
        self.A = fp.to_scipy(model.A)
        for name in ("C", "YrA", "S", "bl", "c1", "g", "neurons_sn"):
            setattr(self, name, n(getattr(model, name)))
        self.R = self.YrA
        self.merged_ROIs = [list(map(int, g)) for g in groups]
        for name in ("F_dff", "SNR_comp", "r_values", "cnn_preds", "idx_components",
                     "idx_components_bad", "A_thr"):
            setattr(self, name, None)
        return self

    def save_NWB(self, filename, imaging_plane_name=None, imaging_series_name=None,
                 sess_desc="CaImAn Results", exp_desc=None, identifier=None,
                 imaging_rate=30., starting_time=0., session_start_time=None,
                 excitation_lambda=488.0, imaging_plane_description="some imaging plane description",
                 emission_lambda=520.0, indicator="OGB-1", location="brain",
                 raw_data_file=None):
        """Write the components to an NWB file (needs pynwb): footprints as
        image masks, ``C`` (and ``S``) as ROI response series at
        ``imaging_rate`` Hz. Returns the path."""
        from ..io.results import export_nwb
        if raw_data_file is not None:
            raise NotImplementedError("save_NWB(raw_data_file=...): adding results to the raw "
                                      "data's NWB file is not supported; nearest: a separate "
                                      "results file (raw_data_file=None)")
        return export_nwb(filename, self, {"data": {"fr": float(imaging_rate)}},
                          session_description=sess_desc, identifier=identifier,
                          session_start_time=session_start_time,
                          imaging_plane_location=location, indicator=indicator,
                          excitation_lambda=excitation_lambda, emission_lambda=emission_lambda,
                          imaging_plane_description=imaging_plane_description,
                          experiment_description=exp_desc, starting_time=starting_time,
                          imaging_plane_name=imaging_plane_name,
                          imaging_series_name=imaging_series_name)
