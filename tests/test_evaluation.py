"""Component evaluation: SNR, spatial correlation, CNN, accept/reject, ΔF/F."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.ndimage import gaussian_filter

from conftest import devices
from gpu_cnmf.errors import ParameterError
from gpu_cnmf.evaluation import (QUALITY_DEFAULTS, accept_components, active_frames,
                                 compute_residuals, compute_snr, detrend_df_f,
                                 evaluate_components, footprint_crops, load_classifier,
                                 mode_percentile, mode_robust, predict_cnn,
                                 remove_components, running_percentile,
                                 select_components, spatial_correlation)
from gpu_cnmf.evaluation.cnn import WEIGHTS_PATH, classify_crops
from gpu_cnmf.evaluation.train_cnn import dataset

FR, DECAY = 30.0, 0.4


def ar1_traces(rng, K, T, rate=0.02, amp=1.0, g=0.92):
    s = (rng.random((K, T)) < rate) * amp
    c = np.zeros((K, T))
    for t in range(1, T):
        c[:, t] = g * c[:, t - 1] + s[:, t]
    return c


# ------------------------------------------------------------------ SNR --

def test_mode_robust_finds_the_baseline():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(2.0, 0.3, 2000), rng.uniform(3, 20, 600)])
    rng.shuffle(x)
    m = mode_robust(torch.tensor(np.vstack([x, -x])))
    assert abs(m[0] - 2.0) < 0.15 and abs(m[1] + 2.0) < 0.15
    assert float(mode_robust(torch.tensor([[1.0, 5.0, 5.0]]))[0]) == 5.0


@pytest.mark.parametrize("device", devices())
def test_snr_noise_low_transients_high(device):
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(200, 1000))
    snr = compute_snr(noise + 10.0, FR, DECAY, use_cuda=device)
    assert np.median(snr) < QUALITY_DEFAULTS["SNR_lowest"]
    assert np.mean(snr < QUALITY_DEFAULTS["min_SNR"]) == 1.0
    cells = ar1_traces(rng, 50, 1500, amp=15.0) + rng.normal(size=(50, 1500))
    assert np.all(compute_snr(cells, FR, DECAY, use_cuda=device) > QUALITY_DEFAULTS["min_SNR"])
    # SNR grows with the transients' amplitude
    amps = [1, 3, 6]
    med = [np.median(compute_snr(ar1_traces(np.random.default_rng(2), 40, 1500, amp=a)
                                 + np.random.default_rng(3).normal(size=(40, 1500)),
                                 FR, DECAY)) for a in amps]
    assert med[0] < med[1] < med[2]


def test_snr_event_window_from_decay_time_and_fr():
    # one plateau of 10 frames: exceptional over 10 frames, diluted over 40
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 2000))
    x[0, 1000:1010] += 3.0
    short = compute_snr(x, fr=10, decay_time=1.0)     # N = 10
    long = compute_snr(x, fr=40, decay_time=1.0)      # N = 40
    assert short[0] > long[0] + 0.3
    assert compute_snr(x, fr=30, decay_time=0.4)[0] == compute_snr(x, fr=12, decay_time=1.0)[0]
    with pytest.raises(ParameterError):
        compute_snr(x, fr=0, decay_time=0.4)


def test_snr_huge_events_do_not_overflow():
    x = np.zeros((1, 500))
    x[0, ::2] = 0.01
    x[0, 200:230] = 1e4
    assert np.isfinite(compute_snr(x, FR, DECAY)).all()
    assert compute_snr(x, FR, DECAY)[0] > 30


# ------------------------------------------------------ spatial, residuals --

def test_active_frames_hand_case():
    C = torch.zeros((2, 30))
    C[0, 5], C[0, 20], C[0, 25] = 1.0, 3.0, 0.2     # 0.2 < 0.3 * range: ignored
    m = active_frames(C, Npeaks=5, tB=-1, tA=2).numpy()
    assert set(np.flatnonzero(m[0])) == {4, 5, 6, 7, 19, 20, 21, 22}
    assert not m[1].any()                           # flat trace: no active frames
    m1 = active_frames(C, Npeaks=1, tB=0, tA=0).numpy()
    assert set(np.flatnonzero(m1[0])) == {20}


def _toy(seed=0, T=120, dims=(12, 10)):
    rng = np.random.default_rng(seed)
    d = int(np.prod(dims))
    yy, xx = np.meshgrid(np.arange(dims[0]), np.arange(dims[1]), indexing="ij")
    cols = []
    for cy, cx in [(4, 3), (6, 5), (8, 7)]:
        img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0)
        img[img < 0.05] = 0
        cols.append(img.ravel(order="F"))
    A = np.array(cols).T
    C = ar1_traces(rng, 3, T, rate=0.05, amp=2.0)
    b = rng.uniform(0.5, 1.5, (d, 1))
    f = 1 + 0.1 * rng.normal(size=(1, T))
    Yr = A @ C + b @ f + 0.2 * rng.normal(size=(d, T))
    movie = Yr.T.reshape((T, dims[1], dims[0])).transpose(0, 2, 1)   # Fortran pixels
    return movie.astype(np.float32), A, C, b, f, dims


@pytest.mark.parametrize("device", devices())
def test_spatial_correlation_against_numpy(device):
    movie, A, C, b, f, dims = _toy()
    T = movie.shape[0]
    Yr = movie.transpose(0, 2, 1).reshape(T, -1).T.astype(np.float64)
    r = spatial_correlation(movie, sp.csc_matrix(A), C, b, f, dims, use_cuda=device,
                            chunk_frames=17)
    act = active_frames(torch.tensor(C)).numpy()
    for i in range(3):
        # leave out frames where an overlapping footprint is active too
        others = [j for j in range(3) if j != i and A[:, j] @ A[:, i] > 0]
        alone = act[i] & ~act[others].any(0)
        frames = alone if alone.any() else act[i]
        R = Yr - b @ f
        mimg = R[:, frames].mean(1)
        sup = A[:, i] >= 0.1 * A[:, i].max()
        ref = np.corrcoef(mimg[sup], A[sup, i])[0, 1]
        assert abs(r[i] - ref) < 1e-5
    assert np.all(r > 0.85)
    # a footprint of pure noise pixels does not correlate
    rng = np.random.default_rng(5)
    junk = np.zeros((A.shape[0], 1))
    junk[rng.choice(A.shape[0], 25, replace=False), 0] = rng.uniform(0.2, 1, 25)
    r2 = spatial_correlation(movie, sp.csc_matrix(np.hstack([A, junk])),
                             np.vstack([C, np.abs(rng.normal(size=(1, T)))]), b, f, dims)
    assert abs(r2[3]) < 0.5
    # a flat trace has no active frames: NaN
    r3 = spatial_correlation(movie, sp.csc_matrix(A), np.vstack([C[:2], np.zeros((1, T))]),
                             b, f, dims)
    assert np.isnan(r3[2]) and np.isfinite(r3[:2]).all()


@pytest.mark.parametrize("device", devices())
def test_compute_residuals_against_numpy(device):
    movie, A, C, b, f, dims = _toy(1)
    T = movie.shape[0]
    Yr = movie.transpose(0, 2, 1).reshape(T, -1).T.astype(np.float64)
    ref = (A.T @ Yr - (A.T @ A) @ C - (A.T @ b) @ f) / (A ** 2).sum(0)[:, None]
    got = compute_residuals(movie, sp.csc_matrix(A), C, b, f, use_cuda=device,
                            chunk_frames=13)
    np.testing.assert_allclose(got, ref, atol=1e-4)


# ------------------------------------------------------------------ CNN --

def test_cnn_weights_shipped_small_with_metadata():
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size < 1024 ** 2
    model, meta = load_classifier()
    assert meta["input_size"] == 50 and meta["version"] == 1
    assert meta["val_accuracy"] >= 0.95


def test_cnn_accuracy_on_fresh_held_out_set():
    x, y, kinds = dataset(1000, seed=98765)          # a seed training never saw
    model, _ = load_classifier()
    p = classify_crops(model, x)
    acc = float(((p >= 0.5).float() == y).float().mean())
    assert acc >= 0.95, acc
    # the two acceptance thresholds are meaningful on it
    cells, arts = p[y == 1].numpy(), p[y == 0].numpy()
    assert np.mean(cells >= QUALITY_DEFAULTS["cnn_lowest"]) > 0.97
    assert np.mean(arts < QUALITY_DEFAULTS["min_cnn_thr"]) > 0.9


def test_crops_centre_on_the_footprint():
    dims = (60, 50)
    yy, xx = np.meshgrid(np.arange(60), np.arange(50), indexing="ij")
    cols = []
    for cy, cx in [(20, 20), (33, 27)]:          # same shape, shifted by (13, 7)
        img = np.exp(-(((yy - cy) / 5.0) ** 2 + ((xx - cx) / 3.0) ** 2) / 2)
        cols.append(img.ravel(order="F"))
    crops = footprint_crops(sp.csc_matrix(np.array(cols).T), dims, gSig=4).numpy()
    np.testing.assert_allclose(crops[0], crops[1], atol=1e-6)
    assert crops.shape == (2, 2, 50, 50) and crops[:, 0].max() == 1
    # elongated along the first axis, centred
    prof0, prof1 = crops[0, 0].sum(1), crops[0, 0].sum(0)
    assert abs(np.argmax(prof0) - 24.5) <= 1 and abs(np.argmax(prof1) - 24.5) <= 1
    assert (prof0 > prof0.max() / 2).sum() > (prof1 > prof1.max() / 2).sum()


# ------------------------------------------------- evaluate_components --

@pytest.fixture(scope="module")
def cells_and_artefacts():
    return make_cells_and_artefacts()


def make_cells_and_artefacts():
    """A synthetic movie's true components plus CNMF-like artefacts."""
    from gpu_cnmf import synthetic
    dims, T = (96, 96), 600
    movie, truth = synthetic.make_movie("2p", dims=dims, n_frames=T, n_neurons=30, seed=7)
    A = sp.csc_matrix(truth.A)
    C = np.asarray(truth.C)
    K = A.shape[1]
    rng = np.random.default_rng(11)
    yy, xx = np.meshgrid(np.arange(dims[0]), np.arange(dims[1]), indexing="ij")
    imgs = A.toarray().T.reshape(K, dims[1], dims[0]).transpose(0, 2, 1)
    centres = np.array([[np.average(yy, weights=im), np.average(xx, weights=im)]
                        for im in imgs])
    arts, traces, kinds = [], [], []

    def slow_noise(scale):
        return np.abs(gaussian_filter(rng.standard_normal(T), 3)) * scale

    for _ in range(6):                                   # noise blobs
        cy, cx = rng.uniform(10, dims[0] - 10, 2)
        fld = gaussian_filter(rng.standard_normal(dims), 1.0)
        fld *= np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 8.0 ** 2))
        img = np.clip(fld - np.quantile(fld, 0.97), 0, None)
        arts.append(img / img.max()), traces.append(slow_noise(0.2)), kinds.append("noise")
    # fragments and pairs of cells away from the border (a piece of a cell cut
    # by the edge of the field of view is what a border cell looks like)
    interior = [k for k in range(K)
                if min(centres[k][0], centres[k][1], dims[0] - 1 - centres[k][0],
                       dims[1] - 1 - centres[k][1]) > 15]
    for k in interior[:5]:                               # fragments, firing with their cell
        cy, cx = centres[k]
        ang = rng.uniform(0, 2 * np.pi)
        u = (yy - cy) * np.sin(ang) + (xx - cx) * np.cos(ang)
        img = imgs[k] * (u > 2.0)
        arts.append(img / img.max()), traces.append(C[k]), kinds.append("fragment")
    used = set()
    for k in interior[5:10]:                 # merged with the nearest cell 2.2-4 gSig away
        dist = np.linalg.norm(centres - centres[k], axis=1)
        dist[(dist < 11) | (dist > 20)] = np.inf
        dist[list(used)] = np.inf
        dist[np.setdiff1d(np.arange(K), interior)] = np.inf
        j = int(np.argmin(dist))
        used.update((k, j))
        img = imgs[k] + imgs[j]
        arts.append(img / img.max()), traces.append((C[k] + C[j]) / 2), kinds.append("pair")
    for _ in range(4):                                   # streaks
        cy, cx = rng.uniform(20, dims[0] - 20, 2)
        ang = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(ang) + (xx - cx) * np.sin(ang)
        v = -(yy - cy) * np.sin(ang) + (xx - cx) * np.cos(ang)
        img = np.exp(-(u / 16) ** 2 / 2 - (v / 1.2) ** 2 / 2)
        img[img < 0.1] = 0
        arts.append(img), traces.append(slow_noise(0.3)), kinds.append("streak")
    art_cols = np.array([a.ravel(order="F") for a in arts]).T
    A_all = sp.hstack([A, sp.csc_matrix(art_cols)]).tocsc().astype(np.float32)
    C_all = np.vstack([C, np.array(traces)]).astype(np.float32)
    # residuals against the true model: each footprint sees the truth's noise
    C_model = np.vstack([C, np.zeros((len(arts), T))])
    YrA = compute_residuals(movie, A_all, C_model, truth.b, truth.f)
    labels = np.r_[np.ones(K, bool), np.zeros(len(arts), bool)]
    return dict(movie=movie, A=A_all, C=C_all, b=truth.b, f=truth.f, YrA=YrA, dims=dims,
                labels=labels, kinds=np.array(["cell"] * K + kinds), K_true=K)


