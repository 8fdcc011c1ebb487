"""gpu_cnmf.caiman's pictures and summary images: correlation images against
their definition, plots headless with CaImAn-shaped outputs, cross-session
registration against synthetic truth, and a CaImAn-style registration
script run unchanged but for its imports."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import matplotlib
matplotlib.use("Agg")

from gpu_cnmf import summary
from gpu_cnmf.caiman import summary_images as si
from gpu_cnmf.caiman.base import rois as cm_rois
from gpu_cnmf.caiman.utils import visualization as vis

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# correlation images: the documented definition, written out with loops

def cn_definition(Y, eight=True, order_mean=1):
    """For each pixel: standardise every pixel's time series (mean 0,
    population std 1), average over time its products with each neighbour,
    then take the power mean (order ``order_mean``; 0: geometric) over the
    neighbours it has."""
    Y = np.asarray(Y, dtype=np.float64)
    T, d1, d2 = Y.shape
    w = (Y - Y.mean(0)) / Y.std(0)
    out = np.zeros((d1, d2))
    for i in range(d1):
        for j in range(d2):
            r = []
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if (di, dj) == (0, 0) or (not eight and abs(di) + abs(dj) != 1):
                        continue
                    ii, jj = i + di, j + dj
                    if 0 <= ii < d1 and 0 <= jj < d2:
                        r.append(np.mean(w[:, i, j] * w[:, ii, jj]))
            r = np.array(r)
            if order_mean == 0:
                out[i, j] = np.prod(r) ** (1 / r.size)
            else:
                out[i, j] = np.mean(r ** order_mean) ** (1 / order_mean)
    return out


def correlated_movie(T=120, d1=7, d2=9, seed=0, baseline=500.0):
    """A small movie whose pixels share a common signal over part of the
    frame (positive correlations) plus independent noise and a bright,
    drifting baseline (the case where streamed sums lose digits)."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(T).cumsum()
    Y = rng.standard_normal((T, d1, d2))
    Y[:, 1:5, 2:7] += 1.5 * s[:, None, None]
    return (Y + baseline + np.linspace(0, 40, T)[:, None, None]).astype(np.float32)


@pytest.mark.parametrize("eight", [True, False])
def test_local_correlations_match_definition(eight):
    Y = correlated_movie()
    ref = cn_definition(Y, eight)
    # core, streamed in small chunks of frames
    got = summary.local_correlations(Y, eight_neighbours=eight, chunk_frames=17)
    assert np.abs(got - ref).max() < 1e-5
    # compat, CaImAn's default layout: time last
    got = si.local_correlations(np.moveaxis(Y, 0, -1), eight_neighbours=eight)
    assert np.abs(got - ref).max() < 1e-5
    got = si.local_correlations(Y, eight_neighbours=eight, swap_dim=False)
    assert np.abs(got - ref).max() < 1e-5


