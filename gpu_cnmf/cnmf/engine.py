"""The CNMF sequence on one field of view (the whole movie or one patch).

``fit_fov`` runs CaImAn's order of steps on a :class:`MovieMatrix`:
statistics and initialisation (or the given footprints), then, unless
``only_init``, spatial update, temporal update, merging, spatial and
temporal updates again. The model lives on the device as a dict of tensors
(:class:`Model`) between steps; components that a step empties are dropped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..progress import tick
from . import footprints as fp
from .initialization import initialize
from .merging import find_merges, merge_rank1
from .preprocessing import pixel_stats
from .spatial import update_spatial
from .temporal import compute_residuals, deconvolve, update_temporal


@dataclass
class Model:
    """Current CNMF model on the device (names as in :mod:`.estimates`);
    ``A`` is dense in a patch and sparse on the whole field
    (:mod:`.footprints`)."""

    A: torch.Tensor
    C: torch.Tensor
    b: torch.Tensor
    f: torch.Tensor
    sn: torch.Tensor
    YrA: torch.Tensor | None = None
    S: torch.Tensor | None = None
    bl: torch.Tensor | None = None
    c1: torch.Tensor | None = None
    g: torch.Tensor | None = None
    neurons_sn: torch.Tensor | None = None
    yy: torch.Tensor | None = None
    b_mask: torch.Tensor | None = None
    g_global: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    samples: object = None
    merged_ROIs: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    # samples: the movie's values that evaluation would read, when a pass
    # held them (evaluation.spatial.MovieSamples)
    # ids: when set, each component's index in the model a tiled refinement
    # started from (merged ones: -(1 + their group's place in merged_ROIs)),
    # so that merged_ROIs name those
    _PER_COMPONENT = ("C", "YrA", "S", "bl", "c1", "g", "neurons_sn", "ids")

    def select(self, keep):
        """Keep the components where ``keep`` (bool tensor) is True."""
        if bool(keep.all()):
            return self
        self.A = fp.select(self.A, keep)
        for name in self._PER_COMPONENT:
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, v[keep])
        return self

    @property
    def K(self):
        return self.A.shape[1]


def _tick(model, name, t0, device, log=False):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if not log:
        return tick(model.timings, name, t0)
    return tick(model.timings, name, t0, "CNMF on the whole field", model.K)


def temporal_kwargs(cfg, p=None):
    t = cfg["temporal"]
    return dict(p=t["p"] if p is None else p, ITER=t["ITER"],
                method_deconvolution=t["method_deconvolution"], bas_nonneg=t["bas_nonneg"],
                noise_range=t["noise_range"], noise_method=t["noise_method"], lags=t["lags"],
                fudge_factor=t["fudge_factor"], s_min=t["s_min"], optimize_g=t["optimize_g"],
                solvers=t["solvers"])


def spatial_kwargs(cfg):
    s = cfg["spatial"]
    return dict(method_exp=s["method_exp"], dist=s["dist"], expandCore=s["expandCore"],
                method_ls=s["method_ls"], normalize_yyt_one=s["normalize_yyt_one"],
                update_background_components=s["update_background_components"],
                thr_method=s["thr_method"], maxthr=s["maxthr"], nrgthr=s["nrgthr"],
                extract_cc=s["extract_cc"], medw=s["medw"], se=s["se"], ss=s["ss"])


def spatial_step(mm, model, cfg):
    """Spatial update, dropping emptied components."""
    need_yy = cfg["spatial"]["method_ls"] == "nnls_L0"
    if need_yy and model.yy is None:
        st = pixel_stats(mm, check_nan=False, sn=model.sn.cpu().numpy(), small=False)
        model.yy = st.yy
    A, b, keep = update_spatial(mm, model.A, model.b, model.C, model.f, model.sn,
                                b_mask=model.b_mask, yy=model.yy, **spatial_kwargs(cfg))
    model.A, model.b = A, b
    return model.select(keep)


def temporal_step(mm, model, cfg, p=None, AtY=None):
    """Temporal update (with deconvolution), dropping silent components;
    ``AtY``: ``[A b]' Y`` when a pass already made it."""
    kw = temporal_kwargs(cfg, p)
    kw["AtY"] = AtY
    if model.g_global is not None and kw["p"] > 0 and model.g_global.shape[1] == kw["p"]:
        kw["g_fixed"] = model.g_global
    r = update_temporal(mm, model.A, model.b, model.C, model.f, **kw)
    model.C, model.f, model.S, model.bl = r.C, r.f, r.S, r.bl
    model.c1, model.g, model.neurons_sn, model.YrA = r.c1, r.g, r.neurons_sn, r.YrA
    return model.select(model.C.amax(1) > 0)


