"""CNMF end to end on small synthetic movies, scored against ground truth."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from gpu_cnmf.cnmf import CNMF, Estimates
from gpu_cnmf.errors import DeviceError, MovieError, ParameterError
from gpu_cnmf.metrics import roi_f1, trace_correlation
from gpu_cnmf.params import CNMFParams
from gpu_cnmf.synthetic import make_movie

DIMS = (96, 96)
N_NEURONS = 24


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These movies are small: one thread avoids OpenMP oversubscription
    when the suite shares the machine (the numbers are the same)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def movie():
    mov, truth = make_movie("2p", dims=DIMS, n_frames=600, n_neurons=N_NEURONS, p=1, seed=0)
    return mov, truth


def _params(**groups):
    p = CNMFParams()
    p.change_params({"init": {"K": N_NEURONS, "gSig": [5, 5]}, "temporal": {"p": 1},
                     "patch": {"only_init": False}})
    if groups:
        p.change_params(groups)
    return p


def _score(truth, est):
    r = roi_f1(truth.A, est.A, DIMS)
    c = trace_correlation(truth.C, est.C, r["matched_true"], r["matched_est"])
    return r, np.median(c)


def _check_estimates(est, T):
    K = est.A.shape[1]
    assert isinstance(est, Estimates) and sp.isspmatrix_csc(est.A)
    assert est.A.shape[0] == np.prod(DIMS) and est.dims == DIMS
    assert est.C.shape == (K, T) and est.YrA.shape == (K, T) and est.S.shape == (K, T)
    assert est.b.shape[0] == np.prod(DIMS) and est.f.shape == (est.b.shape[1], T)
    assert est.g.shape == (K, 1) and est.bl.shape == (K,) and est.neurons_sn.shape == (K,)
    assert est.sn.shape == (np.prod(DIMS),) and (est.sn > 0).all()
    assert (est.A.data >= 0).all() and (est.C >= 0).all()
    np.testing.assert_allclose(sp.linalg.norm(est.A, axis=0), 1, rtol=1e-4)


def test_fit_full_fov_recovers_neurons(movie):
    mov, truth = movie
    cnm = CNMF(1, params=_params()).fit(mov)
    r, med = _score(truth, cnm.estimates)
    assert r["f1"] >= 0.9, r
    assert med >= 0.9
    _check_estimates(cnm.estimates, mov.shape[0])
    cnm2 = cnm.refit(mov)
    assert cnm2 is not cnm and cnm2.params.get("patch", "rf") is None
    r2, med2 = _score(truth, cnm2.estimates)
    assert r2["f1"] >= 0.9 and med2 >= 0.9


def test_patches_then_refit(movie):
    mov, truth = movie
    p = _params(init={"K": 12}, patch={"rf": 32, "stride": 16, "only_init": True})
    cnm = CNMF(1, params=p).fit(mov)
    r, med = _score(truth, cnm.estimates)
    assert r["f1"] >= 0.9 and med >= 0.9, (r, med)
    cnm2 = cnm.refit(mov)
    r2, med2 = _score(truth, cnm2.estimates)
    assert r2["f1"] >= 0.9 and med2 >= 0.9, (r2, med2)
    _check_estimates(cnm2.estimates, mov.shape[0])


def test_seeded_from_true_masks(movie):
    mov, truth = movie
    Ain = truth.A.toarray() > 0.2
    p = _params(merge={"do_merge": False})
    cnm = CNMF(1, params=p, Ain=Ain).fit(mov)
    est = cnm.estimates
    assert est.A.shape[1] == N_NEURONS
    r = np.array([np.corrcoef(truth.C[k], est.C[k])[0, 1] for k in range(N_NEURONS)])
    assert np.median(r) >= 0.95, r
    # same through fit(images, Ain=...)
    est2 = CNMF(1, params=p).fit(mov, Ain=sp.csc_matrix(Ain.astype(float))).estimates
    np.testing.assert_allclose(est2.C, est.C, rtol=1e-3, atol=1e-3 * est.C.max())


def test_memmap_view_is_used_in_place(tmp_path, movie):
    """CaImAn's np.reshape(Yr.T, [T] + dims, order='F') view gives the same
    result as the array, read from the pixels x T file."""
    mov, truth = movie
    T = mov.shape[0]
    mov = mov[:300]
    T = 300
    path = tmp_path / "Yr_d1_96_d2_96_d3_1_order_C_frames_300_.mmap"
    Yr = np.memmap(path, dtype=np.float32, mode="w+", shape=(np.prod(DIMS), T))
    Yr[:] = mov.reshape(T, -1, order="F").T
    Yr.flush()
    Yr = np.memmap(path, dtype=np.float32, mode="r", shape=(np.prod(DIMS), T))
    images = np.reshape(Yr.T, [T] + list(DIMS), order="F")
    from gpu_cnmf.cnmf.products import as_pixel_matrix
    src, layout, dims, _ = as_pixel_matrix(images)
    assert layout == "pixels" and np.shares_memory(src, Yr)
    p = _params(temporal={"p": 1, "ITER": 1})
    a = CNMF(1, params=p).fit(images).estimates
    b = CNMF(1, params=p).fit(np.ascontiguousarray(mov)).estimates
    assert a.A.shape == b.A.shape
    np.testing.assert_allclose(a.C, b.C, rtol=2e-3, atol=2e-3 * b.C.max())


def test_only_init_returns_initialisation(movie):
    mov, truth = movie
    p = _params(patch={"only_init": True})
    est = CNMF(1, params=p).fit(mov).estimates
    assert est.S is None and est.YrA.shape == est.C.shape
    r = roi_f1(truth.A, est.A, DIMS)
    assert r["f1"] >= 0.8


@pytest.mark.parametrize("option", [
    {"spatial": {"method_ls": "nnls_L0"}},
    {"spatial": {"method_exp": "ellipse", "dist": 3, "thr_method": "max", "maxthr": 0.1,
                 "extract_cc": False}},
    {"init": {"method_init": "sparse_NMF", "alpha_snmf": 0.1, "max_iter_snmf": 100}},
])
def test_spatial_and_init_options(movie, option):
    mov, truth = movie
    mov = mov[:300]
    p = _params(temporal={"p": 1, "ITER": 1})
    p.change_params(option)
    est = CNMF(1, params=p).fit(mov).estimates
    r = roi_f1(truth.A, est.A, DIMS)
    assert r["f1"] >= 0.6, (option, r)


def test_errors(movie):
    mov, _ = movie
    with pytest.raises(MovieError):
        CNMF(1, params=_params()).fit(mov[:, :, 0])
    bad = mov[:50].copy()
    bad[3, 5, 5] = np.nan
    with pytest.raises(MovieError, match="NaN"):
        CNMF(1, params=_params()).fit(bad)
    with pytest.raises(ParameterError, match="refit"):
        CNMF(1, params=_params()).refit(mov)
    with pytest.raises(ParameterError, match="method_exp"):
        CNMF(1, params=_params(spatial={"method_exp": "ellipse"}))  # valid
        from gpu_cnmf.cnmf.spatial import expand_supports
        expand_supports(torch.ones((9, 1)), (3, 3), method_exp="nope")
    with pytest.raises(ParameterError):
        CNMF(1, k=5, not_a_keyword=3)
    if not torch.cuda.is_available():
        p = _params()
        p.change_params({"motion": {"use_cuda": True}})
        with pytest.raises(DeviceError):
            CNMF(1, params=p).fit(mov[:50])


def test_legacy_keywords():
    cnm = CNMF(2, k=7, gSig=[3, 3], merge_thresh=0.7, p=1, rf=20, stride=6, gnb=2)
    assert cnm.params.get("init", "K") == 7
    assert cnm.params.get("merge", "thr") == 0.7
    assert cnm.params.get("patch", "rf") == 20
    assert cnm.params.get("init", "nb") == 2


@pytest.mark.gpu
def test_cpu_gpu_agree(movie):
    mov, truth = movie
    ests = {}
    for dev in ["cpu", "cuda"]:
        p = _params()
        p.change_params({"motion": {"use_cuda": dev == "cuda"}})
        ests[dev] = CNMF(1, params=p).fit(mov).estimates
    r = roi_f1(ests["cpu"].A, ests["cuda"].A, DIMS)
    assert r["f1"] >= 0.98
    c = trace_correlation(ests["cpu"].C, ests["cuda"].C, r["matched_true"], r["matched_est"])
    assert np.median(c) >= 0.99


def test_patches_in_parallel_processes_match_sequential(movie):
    mov, truth = movie
    mov = mov[:300]
    p = _params(init={"K": 12}, patch={"rf": 32, "stride": 16, "only_init": True})
    seq = CNMF(1, params=p).fit(mov).estimates
    par = CNMF(2, params=p).fit(mov).estimates
    assert par.A.shape == seq.A.shape
    np.testing.assert_allclose(par.C, seq.C, rtol=1e-3, atol=1e-3 * seq.C.max())


def test_compress_background_rank_above_the_patches():
    """One patch with nb_patch=1 and nb=2: the product has rank 1, so one
    component comes back and it reproduces the patch background."""
    from gpu_cnmf.cnmf.background import compress_background
    g = torch.Generator().manual_seed(0)
    B = torch.rand((300, 1), generator=g)
    Fb = 1.0 + torch.rand((1, 200), generator=g)
    b, f = compress_background(B, Fb, nb=2)
    assert b.shape == (300, 1) and f.shape == (1, 200)
    rel = torch.linalg.norm(b @ f - B @ Fb) / torch.linalg.norm(B @ Fb)
    assert rel < 1e-3