def test_movie_local_correlations_defaults_and_chunks():
    """cm.movie's method: CaImAn's defaults (4 neighbours, time first) and
    the pixel-wise maximum over chunks of frames_per_chunk frames."""
    from gpu_cnmf.caiman import movie
    Y = correlated_movie()
    T = Y.shape[0]
    m = movie(Y, fr=30.0)
    assert np.abs(m.local_correlations(frames_per_chunk=T) - cn_definition(Y, False)).max() < 1e-5
    halves = np.array_split(np.arange(T), 2)
    ref = np.maximum(cn_definition(Y[halves[0]], False), cn_definition(Y[halves[1]], False))
    got = m.local_correlations(frames_per_chunk=T // 2)
    assert np.abs(got - ref).max() < 1e-5
    with pytest.raises(ValueError, match="frames_per_chunk"):
        m.local_correlations(frames_per_chunk=0)


@pytest.mark.parametrize("order_mean", [2, 0])
def test_local_correlations_order_mean(order_mean):
    rng = np.random.default_rng(1)
    s = rng.standard_normal(150)
    Y = (s[:, None, None] + 0.8 * rng.standard_normal((150, 6, 5))).astype(np.float32)
    ref = cn_definition(Y, True, order_mean)
    got = si.local_correlations(Y, swap_dim=False, order_mean=order_mean)
    assert np.abs(got - ref).max() < 1e-5


def test_max_correlation_image_is_max_over_bins():
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((240, 6, 7)).astype(np.float32)
    Y[:100, 1:4, 1:4] += 2 * rng.standard_normal(100)[:, None, None]   # active early
    Y[100:, 3:6, 4:7] += 2 * rng.standard_normal(140)[:, None, None]   # active late
    # 240 frames, bins of 100: the 40 left over are under half a bin, so the
    # bins grow to 240 // 2 = 120 frames
    ref = np.maximum(cn_definition(Y[:120]), cn_definition(Y[120:]))
    got = si.max_correlation_image(np.moveaxis(Y, 0, -1), bin_size=100)
    assert np.abs(got - ref).max() < 1e-5
    whole = si.max_correlation_image(Y, bin_size=1000, swap_dim=False)
    assert np.abs(whole - cn_definition(Y)).max() < 1e-5


def test_local_correlations_movie_offline(tmp_path):
    import tifffile
    pytest.importorskip("gpu_cnmf.caiman.base.movies")   # the movie class, from the compat core
    Y = correlated_movie(T=90, d1=6, d2=8, seed=3)
    path = tmp_path / "mov.tif"
    tifffile.imwrite(path, Y)
    mm = si.local_correlations_movie_offline(str(path), window=40, stride=30, fr=30.0)
    # windows every 30 frames while one fits before the last, plus the last one
    starts = [0, 30, 50]
    assert mm.shape == (3, 6, 8)
    for k, s in enumerate(starts):
        assert np.abs(np.asarray(mm[k]) - cn_definition(Y[s:s + 40])).max() < 1e-5
    assert mm.fr == pytest.approx(10.0)
    # per-frame mean subtracted before correlating
    ms = si.local_correlations_movie_offline(str(path), window=90, stride=90,
                                             mean_subtract=True)
    X = Y - Y.mean(axis=(1, 2), keepdims=True)
    assert np.abs(np.asarray(ms[0]) - cn_definition(X)).max() < 1e-5
    with pytest.raises(NotImplementedError, match="ismulticolor"):
        si.local_correlations_movie_offline(str(path), ismulticolor=True)


def test_running_percentile_baseline():
    # a slow ramp under sparse positive events: the low percentile of each
    # run follows the ramp, so removing it leaves the events on ~0
    T = 400
    t = np.arange(T, dtype=np.float32)
    x = np.tile((0.05 * t)[:, None, None], (1, 2, 2))
    x[::37] += 10
    bl = summary.running_percentile_baseline(x, window=50, quantile=8)
    assert bl.shape == x.shape
    inner = slice(25, T - 25)        # between the first and last run centres
    assert np.abs(bl[inner, 0, 0] - 0.05 * t[inner]).max() < 1.5


def test_correlation_pnr_adapts_layout():
    from gpu_cnmf.cnmf.corr_pnr import correlation_pnr as core
    rng = np.random.default_rng(4)
    Y = rng.standard_normal((200, 20, 22)).astype(np.float32)
    Y[:, 8:12, 9:13] += 4 * (rng.random(200) > 0.95)[:, None, None]
    for kw in ({"gSig": 2}, {"gSig": 2, "background_filter": "box"}, {"gSig": None}):
        cn_core, pnr_core = core(Y, swap_dim=False, **kw)
        cn, pnr = si.correlation_pnr(np.moveaxis(Y, 0, -1), **kw)          # swap_dim=True
        np.testing.assert_allclose(cn, cn_core, atol=1e-6)
        np.testing.assert_allclose(pnr, pnr_core, rtol=1e-5)


# --------------------------------------------------------------------------
# plots, headless

def blob_footprints(centres, dims, sigma=2.0, cut=0.1):
    """(pixels, K) Gaussian blobs, Fortran pixel order, cut below ``cut``
    of their peak."""
    rows, cols = np.indices(dims)
    A = []
    for r, c in centres:
        img = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma ** 2))
        img[img < cut] = 0
        A.append(img.ravel(order="F"))
    return np.array(A).T


