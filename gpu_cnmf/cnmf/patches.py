"""CNMF on overlapping patches, combined into one field of view.

The field of view is cut into squares of side ``2 * rf`` that overlap by
``stride`` pixels. Each patch is fitted on its own (``K`` components and
``nb_patch`` local background components, AR order ``p_patch``,
downsampling ``p_ssub``/``p_tsub``, only initialisation when ``only_init``),
``n_processes`` at a time on the CPU (threads sharing the cores), one after
the other on a GPU, where each patch already fills the device with batched
work, or on the workers of a Dask cluster (``dview``); see
:mod:`.dispatch`, the one place patches are mapped.
Components from all patches are then placed in the full field of view
(pixels within ``border_pix`` of the edge cleared), neurons found twice in
an overlap are merged (or, with ``del_duplicates``, the copy from the patch
where it sits less centrally is deleted), patch backgrounds are compressed
to ``nb`` global components when ``low_rank_background`` (kept as local,
patch-supported components otherwise), and the traces are updated once on
the whole movie with the full AR order.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ParameterError
from .background import compress_background
from .dispatch import MovieHandle, map_patches, movie_handle
from . import footprints as fp
from .engine import Model, fit_fov, merge_step, model_from_numpy, model_to_numpy, temporal_step
from .merging import find_copies
from .products import MovieMatrix, Region
from .spatial import background_and_AtY
from .temporal import residual_traces


def _pair(v, name):
    if np.isscalar(v):
        return int(v), int(v)
    v = list(v)
    if len(v) != 2:
        raise ParameterError(f"{name}: expected an int or two ints, got {v!r}")
    return int(v[0]), int(v[1])


def patch_regions(dims, rf, stride=None):
    """Rectangles of side ``2 * rf`` overlapping by ``stride`` covering ``dims``.

    Parameters
    ----------
    dims : (d1, d2)
    rf : int or (int, int)
        Half-size of a patch.
    stride : int or (int, int), optional
        Overlap in pixels; by default half of ``rf``.

    Returns
    -------
    list of Region
    """
    rf = _pair(rf, "rf")
    if min(rf) < 1:
        raise ParameterError(f"rf: expected a positive half-size, got {rf}")
    stride = tuple(max(1, r // 2) for r in rf) if stride is None else _pair(stride, "stride")
    starts = []
    for dim, r, s in zip(dims, rf, stride):
        size = min(2 * r, dim)
        if s >= size:
            raise ParameterError(f"stride: overlap {s} must be smaller than the patch side {size}")
        step = size - s
        st = list(range(0, max(dim - size, 0) + 1, step))
        if st[-1] + size < dim:
            st.append(dim - size)
        starts.append([(a, a + size) for a in st])
    return [Region(y0, y1, x0, x1) for (y0, y1) in starts[0] for (x0, x1) in starts[1]]


def patch_config(cfg):
    """Parameters used inside a patch (CaImAn's patch substitutions)."""
    pc = copy.deepcopy(cfg)
    P = cfg["patch"]
    pc["init"]["nb"] = int(P["nb_patch"])
    pc["init"]["ssub"] = P["p_ssub"]
    pc["init"]["tsub"] = P["p_tsub"]
    pc["preprocess"]["sn"] = None
    return pc


def very_bad_components(model, snr_lowest, n_samples):
    """Components whose trace is indistinguishable from noise.

    The raw trace ``C + YrA`` (median removed) is scored by the mean of
    its ``n_samples`` largest values over the noise std of ``YrA``
    (``z``); the chance that pure Gaussian noise of that length reaches
    ``z`` is turned into an equivalent one-sided normal SNR
    (``-Phi^{-1}(1 - Phi(z)^(T / n_samples))``), compared with
    ``snr_lowest`` like CaImAn's ``SNR_lowest``. Components with an empty
    trace are bad too.
    """
    from scipy.stats import norm

    K = model.K
    if K == 0:
        return torch.zeros(0, dtype=torch.bool, device=model.A.device)
    raw = model.C + (model.YrA if model.YrA is not None else 0)
    raw = raw - raw.median(1, keepdim=True).values
    res = model.YrA if model.YrA is not None else raw
    noise = 1.4826 * (res - res.median(1, keepdim=True).values).abs().median(1).values
    T = raw.shape[1]
    n = max(1, min(int(n_samples), T))
    z = (torch.topk(raw, n, dim=1).values.mean(1) / noise.clamp_min(1e-12)).cpu().numpy()
    # mean of n samples of noise has std 1/sqrt(n); T/n independent windows
    zz = z * np.sqrt(n)
    log_cdf = norm.logcdf(zz) * (T / n)
    p_val = -np.expm1(log_cdf)
    snr = -norm.ppf(np.clip(p_val, 1e-300, 1.0))
    bad = torch.as_tensor(snr < snr_lowest, device=model.A.device)
    return bad | (model.C.amax(1) <= 0)


def _fit_one(mm, cfg, pcfg):
    P = cfg["patch"]
    model = fit_fov(mm, pcfg, only_init=bool(P["only_init"]), p=int(P["p_patch"]))
    if P["remove_very_bad_comps"] and model.YrA is not None:
        n_samples = np.ceil(cfg["data"]["fr"] * cfg["data"]["decay_time"])
        bad = very_bad_components(model, cfg["quality"]["SNR_lowest"], n_samples)
        model.select(~bad)
    return model


@dataclass(frozen=True)
class PatchTask:
    """One patch's work, small enough to send to another process: the movie
    by reference, the patch's rectangle and the configuration."""

    movie: MovieHandle
    region: Region
    cfg: dict
    pcfg: dict
    device: str
    block: int


def _worker(task):
    """Fit one patch (see :class:`PatchTask`); host arrays of its model."""
    src, dims = task.movie.open()
    P = task.cfg["patch"]
    r, device = task.region, torch.device(task.device)
    kw = dict(block_pixels=task.block, memory_fact=P["memory_fact"])
    if P["in_memory"]:
        sub = MovieMatrix(src, "cpu", region=r, dims=dims)
        arr = np.ascontiguousarray(sub._host_block(0, r.dims[1]), dtype=np.float32)
        mm = MovieMatrix(arr, device, dims=r.dims, **kw)
    else:
        mm = MovieMatrix(src, device, region=r, dims=dims, **kw)
    model = _fit_one(mm, task.cfg, task.pcfg)
    mm.release()
    return model_to_numpy(model)


def _patch_models(images, regions, cfg, device, n_processes, dview=None):
    """Fit every patch via :func:`~.dispatch.map_patches`; models on ``device``."""
    sp = cfg["spatial"]
    pcfg = patch_config(cfg)
    block = int(sp["block_size"]) * int(sp["num_blocks_per_run"])
    if device.type != "cpu":
        n_processes = 1
    handle = movie_handle(images, by_path=dview is not None)
    # patches on a cluster run on the workers' own device
    dev = device.type if dview is not None else str(device)
    tasks = [PatchTask(handle, r, cfg, pcfg, dev, block) for r in regions]
    try:
        out = map_patches(_worker, tasks, n_processes=n_processes, dview=dview,
                          desc="CNMF patches")
    finally:
        handle.cleanup()
    return [model_from_numpy(m, device) for m in out]


def _delete_duplicates(model, patch_id, centrality, thr=0.5):
    """Drop, among footprints from different patches overlapping by more than
    ``thr`` of the smaller one, the copy that sits less centrally."""
    inter = fp.overlap_counts(model.A)
    size = torch.diagonal(inter)
    ratio = inter / torch.minimum(size[:, None], size[None, :]).clamp_min(1)
    dup = (ratio > thr) & (patch_id[:, None] != patch_id[None, :])
    dup = torch.triu(dup, 1)
    i, j = torch.nonzero(dup, as_tuple=True)
    loser = torch.where(centrality[i] >= centrality[j], j, i)
    keep = torch.ones(model.K, dtype=torch.bool, device=model.C.device)
    keep[loser] = False
    return keep


def place_patches(regions, models, dims, T, device, border_pix=0):
    """Put each patch's components and background in the whole field of view.

    Parameters
    ----------
    regions : list of Region
    models : list of Model
        One per region, on ``device``, in the region's own pixel order.
    dims : (d1, d2)
    T : int
    device : torch.device
    border_pix : int
        Footprint pixels within this many pixels of the edge are cleared.

    Returns
    -------
    model : Model
        ``A`` (d, K, sparse), ``C``, ``YrA``, ``sn``, and the patch backgrounds as
        ``b`` (d, sum nb_patch) and ``f``; components left empty dropped.
    b_mask : (d, sum nb_patch) bool tensor
        Each background component's patch.
    patch_id, centrality : (K,) tensors
        The patch of each component, and its centre's distance to that
        patch's edge (for :func:`resolve_duplicates`).
    """
    d1, d2 = dims
    d = d1 * d2
    Ks = [m.K for m in models]
    nbs = [m.b.shape[1] for m in models]
    Ktot, NB = int(sum(Ks)), int(sum(nbs))
    pix, comp, val = [], [], []
    B = torch.zeros((d, NB), device=device)
    Bmask = torch.zeros((d, NB), dtype=torch.bool, device=device)
    sn = torch.zeros(d, device=device)
    C = torch.cat([m.C for m in models], 0) if Ktot else torch.zeros((0, T), device=device)
    YrA = torch.cat([m.YrA for m in models], 0) if Ktot else torch.zeros((0, T), device=device)
    Fb = torch.cat([m.f for m in models], 0)
    patch_id = torch.cat([torch.full((k,), i, device=device) for i, k in enumerate(Ks)]) \
        if Ktot else torch.zeros(0, device=device)
    centrality = torch.zeros(Ktot, device=device)
    ok, ob = 0, 0
    for r, m in zip(regions, models):
        idx = torch.as_tensor(r.pixel_index(d1), device=device)
        p_, k_ = torch.nonzero(m.A, as_tuple=True)
        pix.append(idx[p_])
        comp.append(k_ + ok)
        val.append(m.A[p_, k_])
        B[idx, ob:ob + m.b.shape[1]] = m.b
        Bmask[idx, ob:ob + m.b.shape[1]] = True
        sn[idx] = m.sn
        if m.K:
            h, w = r.dims
            ci, cj = fp.centres(m.A, (h, w))
            centrality[ok:ok + m.K] = torch.minimum(torch.minimum(ci, h - 1 - ci),
                                                    torch.minimum(cj, w - 1 - cj))
        ok += m.K
        ob += m.b.shape[1]
    bp = int(border_pix)
    if bp > 0:
        edge = torch.zeros((d1, d2), dtype=torch.bool, device=device)
        edge[:bp], edge[-bp:], edge[:, :bp], edge[:, -bp:] = True, True, True, True
        on_edge = edge.T.reshape(-1)
    A = fp.coo(torch.stack([torch.cat(pix), torch.cat(comp)]), torch.cat(val), (d, Ktot)) \
        if Ktot else fp.to_sparse(torch.zeros((d, 0), device=device))
    if bp > 0:
        A = fp.zero_pixels(A, on_edge)
    model = Model(A=A, C=C, b=B, f=Fb, sn=sn, YrA=YrA)
    keep = fp.nonempty(A) & (C.amax(1) > 0) if Ktot else torch.zeros(0, dtype=torch.bool)
    patch_id, centrality = patch_id[keep], centrality[keep]
    model.select(keep)
    return model, Bmask, patch_id, centrality


def resolve_duplicates(model, patch_id, centrality, cfg):
    """Neurons found by two patches: with ``del_duplicates`` the less central
    copy is deleted, otherwise the copies of each neuron (most of one's core
    within the other's, traces correlated at ``merge_thr``:
    :func:`.merging.find_copies`) are merged, then touching correlated
    components once more (:func:`.engine.merge_step`, with ``p_patch``).

    Two steps, once each: the patches' components have not yet been
    refined together, so neighbours cut by a patch's edge still carry some
    of each other's activity. Merging every overlapping correlated group
    round after round (until nothing merged) chained such neighbours, and
    a merged copy with its neighbour, into one two-lobed footprint that the
    later updates cannot split (hard 2p movies, 96x96x400, seeds 0-5:
    recall 0.81). Copies first, so that a neuron found by several patches
    is one component before it is compared with its neighbours."""
    P = cfg["patch"]
    if P["del_duplicates"]:
        model.select(_delete_duplicates(model, patch_id, centrality))
    elif cfg["merge"]["do_merge"]:
        p = int(P["p_patch"])
        merge_step(model, cfg, p=p, groups=find_copies(model.A, model.C, cfg["merge"]["thr"]))
        merge_step(model, cfg, p=p)
    return model


def fit_patches(images, cfg, device, n_processes=1, mm_full=None, dview=None,
                whole_field=True):
    """Patch-wise CNMF of the whole movie; see the module docstring.

    Parameters
    ----------
    images : (T, d1, d2) array or memmap
    cfg : dict of parameter groups
    device : torch.device
    n_processes : int
    mm_full : MovieMatrix, optional
        The full movie on ``device`` (made here when not given).
    dview : dask.distributed.Client or pool, optional
        Where the patches run (see :func:`~.dispatch.map_patches`).
    whole_field : bool
        End with the background refitted and the traces updated on the
        whole movie (one pass); False keeps the patches' traces and
        residuals (a refit follows).

    Returns
    -------
    Model on the whole field of view.
    """
    P = cfg["patch"]
    mm = mm_full if mm_full is not None else MovieMatrix(images, device)
    d1, d2 = mm.dims
    T = mm.T
    regions = patch_regions((d1, d2), P["rf"], P["stride"])
    models = _patch_models(images, regions, cfg, device, n_processes, dview=dview)
    model, Bmask, patch_id, centrality = place_patches(regions, models, (d1, d2), T, device,
                                                       int(P["border_pix"]))
    B, Fb = model.b, model.f
    nb = int(cfg["init"]["nb"])
    if P["low_rank_background"]:
        model.b, model.f = compress_background(B, Fb, nb)
    else:
        model.b_mask = Bmask
    resolve_duplicates(model, patch_id, centrality, cfg)
    if not whole_field:
        model.timings = {}
        return model
    # the background refitted to the whole movie and the projection the
    # traces need, in one pass
    model.b, AtY = background_and_AtY(mm, model.A, model.b, model.C, model.f, model.b_mask)
    if P["skip_refinement"]:
        model.YrA = residual_traces(AtY, fp.gram(model.A, model.b),
                                    torch.cat([model.C, model.f], 0), model.K)
    else:
        temporal_step(mm, model, cfg, AtY=AtY)
    model.timings = {}
    return model
