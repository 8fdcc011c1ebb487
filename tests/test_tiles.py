"""The refit in tiles (gpu_cnmf.cnmf.tiles) and CNMF-E's rounds in tiles
(gpu_cnmf.cnmf.ring_tiles): the plan covers the field and each component's
reach, the movie is read about once, and the result is as accurate as on
the whole field."""
import copy

import numpy as np
import pytest
import torch

from gpu_cnmf import backend
from gpu_cnmf.cnmf import footprints as fp
from gpu_cnmf.cnmf import tiles
from gpu_cnmf.cnmf.engine import Model

SPATIAL = {"method_exp": "dilate", "dist": 3.0, "expandCore": None}


def _blobs(dims, K, seed=0, r=3):
    rng = np.random.default_rng(seed)
    d1, d2 = dims
    yy, xx = np.mgrid[:d1, :d2]
    cols = []
    for _ in range(K):
        cy, cx = rng.uniform(0, d1), rng.uniform(0, d2)
        img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))
        img[img < 0.1] = 0
        cols.append(img.ravel(order="F"))
    return fp.to_sparse(torch.tensor(np.stack(cols, 1), dtype=torch.float32))


def test_plan_covers_the_field_and_every_components_reach():
    dims = (60, 80)
    A = _blobs(dims, 40)
    plan = tiles.plan_tiles(A, dims, 1500, SPATIAL)
    assert plan is not None and len(plan) > 1
    owners = torch.stack([t.own for t in plan]).sum(0)
    assert torch.equal(owners, torch.ones(A.shape[1], dtype=owners.dtype))
    cover = np.zeros(dims, int)
    box = tiles.reach(A, dims, SPATIAL).numpy()
    for t in plan:
        c, r = t.core, t.region
        cover[c.y0:c.y1, c.x0:c.x1] += 1
        assert r.dims[0] * r.dims[1] <= 1500
        assert r.y0 <= c.y0 and r.x0 <= c.x0 and r.y1 >= c.y1 and r.x1 >= c.x1
        for y0, y1, x0, x1 in box[t.own.numpy()]:
            assert r.y0 <= y0 and y1 <= r.y1 and r.x0 <= x0 and x1 <= r.x1
    assert (cover == 1).all()
    # the reach holds each footprint grown by two dilations (CaImAn's
    # default: the city-block ball of radius 2, so 4 pixels in all)
    pix, comp, _ = fp.entries(A)
    y, x = (pix % dims[0]).numpy(), (pix // dims[0]).numpy()
    comp = comp.numpy()
    assert (box[comp, 0] <= np.maximum(y - 4, 0)).all()
    assert (box[comp, 1] >= np.minimum(y + 5, dims[0])).all()
    assert (box[comp, 2] <= np.maximum(x - 4, 0)).all()
    assert (box[comp, 3] >= np.minimum(x + 5, dims[1])).all()
    # no tiling reads the field fewer than four times: None (the refit streams)
    assert tiles.plan_tiles(A, dims, 30, SPATIAL) is None


def test_tile_keeps_its_own_results_and_the_merges_that_took_one():
    own = torch.tensor([True, True, False, False, False, False, False, False])
    local = Model(A=fp.to_sparse(torch.zeros((4, 4))), C=torch.zeros((4, 5)),
                  b=torch.zeros((4, 0)), f=torch.zeros((0, 5)), sn=torch.zeros(4))
    # own 0, another tile's 5, a merge of own 1 with the other tile's 7, a
    # merge of two components of other tiles (dropped: their tiles decide)
    local.ids = torch.tensor([0, 5, -1, -2])
    local.merged_ROIs = [[1, 7], [3, 4]]
    keep, consumed, groups = tiles._kept(local, own)
    assert keep.tolist() == [True, False, True, False]
    assert consumed == [7]
    assert groups == [[1, 7]]


def test_nested_merges_name_the_starting_components():
    """A second round's merge of a merged component (CNMF-E's rounds merge
    twice): kept when a starting member is the tile's own, its group the
    starting components."""
    own = torch.tensor([True, False, False, False, False, False])
    local = Model(A=fp.to_sparse(torch.zeros((4, 2))), C=torch.zeros((2, 5)),
                  b=torch.zeros((4, 0)), f=torch.zeros((0, 5)), sn=torch.zeros(4))
    # merge 0 took 0 and 2; merge 1 took merge 0 and 4; 5 stays alone
    local.ids = torch.tensor([5, -2])
    local.merged_ROIs = [[0, 2], [-1, 4]]
    keep, consumed, groups = tiles._kept(local, own)
    assert keep.tolist() == [False, True]
    assert consumed == [2, 4]
    assert groups == [[0, 2, 4]]
    assert tiles.expand_merged([[0, 2], [-1, 4], [-2, 3]]) == [[0, 2], [0, 2, 4], [0, 2, 4, 3]]


def _as_accurate(truth, whole, tiled, trace_r):
    """The one-tile result finds the cells; the tiled one as many, within
    0.03 of F1, with traces correlated ``trace_r`` or better (median)."""
    from gpu_cnmf.metrics import roi_f1, trace_correlation

    f1_whole = roi_f1(truth.A, whole.A, truth.dims)
    f1_tiled = roi_f1(truth.A, tiled.A, truth.dims)
    assert f1_whole["f1"] >= 0.9
    assert f1_tiled["f1"] >= f1_whole["f1"] - 0.03
    r = trace_correlation(truth.C, tiled.C, f1_tiled["matched_true"], f1_tiled["matched_est"])
    assert np.median(r) >= trace_r


def test_refit_in_tiles_reads_the_movie_once_and_is_as_accurate(memmap_movie, monkeypatch):
    from gpu_cnmf import CNMF
    from gpu_cnmf.demo import demo_params
    from gpu_cnmf.synthetic import make_movie

    movie, truth = make_movie("2p", dims=(80, 80), n_frames=600, n_neurons=24, seed=4)
    Yr, images = memmap_movie(movie)
    params = demo_params(truth, use_cuda=False)
    fit = CNMF(params=params).fit(images, whole_field=False)

    def refit(copies):
        monkeypatch.setattr(tiles, "_COPIES", copies)
        planned = []
        real = tiles.plan_tiles
        monkeypatch.setattr(tiles, "plan_tiles", lambda *a: planned.append(real(*a)) or planned[-1])
        r0 = backend.movie_io()["read"]
        est = fit.refit(images).estimates
        return est, (backend.movie_io()["read"] - r0) / Yr.size, len(planned[0])

    whole, reads_whole, n_whole = refit(1)
    # room for 60 % of the movie: several tiles
    tiled, reads_tiled, n_tiled = refit(backend.memory_budget("cpu") / (0.6 * Yr.nbytes))
    assert n_whole == 1 and reads_whole == 1.0
    # the streamed refit reads it 5 times; at this size a tile's margin is
    # a large share of it
    assert n_tiled >= 2 and reads_tiled < 2, (n_tiled, reads_tiled)
    _as_accurate(truth, whole, tiled, trace_r=0.95)
    # every component of the tiled refit is whole: its footprint reaches
    # across tile edges where the cell does
    assert tiled.A.shape[0] == Yr.shape[0] and (tiled.A.sum(0) > 0).all()
    assert tiled.C.shape == (tiled.A.shape[1], Yr.shape[1])
    assert np.isfinite(tiled.YrA).all() and tiled.b.shape == whole.b.shape
    # evaluation reads nothing: the tiles kept what the spatial correlation
    # needs, and it scores as it would have from the file
    from gpu_cnmf.evaluation.spatial import spatial_correlation

    r0 = backend.movie_io()["read"]
    kept = spatial_correlation(images, tiled.A, tiled.C, tiled.b, tiled.f,
                               samples=tiled._movie_samples[1])
    assert backend.movie_io()["read"] == r0
    r1 = backend.movie_io()["read"]
    read = spatial_correlation(images, tiled.A, tiled.C, tiled.b, tiled.f)
    assert backend.movie_io()["read"] > r1
    np.testing.assert_allclose(kept, read, rtol=1e-5, atol=1e-6)


def test_movie_samples_answer_only_what_they_hold():
    from gpu_cnmf.evaluation.spatial import MovieSamples

    rng = np.random.default_rng(0)
    Y = rng.random((50, 40)).astype(np.float32)
    s = MovieSamples(40)
    for pix, fr in (([3, 7, 9], [0, 5, 6]), ([7, 11], [5, 39])):
        s.add(s.key(np.array(pix), np.array(fr)), Y[np.ix_(pix, fr)])
    s.finish()
    np.testing.assert_array_equal(s.lookup([7, 9], [5, 6]), Y[np.ix_([7, 9], [5, 6])])
    np.testing.assert_array_equal(s.lookup([11], [39]), Y[np.ix_([11], [39])])
    assert s.lookup([11], [6]) is None and s.lookup([49], [39]) is None
    assert s.lookup([3], []).shape == (1, 0)


def test_cnmfe_rounds_in_tiles_read_the_movie_once(memmap_movie, monkeypatch):
    """CNMF-E's rounds on the ring background of a memory map (a refit that
    keeps the fitted ring, the fit's own rounds left to it): in one tile the
    streamed rounds exactly, the movie read once instead of once per
    update; in several tiles as accurate; evaluation then reads nothing."""
    from gpu_cnmf import CNMF
    from gpu_cnmf.cnmf import ring_tiles
    from gpu_cnmf.params import CNMFParams
    from gpu_cnmf.synthetic import make_movie

    movie, truth = make_movie("1p", dims=(96, 96), n_frames=600, n_neurons=25, seed=1)
    Yr, images = memmap_movie(movie)
    params = CNMFParams(params_dict=dict(
        fr=truth.fr, decay_time=truth.decay_time, gSig=[4, 4], center_psf=True,
        method_init="corr_pnr", nb=0, K=None, min_corr=0.8, min_pnr=5, p=1, rf=24, stride=8,
        only_init=True, ring_size_factor=1.5, ssub_B=2, low_rank_background=None))
    # under three copies of the movie a refit keeps the fitted ring
    monkeypatch.setenv("GPU_CNMF_MEMORY_BUDGET", str(int(2.5 * Yr.nbytes)))
    fit = CNMF(params=params).fit(images, whole_field=False)
    assert len(fit._deferred_rounds) == 2

    def refit(copies=None, streamed=False):
        if copies is not None:
            monkeypatch.setattr(ring_tiles, "_COPIES", copies)
        planned = []
        real = ring_tiles.plan_tiles
        monkeypatch.setattr(ring_tiles, "plan_tiles", lambda *a, **k: planned.append(
            None if streamed else real(*a, **k)) or planned[-1])
        r0 = backend.movie_io()["read"]
        est = fit.refit(images).estimates
        monkeypatch.setattr(ring_tiles, "plan_tiles", real)
        return est, (backend.movie_io()["read"] - r0) / Yr.size, len(planned[0] or [])

    streamed, reads_streamed, _ = refit(streamed=True)
    whole, reads_whole, n_whole = refit()
    assert n_whole == 1 and reads_whole == 1.0 and reads_streamed >= 5
    assert whole.A.shape == streamed.A.shape
    np.testing.assert_allclose(whole.C, streamed.C, rtol=1e-3, atol=1e-3 * np.abs(whole.C).max())
    np.testing.assert_allclose(whole.b0, streamed.b0, rtol=1e-4, atol=1e-3)

    # room for half the movie: four tiles, whose ring margins are a large
    # share of so small a field
    tiled, reads_tiled, n_tiled = refit(backend.memory_budget("cpu") / (0.5 * Yr.nbytes))
    assert n_tiled >= 2 and reads_tiled < 3, (n_tiled, reads_tiled)
    _as_accurate(truth, whole, tiled, trace_r=0.9)
    np.testing.assert_allclose(tiled.b0, whole.b0, atol=0.02 * np.abs(whole.b0).max())

    # evaluation reads nothing (the tiles kept Y - B where it looks) and
    # scores as from the file; samples of other components are not used
    for est, tol in ((whole, 1e-4), (tiled, 0.02)):
        fresh = copy.deepcopy(est)
        fresh._movie_samples = None
        r0 = backend.movie_io()["read"]
        est.evaluate_components(images, params)
        assert backend.movie_io()["read"] == r0
        fresh.evaluate_components(images, params)
        assert backend.movie_io()["read"] > r0
        np.testing.assert_allclose(est.r_values, fresh.r_values, atol=tol)
    tiled.select_components(idx_components=tiled.idx_components[1:])
    r0 = backend.movie_io()["read"]
    tiled.evaluate_components(images, params)
    assert backend.movie_io()["read"] > r0


@pytest.mark.gpu
def test_cnmfe_rounds_in_tiles_agree_on_cpu_and_gpu(memmap_movie, monkeypatch):
    """The tiled CNMF-E rounds give the same components on the GPU as on
    the CPU (the code never asks which device it is on)."""
    from gpu_cnmf import CNMF
    from gpu_cnmf.cnmf import ring_tiles
    from gpu_cnmf.metrics import roi_f1, trace_correlation
    from gpu_cnmf.params import CNMFParams
    from gpu_cnmf.synthetic import make_movie

    movie, truth = make_movie("1p", dims=(96, 96), n_frames=600, n_neurons=25, seed=1)
    Yr, images = memmap_movie(movie)
    monkeypatch.setenv("GPU_CNMF_MEMORY_BUDGET", str(int(2.5 * Yr.nbytes)))
    # four tiles on either device
    monkeypatch.setattr(ring_tiles, "_COPIES", 2.5 / 0.5)
    out = {}
    for use_cuda in (False, True):
        params = CNMFParams(params_dict=dict(
            fr=truth.fr, decay_time=truth.decay_time, gSig=[4, 4], center_psf=True,
            method_init="corr_pnr", nb=0, K=None, min_corr=0.8, min_pnr=5, p=1, rf=24,
            stride=8, only_init=True, ring_size_factor=1.5, ssub_B=2,
            low_rank_background=None, use_cuda=use_cuda))
        fit = CNMF(params=params).fit(images, whole_field=False)
        out[use_cuda] = fit.refit(images).estimates
    cpu, gpu = out[False], out[True]
    f1 = roi_f1(cpu.A, gpu.A, truth.dims)
    assert f1["f1"] >= 0.95
    r = trace_correlation(cpu.C, gpu.C, f1["matched_true"], f1["matched_est"])
    assert np.median(r) >= 0.99
