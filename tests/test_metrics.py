"""Metrics score known answers as they must."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from gpu_cnmf.errors import ParameterError
from gpu_cnmf.metrics import (binary_masks, crispness, frame_correlations, jaccard_distance,
                              registration_error, roi_f1, spike_correlation,
                              trace_correlation)
from gpu_cnmf.synthetic import make_movie


@pytest.fixture(scope="module")
def truth():
    _, tr = make_movie(dims=(96, 96), n_frames=300, n_neurons=30, seed=11)
    return tr


def test_perfect_answer(truth):
    r = roi_f1(truth.A, truth.A, truth.dims)
    assert r["f1"] == 1 and r["precision"] == 1 and r["recall"] == 1
    assert r["n_true"] == r["n_est"] == 30
    np.testing.assert_array_equal(r["matched_true"], np.arange(30))
    np.testing.assert_array_equal(r["matched_est"], np.arange(30))
    np.testing.assert_allclose(r["cost"], 0)
    np.testing.assert_allclose(trace_correlation(truth.C, truth.C, r["matched_true"],
                                                 r["matched_est"]), 1, atol=1e-6)
    np.testing.assert_allclose(spike_correlation(truth.S, truth.S), 1, atol=1e-6)
    assert registration_error(np.ones((10, 2)), np.ones((10, 2))) == 0


def test_permuted_answer_is_matched_order_free(truth):
    perm = np.random.default_rng(0).permutation(30)
    A_est = truth.A[:, perm] * 3.0          # scale does not matter either
    C_est = truth.C[perm] * 0.5 + 2.0
    r = roi_f1(truth.A, A_est, truth.dims)
    assert r["f1"] == 1
    np.testing.assert_array_equal(perm[r["matched_est"]], r["matched_true"])
    rc = trace_correlation(truth.C, C_est, r["matched_true"], r["matched_est"])
    np.testing.assert_allclose(rc, 1, atol=1e-5)
    # pairing rows by position instead is wrong, and scores low
    wrong = trace_correlation(truth.C, C_est, np.arange(30), np.arange(30))
    assert np.mean(wrong) < 0.3


def test_shifted_footprints_score_low():
    # few neurons, so shifted masks do not land on other neurons by chance
    _, tr = make_movie(dims=(96, 96), n_frames=50, n_neurons=6, min_dist=25, seed=12)
    imgs = tr.footprint_images()
    r = roi_f1(tr.A, np.roll(imgs, (12, 12), axis=(1, 2)), tr.dims)
    assert r["f1"] < 0.2
    # a one-pixel shift still matches every neuron
    r = roi_f1(tr.A, np.roll(imgs, 1, axis=2), tr.dims)
    assert r["f1"] == 1


def test_dropping_half_halves_recall(truth):
    keep = np.arange(0, 30, 2)
    r = roi_f1(truth.A, truth.A[:, keep], truth.dims)
    assert r["recall"] == 0.5 and r["precision"] == 1
    assert np.isclose(r["f1"], 2 * 0.5 / 1.5)
    np.testing.assert_array_equal(r["matched_true"], keep)


def test_junk_lowers_precision(truth):
    rng = np.random.default_rng(1)
    junk = sp.random(truth.A.shape[0], 10, density=0.05, random_state=rng, format="csc")
    r = roi_f1(truth.A, sp.hstack([truth.A, junk]).tocsc(), truth.dims)
    assert r["recall"] == 1 and np.isclose(r["precision"], 30 / 40)
    assert r["n_est"] == 40


def test_dense_sparse_stack_and_torch_inputs_agree(truth):
    dense = truth.A.toarray()
    stack = truth.footprint_images()
    ref = roi_f1(truth.A, truth.A[:, ::-1], truth.dims)
    for est in (dense[:, ::-1], stack[::-1], torch.from_numpy(dense[:, ::-1].copy())):
        r = roi_f1(truth.A, est, truth.dims)
        np.testing.assert_array_equal(r["matched_est"], ref["matched_est"])
        assert r["f1"] == 1


def test_masks_thresholds(truth):
    M = binary_masks(truth.A, truth.dims, thr=0.2)
    A = truth.A.toarray()
    np.testing.assert_array_equal(M.toarray(), A >= 0.2 * A.max(0))
    Mn = binary_masks(truth.A, truth.dims, thr=0.9, method="nrg")
    for k in range(5):
        a = A[:, k]
        kept = Mn[:, k].toarray().ravel()
        assert (a[kept] ** 2).sum() >= 0.9 * (a ** 2).sum()
        assert a[kept].min() >= a[~kept].max()
    D = jaccard_distance(M, M)
    assert np.allclose(np.diag(D), 0) and D.min() >= 0 and D.max() <= 1


def test_max_cost_controls_matching(truth):
    imgs = truth.footprint_images()
    moved = np.roll(imgs, 3, axis=1)
    loose = roi_f1(truth.A, moved, truth.dims, max_cost=0.9)
    strict = roi_f1(truth.A, moved, truth.dims, max_cost=0.05)
    assert loose["f1"] > strict["f1"]
    assert np.all(loose["cost"] <= 0.9)


def test_empty_answer():
    A = sp.random(100, 5, density=0.2, format="csc", random_state=0)
    r = roi_f1(A, sp.csc_matrix((100, 0)), (10, 10))
    assert r["f1"] == 0 and r["recall"] == 0 and r["n_est"] == 0


def test_spike_correlation_binning():
    rng = np.random.default_rng(2)
    S = (rng.random((5, 400)) < 0.05).astype(float)
    late = np.roll(S, 1, axis=1)
    late[:, 0] = 0
    assert spike_correlation(S, late).mean() < 0.2
    # one frame late, summed in bins of 4: most spikes land in the same bin
    assert spike_correlation(S, late, bin_size=4).mean() > 0.6


def test_registration_error():
    T = 50
    true = np.random.default_rng(3).normal(size=(T, 2))
    est = true + np.array([0.3, 0.4])
    assert np.isclose(registration_error(true, est), 0.5)
    assert np.isclose(registration_error(true, est, subtract_mean=True), 0, atol=1e-12)
    flow = np.broadcast_to(true[:, :, None, None], (T, 2, 8, 8)).copy()
    assert np.isclose(registration_error(flow, est), 0.5)
    assert np.isclose(registration_error(est, flow), 0.5)
    bad = flow.copy()
    bad[:, :, 0, :] += 10                  # wrong only on the border row
    assert registration_error(flow, bad, crop=1) == 0
    assert registration_error(flow, bad) > 1
    with pytest.raises(ParameterError):
        registration_error(true, est[:10])
    with pytest.raises(ParameterError):
        registration_error(true[:, :1], est[:, :1])


def test_crispness_and_frame_correlations(truth):
    from scipy import ndimage
    img = truth.footprint_images().sum(0)
    assert crispness(img) > crispness(ndimage.gaussian_filter(img, 2))
    mov = np.stack([img, -img, img + 1, 2 * img])
    np.testing.assert_allclose(frame_correlations(mov, img), [1, -1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(frame_correlations(mov, img, chunk=3), [1, -1, 1, 1],
                               atol=1e-12)
    assert np.isclose(crispness(mov[[0, 2]]), crispness(img + 0.5))
    with pytest.raises(ParameterError):
        frame_correlations(mov, img[:5])


def test_bad_inputs(truth):
    with pytest.raises(ParameterError):
        roi_f1(truth.A, truth.A, (10, 10))
    with pytest.raises(ParameterError):
        roi_f1(truth.A, truth.A, truth.dims, max_cost=2)
    with pytest.raises(ParameterError):
        binary_masks(truth.A, method="median")
    with pytest.raises(ParameterError):
        trace_correlation(truth.C, truth.C[:, :10])


def test_roi_f1_leaves_its_inputs_alone():
    """Scoring must not touch the caller's footprints: a float32 csc (as
    CNMF returns) converted to float64 shares its index arrays, and sorting
    them in place once scrambled the caller's matrix."""
    import scipy.sparse as sp
    from gpu_cnmf.metrics import roi_f1

    rng = np.random.default_rng(0)
    dense = np.where(rng.random((400, 6)) < 0.2, rng.random((400, 6)), 0).astype(np.float32)
    A = sp.csc_matrix(dense)
    for k in range(A.shape[1]):          # unsorted row indices, as hstack/slicing can leave
        lo, hi = A.indptr[k], A.indptr[k + 1]
        A.indices[lo:hi], A.data[lo:hi] = A.indices[lo:hi][::-1].copy(), A.data[lo:hi][::-1].copy()
    A.has_sorted_indices = False
    before = A.toarray().copy()
    roi_f1(A, A, (20, 20))
    np.testing.assert_array_equal(A.toarray(), before)