@pytest.fixture(scope="module")
def evaluated(cells_and_artefacts):
    d = cells_and_artefacts
    return evaluate_components(d["movie"], d["A"], d["C"], d["b"], d["f"], d["YrA"],
                               d["dims"], FR, DECAY, {}, gSig=(5, 5))


def test_evaluation_rejects_artefacts_keeps_cells(cells_and_artefacts, evaluated):
    d, res = cells_and_artefacts, evaluated
    lab = d["labels"]
    keep = res["idx_components"]
    assert len(np.intersect1d(keep, res["idx_components_bad"])) == 0
    assert len(keep) + len(res["idx_components_bad"]) == len(lab)
    precision_before, recall_before = lab.mean(), 1.0
    precision = lab[keep].mean()
    recall = lab[keep].sum() / lab.sum()
    assert precision >= precision_before + 0.2, (precision, precision_before)
    assert recall >= recall_before - 0.02, recall
    # artefacts with noise traces fail on SNR, r and CNN alike; fragments and
    # merged pairs fire with real cells, so only the CNN (cnn_lowest) removes them
    for kind, most in (("noise", 1.0), ("streak", 1.0), ("fragment", 0.6), ("pair", 0.5)):
        members = np.flatnonzero(d["kinds"] == kind)
        assert 1 - np.isin(members, keep).mean() >= most, kind
    # the scores say why: cells have high SNR and CNN, noise blobs low SNR
    snr, cnn = res["SNR_comp"], res["cnn_preds"]
    assert np.median(snr[lab]) > QUALITY_DEFAULTS["min_SNR"]
    assert np.median(snr[d["kinds"] == "noise"]) < QUALITY_DEFAULTS["min_SNR"]
    assert np.median(cnn[lab]) > 0.9 and np.median(cnn[~lab]) < 0.5
    assert np.nanmedian(res["r_values"][lab]) > 0.7


