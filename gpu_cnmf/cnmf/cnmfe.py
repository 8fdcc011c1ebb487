"""CNMF-E: the one-photon fit, on the whole field of view or on patches.

The model (Zhou et al. 2018, eLife) is ``Y = A C + B + E`` with the ring
background ``B = W (Y - A C - b0 1') + b0 1'`` (:mod:`.ring_model`). The fit
returns the components as an :class:`.engine.Model` and the background as a
:class:`.ring_model.RingModel` (``W`` and ``b0``), which
:meth:`gpu_cnmf.cnmf.CNMF._store` turns into ``Estimates`` as for two-photon
CNMF.

Whole field (``rf`` None), :func:`fit_cnmfe_fov`: the movie (or a patch of
it) is read once into a (pixels x T) device tensor; corr-PNR initialisation
(:mod:`.corr_pnr`) finds neurons and a first ring model; then rounds of
spatial update, temporal update (OASIS) and merging run on ``Y - B`` with the
CNMF building blocks of :mod:`.engine`, the ring refitted between rounds.

Patches (``rf``, ``stride``), :func:`fit_cnmfe_patches`, as CaImAn runs
CNMF-E: each patch of side ``2 rf`` (overlapping by ``stride``) runs the
whole-field fit above on its region, read from the movie (memory map) by a
:class:`.products.MovieMatrix` (only initialisation when ``only_init``, AR
order ``p_patch``); patches are mapped by :func:`.dispatch.map_patches`.
Components are placed in the field of view and duplicates in overlaps
deleted (``del_duplicates``) or merged (:func:`.patches.place_patches`,
:func:`.patches.resolve_duplicates`; pixels within ``border_pix`` of the
edge cleared). With ``nb == 0`` (``low_rank_background=None``, CaImAn's
exact ring model) each pixel keeps the ring weights of the patch where it
sits most centrally, so ``W`` covers the field, and rounds of spatial and
temporal updates follow on ``Y - B`` (:func:`refine_on_ring`): on a memory
map in tiles, each read once (:mod:`.ring_tiles`), else streamed frame
chunk by frame chunk (:class:`.ring_movie.RingCorrectedMovie`); the
whole-field background is never a pixels x T array. A refit runs more
such rounds, and ``CNMF.fit(whole_field=False)`` leaves the fit's rounds to
it, so that both run in one read of the movie. With ``nb > 0`` each patch
returns ``nb_patch`` low-rank background components, kept local or
compressed to ``nb`` (``low_rank_background``), and the traces are refitted
on ``Y`` with them.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import ParameterError
from ..progress import tick
from . import footprints as fp
from .corr_pnr import check_parameters, initialize_corr_pnr
from .dispatch import map_patches, movie_handle
from .engine import Model, merge_step, model_from_numpy, model_to_numpy, spatial_step, \
    temporal_step
from .patches import patch_config, patch_regions, place_patches, resolve_duplicates, \
    very_bad_components
from .products import MovieMatrix, Region, as_pixel_matrix
from .ring_model import RingModel, fit_ring, ring_radius, subtract_background
from .ring_movie import RingCorrectedMovie
from .ring_tiles import refine_on_ring_tiled, round_plan, run_rounds
from .temporal import compute_residuals

# Rounds of (spatial, temporal, merge) after initialisation.
N_ROUNDS = 2
# copies of its own movie one CNMF-E patch holds at its peak
_PATCH_COPIES = 7


# --------------------------------------------------------------------------
# one field of view

def _geometry(cfg):
    """Validated ``(gSig, gSiz, ring radius, ssub_B)`` of a CNMF-E config."""
    ini = cfg["init"]
    gSig, gSiz = check_parameters(ini["gSig"], ini["gSiz"], ini["min_corr"], ini["min_pnr"],
                                  ini["ring_size_factor"], ini["ssub_B"], ini["init_iter"],
                                  ini["seed_method"], ini["nb"])
    return gSig, gSiz, ring_radius(gSiz, ini["ring_size_factor"]), int(round(float(ini["ssub_B"])))


def fit_cnmfe_fov(mm, cfg, device, Ain=None, only_init=False, p=None, n_rounds=N_ROUNDS):
    """CNMF-E on one field of view (the whole movie or one patch), held on
    the device as one (pixels x T) tensor.

    Parameters
    ----------
    mm : MovieMatrix
        The movie or patch to fit.
    cfg : dict of parameter groups (:func:`.config.fit_config`)
        ``init``: gSig, gSiz, min_corr, min_pnr, ring_size_factor, ssub_B,
        init_iter, center_psf, seed_method, nb, K; ``spatial``,
        ``temporal``, ``merge`` as in CNMF; ``patch.border_pix``.
    device : torch.device
    Ain : (d, K) tensor, optional
        Footprints to start from instead of the corr-PNR search.
    only_init : bool
        Stop after initialisation (residual traces computed).
    p : int, optional
        AR order instead of ``temporal.p`` (patches: ``p_patch``).
    n_rounds : int
        Rounds of (spatial, temporal, merge); the last skips merging.

    Returns
    -------
    model : Model
        ``b``, ``f`` empty unless ``nb > 0`` (a low-rank fit of ``B``).
    ring : RingModel (with ``b0``)
    extra : dict
        ``Cn``, ``pnr``: the seed images (None when seeded); ``Ymean``: the
        temporal mean of every pixel.
    """
    from ..deconvolution import estimate_noise
    from .initialization import hals_refine

    t_all = time.perf_counter()
    timings = {}
    ini, pre = cfg["init"], cfg["preprocess"]
    gSig, gSiz, radius, ssub_B = _geometry(cfg)
    nb = int(ini["nb"])
    p = int(cfg["temporal"]["p"]) if p is None else int(p)
    dims, T = mm.dims, mm.T
    t0 = time.perf_counter()
    Y = mm.frames(0, T)
    d = Y.shape[0]
    Ymm = MovieMatrix(Y, device, dims=dims, memory_fact=mm.memory_fact)
    sn = estimate_noise(Y, noise_range=tuple(pre["noise_range"]), noise_method=pre["noise_method"],
                        max_num_samples_fft=pre["max_num_samples_fft"])
    sn = torch.as_tensor(sn, device=device, dtype=torch.float32)
    t0 = tick(timings, "preprocess", t0)
    empty_b, empty_f = Y.new_zeros((d, 0)), Y.new_zeros((0, T))
    if Ain is None:
        A, C, ring, extra = initialize_corr_pnr(
            Y, gSig, gSiz, ini["min_corr"], ini["min_pnr"], ini["ring_size_factor"], ssub_B,
            ini["init_iter"], center_psf=ini["center_psf"], seed_method=ini["seed_method"], nb=0,
            device=device, dims=dims, K=ini["K"], noise_range=pre["noise_range"],
            noise_method=pre["noise_method"], border_pix=cfg["patch"]["border_pix"])
    else:
        A = Ain
        if A.shape[0] != d:
            raise ParameterError(f"Ain: expected {d} rows (pixels, Fortran order), got {tuple(A.shape)}")
        # the ring sees around each neuron, not the neuron itself, so a first
        # background can be fitted with no traces at all; traces follow on Y - B
        C = Y.new_zeros((A.shape[1], T))
        for _ in range(max(1, int(ini["init_iter"]))):
            ring = fit_ring(Y, A, C, dims, radius, ssub_B)
            _, C, _, _ = hals_refine(subtract_background(ring, Y, A, C), dims, A, C, empty_b,
                                     empty_f, maxIter=5, update_A=False)
        extra = dict(Cn=None, pnr=None)
    t0 = tick(timings, "init", t0)
    extra["Ymean"] = Y.mean(1)
    model = Model(A=A, C=C, b=empty_b, f=empty_f, sn=sn)
    if only_init:
        model.YrA = compute_residuals(RingCorrectedMovie(Ymm, A, C, ring), A, empty_b, C, empty_f)
        tick(timings, "residuals", t0)
    else:
        for it in range(max(1, int(n_rounds))):
            if it:       # the first round uses the initialisation's ring
                ring = fit_ring(Y, model.A, model.C, dims, radius, ssub_B)
                t0 = tick(timings, "background", t0)
            mc = RingCorrectedMovie(Ymm, model.A, model.C, ring)
            spatial_step(mc, model, cfg)
            t0 = tick(timings, "spatial", t0)
            temporal_step(mc, model, cfg, p)
            t0 = tick(timings, "temporal", t0)
            mc.release()
            if cfg["merge"]["do_merge"] and it < int(n_rounds) - 1:
                merge_step(model, cfg, p)
                t0 = tick(timings, "merge", t0)
        # the final background for the final components (what W and b0 describe)
        ring = fit_ring(Y, model.A, model.C, dims, radius, ssub_B)
        t0 = tick(timings, "background", t0)
    if nb > 0:
        from .background import nmf_hals
        B = Y - subtract_background(ring, Y, model.A, model.C)
        model.b, model.f = nmf_hals(B.clamp_min(0), nb)
        del B
        tick(timings, "background", t0)
    model.timings = timings
    model.timings["total"] = time.perf_counter() - t_all
    return model, ring, extra


# --------------------------------------------------------------------------
# patches

def _cnmfe_patch(task):
    """One patch: CNMF-E on its region, results as host arrays."""
    handle, region, pcfg, device = task
    device = torch.device(device)
    src, full_dims = handle.open()
    mm = MovieMatrix(src, device, region=region, dims=full_dims)
    P = pcfg["patch"]
    model, ring, extra = fit_cnmfe_fov(mm, pcfg, device, only_init=bool(P["only_init"]),
                                       p=int(P["p_patch"]))
    if P["remove_very_bad_comps"] and model.YrA is not None and model.K:
        n_samples = np.ceil(pcfg["data"]["fr"] * pcfg["data"]["decay_time"])
        model.select(~very_bad_components(model, pcfg["quality"]["SNR_lowest"], n_samples))
    return dict(model=model_to_numpy(model), weights=ring.weights.cpu().numpy(),
                b0=ring.b0.cpu().numpy(), Ymean=extra["Ymean"].cpu().numpy(),
                offsets=ring.offsets, radius=ring.radius, Cn=extra.get("Cn"),
                pnr=extra.get("pnr"))


def cnmfe_regions(dims, rf, stride, ssub_B):
    """:func:`.patches.patch_regions`, each start moved down to a multiple of
    ``ssub_B`` so that every patch's background grid is the whole field's."""
    s = int(ssub_B)
    return [Region(r.y0 - r.y0 % s, r.y1, r.x0 - r.x0 % s, r.x1)
            for r in patch_regions(dims, rf, stride)]


def _centrality(region, dims, shape):
    """Distance of each cell of a patch's (h, w) grid to the patch's edges
    inside the field of view (a field edge is no patch edge,
    every patch sees the same there)."""
    h, w = shape
    yy = np.arange(h, dtype=float)[:, None]
    xx = np.arange(w, dtype=float)[None, :]
    inf = np.full((h, w), np.inf)
    top = yy + 0 * xx if region.y0 > 0 else inf
    bottom = (h - 1 - yy) + 0 * xx if region.y1 < dims[0] else inf
    left = xx + 0 * yy if region.x0 > 0 else inf
    right = (w - 1 - xx) + 0 * yy if region.x1 < dims[1] else inf
    return np.minimum(np.minimum(top, bottom), np.minimum(left, right))


def combine_rings(regions, parts, dims, ssub_B, device):
    """One ring model for the field of view from the patches' models: each
    cell of the background grid takes the weights, and each pixel the
    ``b0``, of the patch where it sits most centrally.

    Returns
    -------
    ring : RingModel
    images : dict
        ``Cn``, ``pnr`` placed the same way, ``Ymean``: the pixel means
        (d,), and ``owner``: (d1, d2) index of the patch each pixel belongs to.
    """
    d1, d2 = dims
    s = int(ssub_B)
    H, W = -(-d1 // s), -(-d2 // s)
    n = parts[0]["weights"].shape[2]
    weights = np.zeros((W, H, n), np.float32)
    best = np.full((H, W), -1.0)
    b0 = np.zeros((d1, d2), np.float32)
    Ymean = np.zeros((d1, d2), np.float32)
    best0 = np.full((d1, d2), -1.0)
    imgs = {k: np.zeros((d1, d2), np.float32) for k in ("Cn", "pnr")}
    owner = np.zeros((d1, d2), np.int64)
    for i, (r, part) in enumerate(zip(regions, parts)):
        w2, h2 = part["weights"].shape[:2]
        gy, gx = r.y0 // s, r.x0 // s
        c = _centrality(r, dims, (h2, w2))
        sub = best[gy:gy + h2, gx:gx + w2]
        better = c > sub
        sub[better] = c[better]
        wsub = weights[gx:gx + w2, gy:gy + h2]
        wsub[better.T] = part["weights"][better.T]
        h, w = r.dims
        c0 = _centrality(r, dims, (h, w))
        sub0 = best0[r.y0:r.y1, r.x0:r.x1]
        better0 = c0 > sub0
        sub0[better0] = c0[better0]
        owner[r.y0:r.y1, r.x0:r.x1][better0] = i
        b0[r.y0:r.y1, r.x0:r.x1][better0] = part["b0"].reshape(w, h).T[better0]
        Ymean[r.y0:r.y1, r.x0:r.x1][better0] = part["Ymean"].reshape(w, h).T[better0]
        for k in imgs:
            if part.get(k) is not None:
                imgs[k][r.y0:r.y1, r.x0:r.x1][better0] = part[k][better0]
    ring = RingModel(torch.as_tensor(weights, device=device), parts[0]["offsets"], tuple(dims),
                     s, int(parts[0]["radius"]),
                     torch.as_tensor(b0.T.reshape(-1), device=device))
    imgs["owner"] = owner
    imgs["Ymean"] = torch.as_tensor(Ymean.T.reshape(-1), device=device)
    return ring, imgs


def owned_components(A, patch_id, owner, dims):
    """Components whose centre lies where their own patch is the most
    central one (a neuron cut by a patch's edge is kept from the patch that
    sees it whole; the cut copy is a duplicate).

    Returns
    -------
    (K,) bool tensor
    """
    d1, d2 = dims
    if A.shape[1] == 0:
        return torch.zeros(0, dtype=torch.bool, device=A.device)
    ci, cj = fp.centres(A, dims)
    ci = ci.round().long().clamp(0, d1 - 1).cpu().numpy()
    cj = cj.round().long().clamp(0, d2 - 1).cpu().numpy()
    own = torch.as_tensor(owner[ci, cj], device=A.device)
    return own == patch_id.long()


def _pixel_means(mm):
    """Temporal mean of every pixel (one pass)."""
    out = torch.empty(mm.d, dtype=torch.float32, device=mm.device)
    for p0, p1, Yb in mm.blocks():
        out[p0:p1] = Yb.mean(1)
    return out


def refine_on_ring(mm, model, ring, cfg, timings, rounds, Ymean=None):
    """The rounds ``rounds`` (:func:`.ring_tiles.round_plan`) on ``Y - B``,
    the ring weights ``W`` kept and ``b0`` (the mean of ``Y - A C``)
    updated with the components: after patches, and in a refit.

    On a memory-mapped movie in tiles, the movie read about once
    (:mod:`.ring_tiles`); otherwise streamed frame chunk by frame chunk, a
    pass per update (``Ymean``: the pixel means when known, else a pass
    computes them).

    Returns
    -------
    model : Model
        Refined (with ``samples`` for evaluation when tiles ran).
    ring : RingModel
        With ``b0`` for the refined components.
    """
    if model.K and mm.on_disk and mm.d == int(np.prod(mm.full_dims)):
        out = refine_on_ring_tiled(mm, model, ring, cfg, rounds, timings)
        if out is not None:
            return out, ring
    if Ymean is None:
        Ymean = _pixel_means(mm)

    def movie_for(m):
        ring.b0 = Ymean - fp.matmul(m.A, m.C.mean(1))
        return RingCorrectedMovie(mm, m.A, m.C, ring)

    run_rounds(movie_for, model, cfg, rounds, timings, log="CNMF-E on the whole field")
    ring.b0 = Ymean - fp.matmul(model.A, model.C.mean(1))
    return model, ring


def fit_cnmfe_patches(images, mm, cfg, device, n_processes=1, dview=None, refine=True):
    """CNMF-E on overlapping patches, combined (see the module docstring).

    Parameters
    ----------
    images : (T, d1, d2) array or memory map (what ``CNMF.fit`` was given)
    mm : MovieMatrix
        The whole movie.
    cfg : dict of parameter groups
    device : torch.device
    n_processes : int
    dview : optional
        Passed to :func:`.dispatch.map_patches`.
    refine : bool
        End with the rounds on the whole field's ring background. False
        (exact ring model only) leaves them to a refit, which runs them
        with its own: ``extra['deferred']`` lists them.

    Returns
    -------
    model : Model, ring : RingModel, extra : dict (Cn, pnr, Ymean: the pixel
    means, from the patches' reads; deferred)
    """
    t_all = time.perf_counter()
    P = cfg["patch"]
    _, _, _, ssub_B = _geometry(cfg)
    dims, T = mm.dims, mm.T
    regions = cnmfe_regions(dims, P["rf"], P["stride"], ssub_B)
    pcfg = patch_config(cfg)
    nb = int(cfg["init"]["nb"])
    # nb <= 0: the exact ring model in every patch (nb_patch only counts
    # with a low-rank background, as in CaImAn)
    pcfg["init"]["nb"] = int(P["nb_patch"]) if nb > 0 else 0
    pcfg["patch"]["border_pix"] = 0        # cleared once, on the whole field
    if device.type != "cpu":
        n_processes = 1        # on a GPU each patch already fills the device
    handle = movie_handle(images, by_path=dview is not None)
    # patches on a cluster run on the workers' own device
    dev = device.type if dview is not None else str(device)
    tasks = [(handle, r, pcfg, dev) for r in regions]
    try:
        # a patch holds its movie about seven times at its peak (the movie,
        # Y - B, the filtered copy and the seed search's work; measured on
        # 480 x 480 x 4,000 with rf 48: 1 GB a patch)
        patch_px = max(r.dims[0] * r.dims[1] for r in regions)
        parts = map_patches(_cnmfe_patch, tasks, n_processes=n_processes, dview=dview,
                            desc="CNMF-E patches", task_bytes=_PATCH_COPIES * 4 * patch_px * T)
    finally:
        handle.cleanup()
    t0 = time.perf_counter()
    timings = {"patches": t0 - t_all}
    models = [model_from_numpy(pt["model"], device) for pt in parts]
    model, b_mask, patch_id, centrality = place_patches(regions, models, dims, T, device,
                                                        int(P["border_pix"]))
    ring, imgs = combine_rings(regions, parts, dims, ssub_B, device)
    del parts, models
    if nb > 0:
        from .background import compress_background
        from .spatial import background_and_AtY
        if P["low_rank_background"]:
            model.b, model.f = compress_background(model.b, model.f, nb)
        else:
            model.b_mask = b_mask
    else:
        model.b, model.f = model.b[:, :0], model.f[:0]
    if P["del_duplicates"]:
        keep = owned_components(model.A, patch_id, imgs.pop("owner"), dims)
        model.select(keep)
        patch_id, centrality = patch_id[keep], centrality[keep]
    imgs.pop("owner", None)
    Ymean = imgs["Ymean"]
    if mm.exclude is not None:       # read as zero on the whole field
        Ymean = imgs["Ymean"] = Ymean * mm.exclude
    resolve_duplicates(model, patch_id, centrality, cfg)
    t0 = tick(timings, "combine", t0)
    if nb > 0:
        model.b, AtY = background_and_AtY(mm, model.A, model.b, model.C, model.f,
                                          model.b_mask)
        temporal_step(mm, model, cfg, AtY=AtY)
    else:
        rounds = round_plan(N_ROUNDS, spatial=not P["skip_refinement"])
        if refine:
            model, ring = refine_on_ring(mm, model, ring, cfg, timings, rounds, Ymean=Ymean)
        else:
            ring.b0 = Ymean - fp.matmul(model.A, model.C.mean(1))
            imgs["deferred"] = rounds
    model.timings = timings
    model.timings["total"] = time.perf_counter() - t_all
    return model, ring, imgs


def fit_cnmfe(images, cfg, device, Ain=None, n_processes=1, dview=None, exclude=None,
              start=None, rounds=None, refine=True):
    """CNMF-E of a movie: on patches when ``patch.rf`` is set (and no
    footprints are given), else on the whole field of view; or, from a
    previous fit (``start``), rounds streamed on its ring background.

    Parameters
    ----------
    images : (T, d1, d2) array / memory map (a Fortran view of a pixels x T
        memory map is read in place)
    cfg : dict of parameter groups (:func:`.config.fit_config`)
    device : torch.device
        Resolved once by the caller.
    Ain : (d, K) array, sparse or tensor, optional
        Footprints to start from.
    n_processes, dview
        Patch workers (:func:`.dispatch.map_patches`).
    exclude : array of int, optional
        Pixels read as zero.
    start : (Model, RingModel), optional
        A fit to refine (refit): :func:`refine_on_ring`, never the movie
        whole in memory.
    rounds : list of (spatial, merge), optional
        With ``start``: the rounds to run (default ``round_plan(N_ROUNDS)``).
    refine : bool
        On patches: :func:`fit_cnmfe_patches`'s ``refine``.

    Returns
    -------
    model : Model, ring : RingModel, extra : dict (Cn, pnr, Ymean: the
    pixel means, when they were at hand)
    """
    src, layout, dims, T = as_pixel_matrix(images)
    sp_, P = cfg["spatial"], cfg["patch"]
    block = int(sp_["block_size"]) * int(sp_["num_blocks_per_run"])
    mm = MovieMatrix(src, device, dims=dims if layout == "pixels" else None, block_pixels=block,
                     memory_fact=float(P["memory_fact"]), exclude=exclude)
    _geometry(cfg)       # bad parameters fail before any work
    if Ain is not None:
        A0 = Ain.toarray() if sp.issparse(Ain) else Ain
        Ain = torch.as_tensor(np.asarray(A0, dtype=np.float32) if not isinstance(A0, torch.Tensor)
                              else A0, dtype=torch.float32, device=device)
    try:
        if start is not None:
            model, ring = start
            timings = {}
            t0 = time.perf_counter()
            model, ring = refine_on_ring(mm, model, ring, cfg, timings,
                                         round_plan(N_ROUNDS) if rounds is None else rounds)
            timings["total"] = time.perf_counter() - t0
            model.timings = timings
            return model, ring, {}
        if P["rf"] is not None and Ain is None:
            return fit_cnmfe_patches(images, mm, cfg, device, n_processes, dview, refine)
        return fit_cnmfe_fov(mm, cfg, device, Ain=Ain)
    finally:
        mm.release()