def test_get_and_plot_contours_headless():
    import matplotlib.pyplot as plt
    dims = (30, 40)
    centres = [(8, 10), (20, 28), (15, 2)]
    A = blob_footprints(centres, dims)
    Cn = np.random.default_rng(0).random(dims)
    fig, ax = plt.subplots()
    coords = vis.plot_contours(sp.csc_matrix(A), Cn, thr_method="nrg", nrgthr=0.9, ax=ax,
                               colors="r")
    assert [c["neuron_id"] for c in coords] == [1, 2, 3]
    for c, (r0, c0) in zip(coords, centres):
        assert set(c) >= {"coordinates", "CoM", "neuron_id", "bbox"}
        xy = c["coordinates"]
        assert xy.ndim == 2 and xy.shape[1] == 2 and np.isfinite(xy).any()
        np.testing.assert_allclose(c["CoM"], cm_rois.com(A[:, [c["neuron_id"] - 1]], *dims)[0])
        # contour points surround the centre: x is the column, y the row
        assert np.nanmin(xy[:, 0]) < c0 < np.nanmax(xy[:, 0])
        assert np.nanmin(xy[:, 1]) < r0 < np.nanmax(xy[:, 1])
        ymin, ymax, xmin, xmax = c["bbox"]
        assert ymin <= r0 <= ymax and xmin <= c0 <= xmax
    assert len(ax.lines) == 3 and len(ax.texts) == 3
    # the 90 % energy (sum of squares) contour of a Gaussian of std 2: its
    # square has std sqrt(2), radius sqrt(2 ln 10) sqrt(2) ~ 3.03 px
    xy = coords[0]["coordinates"]
    rad = np.hypot(xy[:, 0] - 10, xy[:, 1] - 8)
    assert abs(np.nanmedian(rad) - 3.03) < 0.3
    # 'max' at 0.5 of the peak: radius sqrt(2 ln 2) sigma ~ 2.35 px
    c = vis.get_contours(A, dims, thr=0.5, thr_method="max")[1]["coordinates"]
    assert abs(np.nanmedian(np.hypot(c[:, 0] - 28, c[:, 1] - 20)) - 2.35) < 0.3
    fig.savefig(os.devnull, format="png")
    plt.close("all")


def test_viewers_headless():
    import matplotlib.pyplot as plt
    dims = (24, 24)
    A = blob_footprints([(6, 6), (16, 15)], dims)
    C = np.abs(np.random.default_rng(0).standard_normal((2, 50)))
    fig = vis.inspect_correlation_pnr(np.random.random(dims), np.random.random(dims))
    assert len(fig.axes) >= 3
    fig, slider = vis.nb_view_patches(None, sp.csc_matrix(A), C, None, None, *dims,
                                      YrA=0.1 * C)
    slider.set_val(1)        # redraws with the second component
    assert "component 1" in fig.axes[0].get_title()
    ax = vis.view_quilt(np.random.random((50, 60)), stride=20, overlap=10)
    # patches of 30 px every 20 px, the last flush: rows 0, 20 and cols 0, 20, 30
    assert len(ax.patches) == 2 * 3
    plt.close("all")


# --------------------------------------------------------------------------
# registration across sessions

def make_sessions(seed=0, shifts=((0, 0), (4, -3), (-3, 5)), n_cells=24, dims=(80, 80),
                  drop=4, new=3):
    """Sessions of one field of view: each sees most of ``n_cells`` cells
    (a few dropped, a few new to it), its frame moved by an integer shift,
    its components in a random order. Returns the footprints, templates
    and, per session, the true cell of each component."""
    rng = np.random.default_rng(seed)
    centres = []
    while len(centres) < n_cells + new * len(shifts):
        p = rng.uniform(10, np.array(dims) - 10)
        if all(np.hypot(*(p - q)) > 7 for q in centres):
            centres.append(p)
    centres = np.array(centres)
    texture = rng.random((dims[0] + 40, dims[1] + 40))
    from scipy.ndimage import gaussian_filter
    texture = gaussian_filter(texture, 3)
    A, templates, truth = [], [], []
    for s, (dy, dx) in enumerate(shifts):
        cells = np.setdiff1d(np.arange(n_cells), rng.choice(n_cells, drop, replace=False))
        cells = np.r_[cells, n_cells + s * new + np.arange(new)]
        cells = rng.permutation(cells)
        a = blob_footprints(centres[cells] + [dy, dx], dims)
        all_cells = blob_footprints(centres + [dy, dx], dims).sum(1)
        tpl = all_cells.reshape(dims, order="F") + 0.5 * texture[20 - dy:20 - dy + dims[0],
                                                                  20 - dx:20 - dx + dims[1]]
        A.append(a)
        templates.append(tpl)
        truth.append(cells)
    return A, templates, truth