def test_each_threshold_has_its_documented_effect():
    # one component per test, its scores chosen to sit near one threshold
    #            SNR   r     cnn
    scores = np.array([[3.0, 0.0, 0.5],    # 0: accepted by SNR only
                       [0.4, 0.9, 0.5],    # 1: accepted by r, SNR below SNR_lowest
                       [1.0, 0.85, 0.5],   # 2: accepted by r only
                       [5.0, 0.1, 0.5],    # 3: accepted by SNR, r low
                       [1.0, 0.2, 0.95],   # 4: accepted by CNN only
                       [5.0, 0.5, 0.05],   # 5: accepted by SNR, CNN below cnn_lowest
                       [1.0, np.nan, 0.5]])  # 6: nothing accepts it

    def kept(**q):
        good, bad = accept_components(scores[:, 0], scores[:, 1], scores[:, 2], q)
        assert len(good) + len(bad) == len(scores)
        return set(good.tolist())

    assert kept() == {0, 2, 3, 4}                     # defaults: 1 (SNR), 5 (cnn) out
    assert 0 not in kept(min_SNR=3.5) and 3 not in kept(min_SNR=5.5)
    assert 1 in kept(SNR_lowest=0.3) and 1 not in kept(SNR_lowest=0.5)
    assert 2 not in kept(rval_thr=0.9) and 2 in kept(rval_thr=0.85)
    assert 3 not in kept(rval_lowest=0.2) and 3 in kept(rval_lowest=0.1)
    assert 4 not in kept(min_cnn_thr=0.96) and 4 in kept(min_cnn_thr=0.95)
    assert 5 in kept(cnn_lowest=0.05) and 5 not in kept(cnn_lowest=0.06)
    assert kept(use_cnn=False) == {0, 2, 3, 5}        # CNN neither accepts nor rejects
    assert 6 in kept(min_SNR=1.0) and 6 not in kept(rval_thr=-1.0)
    with pytest.raises(ParameterError, match="min_SNR"):
        accept_components(scores[:, 0], scores[:, 1], scores[:, 2], {"min_snr": 2})
    with pytest.raises(ParameterError, match="cnn_preds"):
        accept_components(scores[:, 0], scores[:, 1], None, {})