def _most_correlated(groups, C, n):
    """The ``n`` groups whose members' traces correlate best (max pair)."""
    Cc = C - C.mean(1, keepdim=True)
    Cc = Cc / Cc.norm(dim=1, keepdim=True).clamp_min(1e-12)
    score = []
    for g in groups:
        r = Cc[g] @ Cc[g].T
        r.fill_diagonal_(-1.0)
        score.append(float(r.max()))
    order = np.argsort(score)[::-1][:n]
    return [groups[i] for i in sorted(order)]


def merge_step(model, cfg, p=None, max_groups=None, groups=None):
    """Merge correlated overlapping components; returns the number merged.
    ``max_groups`` caps how many groups merge (the most correlated first);
    ``groups`` (index tensors) merges those instead of searching."""
    m = cfg["merge"]
    if groups is None:
        groups = find_merges(model.A, model.C, m["thr"], m["max_merge_area"])
    if max_groups is not None and len(groups) > max_groups:
        groups = _most_correlated(groups, model.C, max_groups)
    if not groups:
        return 0
    dev = model.C.device
    Craw = model.C + (model.YrA if model.YrA is not None else 0)
    Am, Cm = merge_rank1(model.A, Craw, groups)
    tk = temporal_kwargs(cfg, p)
    pp = tk.pop("p")
    tk.pop("ITER")
    c, s, bl, c1, g, sn = deconvolve(Cm, pp, **tk)
    merged = torch.zeros(model.K, dtype=torch.bool, device=dev)
    for grp in groups:
        merged[grp] = True
    keep = ~merged
    named = (lambda grp: model.ids[grp]) if model.ids is not None else (lambda grp: grp)
    first = len(model.merged_ROIs)
    model.merged_ROIs.extend([named(grp).cpu().tolist() for grp in groups])
    M = Am.shape[1]
    # a merged component's id: -(1 + its group's place in merged_ROIs)
    new = dict(C=c, YrA=Cm - c - bl[:, None], S=s, bl=bl, c1=c1, g=g, neurons_sn=sn,
               ids=-1 - torch.arange(first, first + M, device=dev))
    model.A = fp.cat(fp.select(model.A, keep), Am)
    for name in Model._PER_COMPONENT:
        v = getattr(model, name)
        add = new[name]
        if v is None:
            continue
        if name == "g" and v.shape[1] != add.shape[1]:
            add = torch.zeros((M, v.shape[1]), device=dev)
        setattr(model, name, torch.cat([v[keep], add.reshape((M,) + tuple(v.shape[1:]))], 0))
    return len(groups)