def test_register_rois_recovers_matching():
    A, templates, truth = make_sessions()
    dims = (80, 80)
    for flow in (False, True):
        m1, m2, nm1, nm2, perf, A2 = cm_rois.register_ROIs(
            A[0], sp.csc_matrix(A[1]), dims, template1=templates[0], template2=templates[1],
            use_opt_flow=flow)
        common = np.intersect1d(truth[0], truth[1])
        assert len(m1) == len(common)
        assert np.array_equal(truth[0][m1], truth[1][m2])
        assert set(truth[0][nm1]) == set(truth[0]) - set(common)
        assert set(truth[1][nm2]) == set(truth[1]) - set(common)
        n1, n2 = len(truth[0]), len(truth[1])
        tp = len(common)
        assert perf["recall"] == pytest.approx(tp / n1)
        assert perf["precision"] == pytest.approx(tp / n2)
        assert perf["f1_score"] == pytest.approx(2 * tp / (n1 + n2))
        assert perf["accuracy"] == pytest.approx(tp / (n1 + n2 - tp))
        assert sp.issparse(A2) and A2.shape == A[1].shape
    # without alignment the 5-px shift breaks matches
    m1, *_ = cm_rois.register_ROIs(A[0], A[1], dims, template1=templates[0],
                                   template2=templates[1], align_flag=False, max_dist=3)
    assert len(m1) < len(np.intersect1d(truth[0], truth[1]))


def score_multisession(assignments, truth):
    """Each union row must hold one true cell, every (session, component)
    appears once, and each distinct cell has exactly one row."""
    cells_of_row = []
    for row in assignments:
        ids = {int(truth[s][int(k)]) for s, k in enumerate(row) if np.isfinite(k)}
        assert len(ids) == 1, f"union row mixes cells {ids}"
        cells_of_row.append(ids.pop())
    distinct = set(np.concatenate(truth).tolist())
    assert sorted(cells_of_row) == sorted(distinct)
    for s in range(len(truth)):
        col = assignments[:, s]
        assert sorted(col[np.isfinite(col)].astype(int)) == list(range(len(truth[s])))


def test_register_multisession_assignments():
    A, templates, truth = make_sessions(seed=1)
    A_union, assignments, matchings = cm_rois.register_multisession(
        A, (80, 80), templates=templates)
    score_multisession(assignments, truth)
    assert A_union.shape == (80 * 80, assignments.shape[0])
    for s, m in enumerate(matchings):
        assert [int(assignments[u, s]) for u in m] == list(range(len(truth[s])))


SCRIPT = '''
import numpy as np
import gpu_cnmf.caiman as cm
from gpu_cnmf.caiman.base.rois import register_multisession, register_ROIs
from gpu_cnmf.caiman.utils import visualization
import matplotlib.pyplot as plt

data = np.load('sessions.npz')
n = int(data['n'])
spatial = [data['A%d' % s] for s in range(n)]
templates = [data['T%d' % s] for s in range(n)]
dims = templates[0].shape

spatial_union, assignments, matchings = register_multisession(
    A=spatial, dims=dims, templates=templates)
n_reg = len(spatial)
assignments_filtered = np.array(np.nan_to_num(assignments[np.sum(~np.isnan(assignments),
                                                                  axis=1) >= n_reg]), dtype=int)
print('components in every session:', len(assignments_filtered))

res = register_ROIs(spatial[0], spatial[1], dims, template1=templates[0],
                    template2=templates[1], plot_results=True)
print(res[4])
plt.figure()
visualization.plot_contours(spatial_union, templates[-1])
plt.savefig('union.png')
np.save('assignments.npy', assignments)
'''


def test_multisession_registration_script(tmp_path):
    A, templates, truth = make_sessions(seed=2)
    np.savez(tmp_path / "sessions.npz", n=len(A),
             **{f"A{s}": a for s, a in enumerate(A)},
             **{f"T{s}": t for s, t in enumerate(templates)})
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    out = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assignments = np.load(tmp_path / "assignments.npy")
    score_multisession(assignments, truth)
    in_all = set(truth[0]) & set(truth[1]) & set(truth[2])
    assert f"components in every session: {len(in_all)}" in out.stdout
    assert (tmp_path / "union.png").stat().st_size > 0


# --------------------------------------------------------------------------
# paths and demo data

def test_paths_and_download_demo(tmp_path, monkeypatch):
    from gpu_cnmf.caiman import paths
    from gpu_cnmf.caiman.utils.utils import download_demo
    from gpu_cnmf.errors import MovieError
    monkeypatch.setenv("CAIMAN_DATA", str(tmp_path))
    monkeypatch.delenv("CAIMAN_TEMP", raising=False)
    assert paths.caiman_datadir() == str(tmp_path)
    assert paths.get_tempdir() == str(tmp_path / "temp") and (tmp_path / "temp").is_dir()
    assert paths.fn_relocated("x.mmap") == str(tmp_path / "temp" / "x.mmap")
    assert paths.fn_relocated("/data/x.mmap") == "/data/x.mmap"
    with pytest.raises(MovieError, match="does not download"):
        download_demo("Sue_2x_3000_40_-46.tif")
    target = tmp_path / "example_movies" / "demoMovie.tif"
    target.parent.mkdir()
    target.write_bytes(b"x")
    assert download_demo("demoMovie.tif") == str(target)
    monkeypatch.delenv("CAIMAN_DATA")
    assert paths.caiman_datadir() == os.path.join(os.path.expanduser("~"), "caiman_data")