def test_thresholds_through_evaluate_components(cells_and_artefacts, evaluated):
    d, base = cells_and_artefacts, evaluated
    args = (d["movie"], d["A"], d["C"], d["b"], d["f"], d["YrA"], d["dims"], FR, DECAY)
    no_cnn = evaluate_components(*args, {"use_cnn": False}, gSig=(5, 5))
    assert no_cnn["cnn_preds"].size == 0
    np.testing.assert_allclose(no_cnn["SNR_comp"], base["SNR_comp"])
    snr, r = base["SNR_comp"], base["r_values"]
    with np.errstate(invalid="ignore"):
        expect = np.flatnonzero(((snr >= 2.5) | (r >= 0.8)) & ~((snr < 0.5) | (r < -1)))
    np.testing.assert_array_equal(no_cnn["idx_components"], expect)
    # stricter acceptance never adds components; laxer rejection never removes
    n0 = len(base["idx_components"])
    for q in ({"min_SNR": 10}, {"rval_thr": 0.99}, {"min_cnn_thr": 0.999},
              {"SNR_lowest": 2.0}, {"rval_lowest": 0.5}, {"cnn_lowest": 0.5}):
        good, _ = accept_components(snr, r, base["cnn_preds"], q)
        assert len(good) <= n0, q
    # gSig_range scores each footprint at every size and keeps the best
    A, dims = d["A"], d["dims"]
    p3, p6 = predict_cnn(A, dims, 3), predict_cnn(A, dims, 6)
    np.testing.assert_allclose(predict_cnn(A, dims, 5, gSig_range=[3, 6]),
                               np.maximum(p3, p6), atol=1e-6)