def init_model(mm, cfg, Ain=None, sn=None):
    """Statistics pass and initial components."""
    pre, ini = cfg["preprocess"], cfg["init"]
    t0 = time.perf_counter()
    sn_given = pre["sn"] if pre["sn"] is not None else sn
    stats = pixel_stats(mm, ini["ssub"], ini["tsub"], pre["noise_range"], pre["noise_method"],
                        pre["max_num_samples_fft"], pre["check_nan"], sn=sn_given)
    dummy = Model(A=None, C=None, b=None, f=None, sn=stats.sn)
    t0 = _tick(dummy, "preprocess", t0, mm.device)
    gSiz = ini["gSiz"]
    A, C, b, f = initialize(
        stats, mm.dims, ini["K"], ini["nb"], method_init=ini["method_init"], gSig=ini["gSig"],
        gSiz=gSiz, nIter=ini["nIter"], rolling_sum=ini["rolling_sum"],
        rolling_length=ini["rolling_length"], kernel=ini["kernel"], maxIter=ini["maxIter"],
        normalize_init=ini["normalize_init"], alpha_snmf=ini["alpha_snmf"],
        max_iter_snmf=ini["max_iter_snmf"], sigma_smooth_snmf=ini["sigma_smooth_snmf"],
        perc_baseline_snmf=ini["perc_baseline_snmf"], Ain=Ain, T=mm.T,
        same_thr=cfg["merge"]["thr"] if cfg["merge"]["do_merge"] else None)
    del stats.Yd
    model = Model(A=A, C=C, b=b, f=f, sn=stats.sn, yy=stats.yy, timings=dummy.timings)
    if pre["compute_g"]:
        model.g_global = global_time_constant(stats, pre)
    _tick(model, "init", t0, mm.device)
    return model


def global_time_constant(stats, pre):
    """``compute_g``: one AR model for all components, from the movie's
    average trace (its noise level used only when ``include_noise``)."""
    from ..deconvolution import estimate_noise, estimate_time_constant

    y = stats.frame_mean[None]
    sn = estimate_noise(y, noise_range=tuple(pre["noise_range"]),
                        noise_method=pre["noise_method"]) if pre["include_noise"] else None
    g = estimate_time_constant(y, p=int(pre["p"]), sn=sn, lags=int(pre["lags"]))
    return torch.as_tensor(g, dtype=torch.float32, device=y.device).reshape(1, -1)


def refine(mm, model, cfg, p=None, log=None):
    """Spatial, temporal, merge, spatial, temporal (CaImAn's fit after init).

    ``log``: a log line per step; by default on the whole field, where each
    step takes minutes on a long movie (a patch's steps are not logged, the
    patches' bar is)."""
    dev = mm.device
    if log is None:
        log = mm.d == int(np.prod(mm.full_dims))
    t0 = time.perf_counter()
    spatial_step(mm, model, cfg)
    t0 = _tick(model, "spatial", t0, dev, log)
    temporal_step(mm, model, cfg, p)
    t0 = _tick(model, "temporal", t0, dev, log)
    if cfg["merge"]["do_merge"]:
        merge_step(model, cfg, p)
        t0 = _tick(model, "merge", t0, dev, log)
    spatial_step(mm, model, cfg)
    t0 = _tick(model, "spatial", t0, dev, log)
    temporal_step(mm, model, cfg, p)
    _tick(model, "temporal", t0, dev, log)
    return model


def fit_fov(mm, cfg, *, Ain=None, model=None, only_init=False, p=None):
    """Fit one field of view.

    Parameters
    ----------
    mm : MovieMatrix
    cfg : dict of parameter groups (plain dicts)
    Ain : (d, K) tensor, optional
        Seeded mode: footprints to start from.
    model : Model, optional
        Start from these components (refit); skips initialisation.
    only_init : bool
        Stop after initialisation (residual traces computed).
    p : int, optional
        AR order to use instead of ``temporal['p']`` (patches: ``p_patch``).

    Returns
    -------
    Model
    """
    if model is None:
        model = init_model(mm, cfg, Ain=Ain)
        if only_init:
            t0 = time.perf_counter()
            model.YrA = compute_residuals(mm, model.A, model.b, model.C, model.f)
            _tick(model, "residuals", t0, mm.device)
            return model
    return refine(mm, model, cfg, p)


def model_to_numpy(model):
    """Host copies of a model's tensors (for Estimates, or across processes)."""
    out = {}
    for fld in fields(Model):
        v = getattr(model, fld.name)
        out[fld.name] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
    return out


def model_from_numpy(d, device):
    """Inverse of :func:`model_to_numpy`."""
    kw = {}
    for fld in fields(Model):
        v = d.get(fld.name)
        kw[fld.name] = torch.as_tensor(np.asarray(v), device=device) \
            if isinstance(v, np.ndarray) else v
    return Model(**kw)