# --------------------------------------------------------------------------
# Estimates' pictures

def small_estimates(T=40, dims=(20, 24)):
    from gpu_cnmf.cnmf.estimates import Estimates
    rng = np.random.default_rng(5)
    A = sp.csc_matrix(blob_footprints([(5, 6), (13, 16), (8, 19)], dims))
    C = np.abs(rng.standard_normal((3, T))).cumsum(1)
    b = np.full((dims[0] * dims[1], 1), 2.0)
    f = 1 + 0.1 * rng.random((1, T))
    est = Estimates(A=A, b=b, C=C, f=f, dims=dims)
    est.YrA = 0.1 * rng.standard_normal(C.shape)
    Y = (A @ C + b @ f).T.reshape((T, dims[1], dims[0])).transpose(0, 2, 1)
    return est, Y


def test_estimates_plots_headless():
    import matplotlib.pyplot as plt
    est, Y = small_estimates()
    est.idx_components_bad = None
    assert est.plot_contours(img=Y.mean(0), idx=[0, 2]) is est
    fig = plt.gcf()
    accepted, rejected = fig.axes[:2]
    assert len(accepted.lines) == 2 and len(rejected.lines) == 1
    assert rejected.texts[0].get_text() == "2"       # component 1, numbered from 1
    assert est.plot_contours_nb() is est
    assert est.view_components(img=Y.mean(0), idx=[1, 2]) is est
    assert est.nb_view_components() is est
    assert est.coordinates is None                 # contours are not cached in the results
    plt.close("all")


def test_play_movie_writes_or_warns(tmp_path):
    import av
    est, Y = small_estimates()
    # no display, nothing to save: a warning, no error
    with pytest.warns(UserWarning, match="no display"):
        est.play_movie(Y)
    # .npy: the model panel equals the data panel for a noise-free movie
    est.play_movie(Y, save_movie=True, movie_name=str(tmp_path / "m.npy"), display=False,
                   frame_range=slice(5, 25), q_min=0, q_max=100)
    fr = np.load(tmp_path / "m.npy")
    assert fr.shape == (20, 20, 3 * 24) and fr.dtype == np.uint8
    data, model, res = fr[:, :, :24], fr[:, :, 24:48], fr[:, :, 48:]
    assert np.abs(data.astype(int) - model).max() <= 1
    assert data.max() == 255
    # .avi through PyAV, magnified
    path = tmp_path / "m.avi"
    est.play_movie(Y, save_movie=True, movie_name=str(path), display=False, magnification=2,
                   thr=0.5)
    with av.open(str(path)) as box:
        frames = [f.to_ndarray(format="gray") for f in box.decode(video=0)]
    assert len(frames) == Y.shape[0] and frames[0].shape == (40, 144)
    with pytest.raises(NotImplementedError, match="use_color"):
        est.play_movie(Y, use_color=True)


def test_register_rois_distance_options():
    dims = (40, 40)
    small = blob_footprints([(20, 20)], dims, sigma=1.5, cut=0.3)
    big = blob_footprints([(20, 21)], dims, sigma=4.0, cut=0.1)
    # a small mask inside a big one: a large Jaccard distance...
    m1, *_ , perf, _ = cm_rois.register_ROIs(small, big, dims, align_flag=False)
    assert len(m1) == 0 and perf["recall"] == 0
    # ...unless enclosed masks are forgiven
    m1, m2, *_ = cm_rois.register_ROIs(small, big, dims, align_flag=False, enclosed_thr=0.5)
    assert list(m1) == [0] and list(m2) == [0]
    # precomputed distances, in CaImAn's list form
    D = [np.array([[0.9, 0.2], [0.1, 0.95]])]
    A = blob_footprints([(10, 10), (30, 30)], dims)
    m1, m2, nm1, nm2, perf, _ = cm_rois.register_ROIs(A, A, dims, D=D, align_flag=False)
    assert list(m1) == [0, 1] and list(m2) == [1, 0] and perf["f1_score"] == 1