def test_evaluate_computes_missing_residuals(cells_and_artefacts):
    d = cells_and_artefacts
    K = d["K_true"]
    A, C = d["A"][:, :K], d["C"][:K]
    res = evaluate_components(d["movie"], A, C, d["b"], d["f"], None, d["dims"], FR, DECAY,
                              {"use_cnn": False})
    assert np.mean(res["SNR_comp"] > 2.5) > 0.9
    with pytest.raises(ParameterError):
        evaluate_components(d["movie"], A, C, d["b"], d["f"], C[:2], d["dims"], FR, DECAY)


# ------------------------------------------------------------- subsets --

def test_select_and_remove_components():
    rng = np.random.default_rng(0)
    A = sp.random(20, 5, density=0.5, format="csc", random_state=1)
    C = rng.normal(size=(5, 30))
    snr = np.arange(5.0)
    coords = ["a", "b", "c", "d", "e"]
    out = select_components([3, 1], A=A, C=C, SNR_comp=snr, coordinates=coords, S=None)
    np.testing.assert_array_equal(out["A"].toarray(), A.toarray()[:, [3, 1]])
    np.testing.assert_array_equal(out["C"], C[[3, 1]])
    assert out["coordinates"] == ["d", "b"] and out["S"] is None
    mask = np.array([True, False, True, False, False])
    np.testing.assert_array_equal(select_components(mask, C=C)["C"], C[[0, 2]])
    rem = remove_components([1, 3], A=A, C=C, SNR_comp=snr)
    np.testing.assert_array_equal(rem["SNR_comp"], [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(rem["A"].toarray(), A.toarray()[:, [0, 2, 4]])
    t = select_components([4], C=torch.tensor(C))["C"]
    assert isinstance(t, torch.Tensor) and t.shape == (1, 30)
    with pytest.raises(ParameterError):
        select_components([5], C=C)
    with pytest.raises(ParameterError):
        select_components([1, 1], C=C)
    with pytest.raises(ParameterError):
        select_components([0], A=A, C=C[:4])


# --------------------------------------------------------------- ΔF/F --

def test_detrend_df_f_hand_case():
    # one pixel pair footprint with norm 5, background 10 on both pixels
    A = sp.csc_matrix(np.array([[3.0], [4.0]]))
    b = np.ones((2, 1))
    f = np.full((1, 6), 10.0)
    C = np.array([[0.0, 0.2, 0.0, 1.0, 0.4, 0.0]])
    # F = 5 C = [0, 1, 0, 5, 2, 0]; B = (3 + 4) / 5 * 10 = 14
    # 50th percentile over all frames: F0 = 0.5, B0 = 14
    dff = detrend_df_f(A, b, C, f, quantileMin=50, frames_window=None, flag_auto=False)
    np.testing.assert_allclose(dff, [[-0.5, 0.5, -0.5, 4.5, 1.5, -0.5]] / np.float64(14.5))
    only = detrend_df_f(A, b, C, f, quantileMin=50, frames_window=None, flag_auto=False,
                        detrend_only=True)
    np.testing.assert_allclose(only, [[-0.5, 0.5, -0.5, 4.5, 1.5, -0.5]])
    # YrA is added to C before scaling
    dff2 = detrend_df_f(A, b, C, f, YrA=np.full((1, 6), 0.2), quantileMin=0,
                        frames_window=None, flag_auto=False)
    np.testing.assert_allclose(dff2, (5 * (C + 0.2) - 1.0) / (14 + 1.0))


def test_detrend_df_f_running_baseline():
    rng = np.random.default_rng(2)
    T, w, q = 300, 41, 10
    A = sp.csc_matrix(rng.uniform(0, 1, (30, 2)))
    b = rng.uniform(1, 2, (30, 1))
    f = 5 + np.sin(np.arange(T) / 40.0)[None]
    C = ar1_traces(rng, 2, T, amp=2.0) + np.linspace(0, 1, T)[None]   # drifting baseline
    nA = np.sqrt((A.toarray() ** 2).sum(0))
    F = C * nA[:, None]
    B = (A.toarray().T @ b / nA[:, None]) @ f
    pad = lambda x: np.pad(x, (w // 2, w - 1 - w // 2), mode="symmetric")  # noqa: E731
    F0 = np.array([[np.percentile(pad(r)[t:t + w], q) for t in range(T)] for r in F])
    B0 = np.array([[np.percentile(pad(r)[t:t + w], q) for t in range(T)] for r in B])
    got = detrend_df_f(A, b, C, f, quantileMin=q, frames_window=w, flag_auto=False)
    np.testing.assert_allclose(got, (F - F0) / (B0 + F0), rtol=1e-9, atol=1e-12)
    # the fast variant: block percentiles, linearly interpolated
    fast = detrend_df_f(A, b, C, f, quantileMin=q, frames_window=100, flag_auto=False,
                        use_fast=True, detrend_only=True)
    centres = [49.5, 149.5, 249.5]
    F0b = np.array([np.interp(np.arange(T), centres,
                              [np.percentile(r[i * 100:(i + 1) * 100], q) for i in range(3)])
                    for r in F])
    np.testing.assert_allclose(fast, F - F0b, atol=1e-12)
    # running_percentile itself matches the explicit windows, even lengths too
    x = rng.normal(size=(3, 50))
    for win, qq in ((8, 30.0), (5, 50.0)):
        p = lambda r: np.pad(r, (win // 2, win - 1 - win // 2), mode="symmetric")  # noqa: E731
        ref = np.array([[np.percentile(p(r)[t:t + win], qq) for t in range(50)] for r in x])
        np.testing.assert_allclose(running_percentile(x, qq, win).numpy(), ref, atol=1e-12)


def test_detrend_df_f_auto_percentile_is_the_mode():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, (1, 3000))
    spikes = np.zeros((1, 3000))
    spikes[0, rng.choice(3000, 600, replace=False)] = rng.uniform(5, 30, 600)
    x = base + spikes
    q = mode_percentile(x)[0]
    # baseline mode at 0: about half of the 2400 quiet frames lie below it
    assert 30 < q < 50
    A = sp.csc_matrix(np.ones((4, 1)) / 2)
    dff = detrend_df_f(A, np.ones((4, 1)), x, np.full((1, 3000), 3.0), frames_window=None)
    F0 = np.percentile(x[0], q)
    np.testing.assert_allclose(dff, (x - F0) / (2 * 3.0 + F0))
    assert abs(np.median(dff[0, spikes[0] == 0])) < 0.05


@pytest.mark.gpu
def test_evaluation_gpu_matches_cpu(cells_and_artefacts, evaluated):
    d = cells_and_artefacts
    gpu = evaluate_components(d["movie"], d["A"], d["C"], d["b"], d["f"], d["YrA"],
                              d["dims"], FR, DECAY, {}, use_cuda=True, gSig=(5, 5))
    np.testing.assert_allclose(gpu["SNR_comp"], evaluated["SNR_comp"], rtol=1e-6)
    np.testing.assert_allclose(gpu["r_values"], evaluated["r_values"], atol=1e-4)
    np.testing.assert_allclose(gpu["cnn_preds"], evaluated["cnn_preds"], atol=1e-4)
    np.testing.assert_array_equal(gpu["idx_components"], evaluated["idx_components"])
    x = np.random.default_rng(0).normal(size=(4, 700)) + 3
    A = sp.csc_matrix(np.ones((5, 4)))
    np.testing.assert_allclose(
        detrend_df_f(A, np.ones((5, 1)), x, np.ones((1, 700)), frames_window=101,
                     use_cuda=True),
        detrend_df_f(A, np.ones((5, 1)), x, np.ones((1, 700)), frames_window=101), atol=1e-9)
