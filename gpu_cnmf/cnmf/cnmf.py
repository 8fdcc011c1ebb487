"""The CNMF class: CaImAn's interface to source extraction.

>>> cnm = CNMF(n_processes=1, params=params).fit(images)   # doctest: +SKIP
>>> cnm2 = cnm.refit(images)                               # doctest: +SKIP
>>> cnm2.estimates.A, cnm2.estimates.C                     # doctest: +SKIP

``images`` is a ``(T, d1, d2)`` array or memory map. CaImAn users pass
``np.reshape(Yr.T, [T] + list(dims), order='F')`` of the pixels x T matrix
from ``load_memmap``; that view is recognised and ``Yr`` is read in place,
block by block, never copied whole. The device is ``params.use_cuda``
(``motion['use_cuda']``); the same code runs on the CPU and the GPU.

Steps and the parameters they honour:

- preprocess: per-pixel noise ``sn`` (``noise_range``, ``noise_method``,
  ``max_num_samples_fft``, or the given ``sn``), ``pixels`` excluded,
  ``check_nan``;
- initialisation (:mod:`.initialization`), or given footprints ``Ain``
  (seeded CNMF), or patches (:mod:`.patches`) when ``rf`` is set;
- unless ``only_init``: spatial update (:mod:`.spatial`), temporal update
  with OASIS (:mod:`.temporal`), merging (:mod:`.merging`), spatial and
  temporal updates again.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import scipy.sparse as sp
import torch

from ..backend import get_device, memory_budget
from ..errors import ParameterError
from . import footprints as fp
from .config import fit_config
from .engine import Model, fit_fov
from .estimates import Estimates
from .patches import fit_patches
from .products import MovieMatrix, Region, as_pixel_matrix, movie_key
from .tiles import refine_tiled

log = logging.getLogger(__name__)

# CaImAn's legacy keyword arguments of CNMF() -> (group, parameter)
_LEGACY = {
    "k": ("init", "K"), "gSig": ("init", "gSig"), "gSiz": ("init", "gSiz"),
    "merge_thresh": ("merge", "thr"), "p": ("temporal", "p"), "ssub": ("init", "ssub"),
    "tsub": ("init", "tsub"), "p_ssub": ("patch", "p_ssub"), "p_tsub": ("patch", "p_tsub"),
    "method_init": ("init", "method_init"), "alpha_snmf": ("init", "alpha_snmf"),
    "rf": ("patch", "rf"), "stride": ("patch", "stride"), "memory_fact": ("patch", "memory_fact"),
    "gnb": ("init", "nb"), "nb_patch": ("patch", "nb_patch"),
    "only_init_patch": ("patch", "only_init"), "method_deconvolution": ("temporal", "method_deconvolution"),
    "check_nan": ("preprocess", "check_nan"), "skip_refinement": ("patch", "skip_refinement"),
    "normalize_init": ("init", "normalize_init"), "s_min": ("temporal", "s_min"),
    "remove_very_bad_comps": ("patch", "remove_very_bad_comps"), "border_pix": ("patch", "border_pix"),
    "low_rank_background": ("patch", "low_rank_background"),
    "update_background_components": ("spatial", "update_background_components"),
    "rolling_sum": ("init", "rolling_sum"), "rolling_length": ("init", "rolling_length"),
    "del_duplicates": ("patch", "del_duplicates"), "fr": ("data", "fr"),
    "decay_time": ("data", "decay_time"), "do_merge": ("merge", "do_merge"),
}

def _config(params):
    """:func:`.config.fit_config` (CaImAn's fit-time defaults) for 2p CNMF,
    which needs ``nb >= 0`` (CNMF-E's ``nb`` may be -1, its full-rank code)."""
    cfg = fit_config(params)
    nb = int(cfg["init"]["nb"])
    if nb < 0:
        raise ParameterError(f"init['nb']: expected 0 or more background components, got {nb}")
    return cfg


def _is_cnmfe(params):
    """1p processing (CNMF-E) is asked for by ``center_psf`` or ``corr_pnr``."""
    ini = params.get_group("init")
    return bool(ini.get("center_psf")) or ini.get("method_init") == "corr_pnr"


def _region(indices, dims):
    if indices is None:
        return None
    sl = list(indices) + [slice(None)] * (2 - len(indices))
    out = []
    for s, n in zip(sl[:2], dims):
        a, b, step = s.indices(n)
        if step != 1:
            raise ParameterError(f"indices: only unit-step slices are supported, got {s}")
        out.append((a, b))
    if out == [(0, dims[0]), (0, dims[1])]:
        return None
    return Region(out[0][0], out[0][1], out[1][0], out[1][1])


class CNMF:
    """Constrained nonnegative matrix factorisation of a calcium movie.

    Parameters
    ----------
    n_processes : int
        How many patches are fitted at once on the CPU (threads sharing the
        cores; see :mod:`gpu_cnmf.cnmf.dispatch`). No ``__main__`` guard
        is needed.
    params : CNMFParams, optional
        All parameters; when None, CaImAn's legacy keywords (``k``,
        ``gSig``, ``merge_thresh``, ``p``, ``rf``, ...) build one.
    dview : object, optional
        Where the patches run: a ``dask.distributed.Client`` (each worker
        reads its patch from the memory map by path, which must be on a
        filesystem the workers share), or a ``multiprocessing`` pool /
        ipyparallel view as CaImAn users pass; None fits them here.
    Ain : array (pixels x K) or sparse, optional
        Footprints (masks) to start from: seeded CNMF.
    Cin, b_in, f_in : arrays, optional
        Traces and background to start from together with ``Ain``.
    """

    def __init__(self, n_processes=1, params=None, dview=None, Ain=None, Cin=None, b_in=None,
                 f_in=None, **kwargs):
        from ..params import CNMFParams

        if params is None:
            params = CNMFParams()
            groups = {}
            for key, val in kwargs.items():
                if key not in _LEGACY:
                    raise ParameterError(f"CNMF: unknown keyword {key!r}; pass params=CNMFParams(...)")
                g, name = _LEGACY[key]
                groups.setdefault(g, {})[name] = val
            if groups:
                params.change_params(groups)
        elif kwargs:
            unknown = [k for k in kwargs if k not in _LEGACY]
            if unknown:
                raise ParameterError(f"CNMF: unknown keyword(s) {unknown}")
        self.params = params
        self.n_processes = int(n_processes or 1)
        self.dview = dview
        self.estimates = Estimates()
        self.Ain = Ain
        self._init_traces = (Cin, b_in, f_in)
        # CNMF-E rounds a fit on patches left to the refit (fit(whole_field=False))
        self._deferred_rounds = []
        self.dims = None

    # ------------------------------------------------------------------ API
    def fit(self, images, indices=None, Ain=None, whole_field=True):
        """Run CNMF on ``images`` (T, d1, d2) and return ``self``.

        Parameters
        ----------
        images : array or np.memmap (T, d1, d2)
        indices : tuple of slices, optional
            Restrict to a rectangle of the field of view.
        Ain : array (pixels x K), optional
            Seeded CNMF from these footprints (as ``CNMF(..., Ain=...)``).
        whole_field : bool
            On patches: end, as CaImAn's fit does, with the updates on the
            whole movie (two-photon: the background and the traces, one
            pass; CNMF-E: rounds on the ring background, when a refit would
            not refit the ring). False keeps the patches' results and
            leaves those updates to a :meth:`refit`, which runs them with
            its own in the same read of the movie (the pipeline).
        """
        t_start = time.perf_counter()
        if Ain is not None:
            self.Ain = Ain
        device = get_device(self.params.use_cuda)
        if _is_cnmfe(self.params):
            return self._fit_cnmfe(images, device, t_start, whole_field)
        cfg = _config(self.params)
        src, layout, full_dims, T = as_pixel_matrix(images)
        region = _region(indices, full_dims)
        P, pre, sp_ = cfg["patch"], cfg["preprocess"], cfg["spatial"]
        block = int(sp_["block_size"]) * int(sp_["num_blocks_per_run"])
        kw = dict(block_pixels=block, memory_fact=float(P["memory_fact"]), exclude=pre["pixels"])
        if layout == "pixels":
            mm = MovieMatrix(src, device, region=region, dims=full_dims, **kw)
        else:
            mm = MovieMatrix(src, device, region=region, **kw)
        dims = mm.dims
        self.dims = dims
        start = self._start_model(mm, device)
        if start is None and self.Ain is None and P["rf"] is not None:
            if region is not None:
                raise ParameterError("indices: not supported together with patches (rf); "
                                     "crop the movie instead")
            n_proc = self.n_processes if self.n_processes > 1 else int(P["n_processes"] or 1)
            model = fit_patches(images, cfg, device, n_processes=n_proc, mm_full=mm,
                                dview=self.dview, whole_field=whole_field)
            model.timings["patches"] = time.perf_counter() - t_start
        else:
            Ain_t = None
            if start is None and self.Ain is not None:
                Ain_t = self._ain_tensor(self.Ain, mm.d, device)
            only_init = bool(P["only_init"]) and start is None
            if start is not None and getattr(self, "_refit_from", False):
                model = refine_tiled(mm, start, cfg)
            else:
                model = fit_fov(mm, cfg, Ain=Ain_t, model=start, only_init=only_init)
        model.timings["total"] = time.perf_counter() - t_start
        self._store(model, dims)
        if model.samples is not None:
            # values of the movie itself: valid for any components
            self.estimates._movie_samples = (movie_key(images), model.samples, None)
        mm.release()
        return self

    def refit(self, images, dview=None):
        """Refine the components of a fit on the whole field of view.

        Returns a new CNMF (as CaImAn does) started from this one's
        ``A, C, b, f`` with ``rf=None`` and ``only_init=False``: the
        background and traces refitted, then spatial, temporal, merging,
        spatial, temporal updates, on tiles of a memory-mapped movie read
        once (:mod:`gpu_cnmf.cnmf.tiles`).
        """
        if self.estimates.A is None:
            raise ParameterError("refit: fit() must run first (no components yet)")
        params = self.params.copy() if hasattr(self.params, "copy") else copy.deepcopy(self.params)
        params.change_params({"patch": {"rf": None, "only_init": False}})
        # type(self): a subclass (the CaImAn façade) gets its own kind back
        cnm = type(self)(self.n_processes, params=params,
                         dview=dview if dview is not None else self.dview)
        cnm.estimates = copy.deepcopy(self.estimates)
        cnm._refit_from = True
        cnm._deferred_rounds = list(self._deferred_rounds)
        return cnm.fit(images)

    def save(self, filename):
        """Write params and estimates to HDF5 in CaImAn's ``cnmf.save`` layout
        (to a temporary name, then renamed). Returns the path."""
        from ..io.results import save_results

        return save_results(filename, self.params, self.estimates.to_dict())

    # ------------------------------------------------------------- helpers
    def _fit_cnmfe(self, images, device, t_start, whole_field=True):
        """1p movies: CNMF-E (corr-PNR seeds, ring background) on the whole
        field or on patches, see :mod:`gpu_cnmf.cnmf.cnmfe`."""
        from .cnmfe import N_ROUNDS, fit_cnmfe, round_plan

        from .ring_model import RingModel
        from .ring_movie import grid_factor

        cfg = fit_config(self.params)
        Ain, start, est = self.Ain, None, self.estimates
        rounds = None
        # a refit refits the ring on the whole field when the movie fits the
        # budget (three float32 copies); otherwise it runs rounds on the
        # fitted ring, and a fit on patches may leave its own rounds to it
        on_ring = 3 * 4 * int(np.prod(np.shape(images))) > memory_budget(device)
        if Ain is None and getattr(self, "_refit_from", False):
            if all(x is not None for x in (est.W, est.b0, est.C, est.sn)) and on_ring:
                t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)  # noqa: E731
                A = fp.from_scipy(est.A, device)
                ring = RingModel.from_sparse(est.W, est.dims, grid_factor(est.W.shape, est.dims),
                                             est.b0, device)
                model = Model(A=A, C=t(est.C), b=torch.zeros((A.shape[0], 0), device=device),
                              f=torch.zeros((0, est.C.shape[1]), device=device), sn=t(est.sn))
                start = (model, ring)
                rounds = self._deferred_rounds + round_plan(N_ROUNDS)
            else:
                Ain = est.A   # start from the fitted footprints
        n_proc = self.n_processes if self.n_processes > 1 else int(cfg["patch"]["n_processes"] or 1)
        model, ring, extra = fit_cnmfe(images, cfg, device, Ain=Ain, n_processes=n_proc,
                                       dview=self.dview, exclude=cfg["preprocess"]["pixels"],
                                       start=start, rounds=rounds,
                                       refine=whole_field or not on_ring)
        self._deferred_rounds = extra.pop("deferred", [])
        if start is not None:
            extra = dict(extra, Cn=est.Cn, pnr=est.pnr)
        model.timings["total"] = time.perf_counter() - t_start
        self._store(model, ring.dims, ring=ring, images=extra)
        if model.samples is not None:
            # values of Y - B for these components: valid while they are
            self.estimates._movie_samples = (movie_key(images), model.samples,
                                             self.estimates.components_key())
        return self

    def _ain_tensor(self, Ain, d, device):
        A = Ain.toarray() if sp.issparse(Ain) else np.asarray(Ain)
        if A.ndim == 3:  # (K, d1, d2) masks
            A = A.transpose(0, 2, 1).reshape(A.shape[0], -1).T
        if A.shape[0] != d:
            raise ParameterError(f"Ain: expected {d} rows (pixels, Fortran order), got {A.shape}")
        return torch.as_tensor(A.astype(np.float32), device=device)

    def _start_model(self, mm, device):
        """A model from the current estimates (refit), or from Ain with Cin,
        b_in, f_in all given; None when initialisation must run."""
        est = self.estimates
        if getattr(self, "_refit_from", False) and est.A is not None:
            t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)  # noqa: E731
            A = fp.from_scipy(est.A, device)
            b = t(est.b if est.b is not None else np.zeros((mm.d, 0)))
            f = t(est.f if est.f is not None else np.zeros((0, mm.T)))
            sn = t(est.sn) if est.sn is not None else None
            if sn is None:
                from .preprocessing import pixel_stats
                pre = self.params.get_group("preprocess")
                sn = pixel_stats(mm, noise_range=pre["noise_range"], noise_method=pre["noise_method"],
                                 check_nan=pre["check_nan"], small=False).sn
            return Model(A=A, C=t(est.C), b=b, f=f, sn=sn,
                         YrA=t(est.YrA) if est.YrA is not None else None)
        Cin, b_in, f_in = self._init_traces
        if self.Ain is not None and Cin is not None and b_in is not None and f_in is not None:
            from .preprocessing import pixel_stats
            pre = self.params.get_group("preprocess")
            st = pixel_stats(mm, noise_range=pre["noise_range"], noise_method=pre["noise_method"],
                             check_nan=pre["check_nan"], sn=pre["sn"], small=False)
            t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)  # noqa: E731
            return Model(A=self._ain_tensor(self.Ain, mm.d, device), C=t(Cin), b=t(b_in),
                         f=t(f_in), sn=st.sn, yy=st.yy)
        return None

    def _store(self, model, dims, ring=None, images=None):
        """Model tensors -> Estimates (host arrays, CaImAn's types), for 2p
        CNMF and CNMF-E alike.

        Parameters
        ----------
        model : Model
        dims : (d1, d2)
        ring : RingModel, optional
            CNMF-E's background, kept as CaImAn keeps it: the sparse ``W``
            (on the ``ssub_B`` grid) and ``b0``.
        images : dict, optional
            ``Cn``, ``pnr``: CNMF-E's seed images.
        """
        n = lambda x: None if x is None else x.detach().cpu().numpy()  # noqa: E731
        est = Estimates(dims=dims)
        est.A = fp.to_scipy(model.A)
        est.C, est.f, est.b = n(model.C), n(model.f), n(model.b)
        est.YrA, est.S, est.sn = n(model.YrA), n(model.S), n(model.sn)
        est.g, est.bl, est.c1, est.neurons_sn = n(model.g), n(model.bl), n(model.c1), n(model.neurons_sn)
        est.R = est.YrA
        est.merged_ROIs = model.merged_ROIs
        est.timings = dict(model.timings)
        if ring is not None:
            est.W, est.b0 = ring.to_sparse(), n(ring.b0)
        if images:
            est.Cn, est.pnr = images.get("Cn"), images.get("pnr")
        est.normalize_components()
        self.dims = tuple(dims)
        self.estimates = est

    # ------------------------------------------- single steps (CaImAn's API)
    def _step_setup(self, images, overrides=None):
        """MovieMatrix, config and model from the current estimates, for
        one update step on ``images``; ``overrides``: {group: {name: value}}."""
        est = self.estimates
        if est.A is None or est.C is None:
            raise ParameterError("no components yet: run fit() (or set estimates.A and "
                                 "estimates.C) before a single update step")
        if est.W is not None:
            raise NotImplementedError("single update steps on a CNMF-E (ring model) result "
                                      "are not supported; nearest: CNMF.refit(images)")
        params = self.params.copy()
        if overrides:
            params.change_params(overrides)
        cfg = _config(params)
        device = get_device(params.use_cuda)
        src, layout, full_dims, T = as_pixel_matrix(images)
        block = int(cfg["spatial"]["block_size"]) * int(cfg["spatial"]["num_blocks_per_run"])
        kw = dict(block_pixels=block, memory_fact=float(cfg["patch"]["memory_fact"]),
                  exclude=cfg["preprocess"]["pixels"])
        mm = (MovieMatrix(src, device, dims=full_dims, **kw) if layout == "pixels"
              else MovieMatrix(src, device, **kw))
        self._refit_from = True
        try:
            model = self._start_model(mm, device)
        finally:
            self._refit_from = False
        if model.YrA is None:
            from .temporal import compute_residuals
            model.YrA = compute_residuals(mm, model.A, model.b, model.C, model.f)
        return mm, cfg, model

    def _step_store(self, mm, model):
        keep = {k: getattr(self.estimates, k) for k in ("Cn", "pnr")}
        self._store(model, mm.dims)
        for k, v in keep.items():
            setattr(self.estimates, k, v)
        mm.release()
        return self

    def update_spatial(self, Y, use_init=True, **kwargs):
        """One spatial update of ``A`` and ``b`` (``kwargs``: ``spatial``
        parameters for this call). Returns self."""
        from .engine import spatial_step
        if not use_init:
            raise NotImplementedError("update_spatial(use_init=False): nearest: "
                                      "use_init=True (start from the current estimates)")
        mm, cfg, model = self._step_setup(Y, {"spatial": kwargs} if kwargs else None)
        return self._step_store(mm, spatial_step(mm, model, cfg))

    def update_temporal(self, Y, use_init=True, **kwargs):
        """One temporal update of ``C``, ``f`` with deconvolution (``S``, ``g``,
        ``bl``, ``c1``, ``neurons_sn``, ``YrA``); ``kwargs``: ``temporal``
        parameters for this call. Returns self."""
        from .engine import temporal_step
        if not use_init:
            raise NotImplementedError("update_temporal(use_init=False): nearest: "
                                      "use_init=True (start from the current estimates)")
        mm, cfg, model = self._step_setup(Y, {"temporal": kwargs} if kwargs else None)
        return self._step_store(mm, temporal_step(mm, model, cfg))

    def merge_comps(self, Y, mx=50, fast_merge=True, max_merge_area=None):
        """Merge components whose traces correlate above ``merge.thr`` and
        whose footprints overlap (at most ``mx`` merged groups, the most
        correlated first). Returns self; ``estimates.merged_ROIs`` lists them."""
        from .engine import merge_step
        if not fast_merge:
            raise NotImplementedError("merge_comps(fast_merge=False): nearest: fast_merge=True "
                                      "(rank-1 NMF of each merged group)")
        over = {"merge": {"max_merge_area": max_merge_area}} if max_merge_area else None
        mm, cfg, model = self._step_setup(Y, over)
        merge_step(model, cfg, max_groups=int(mx))
        return self._step_store(mm, model)


def load_CNMF(filename, n_processes=1, dview=None):
    """A CNMF object from a file written by :meth:`CNMF.save` (or by
    ``gpu-cnmf run``), with its params and estimates."""
    from ..io.results import load_results

    saved = load_results(filename)
    cnm = CNMF(n_processes, params=saved["params"], dview=dview)
    cnm.estimates = Estimates.from_dict(saved["estimates"])
    cnm.dims = cnm.estimates.dims
    return cnm
