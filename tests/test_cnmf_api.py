"""CaImAn's object interface around CNMF: save / load_CNMF, and the
Estimates methods (evaluate_components, select/remove, detrend_df_f)."""
import numpy as np
import pytest
import scipy.sparse as sp

from gpu_cnmf import CNMF, CNMFParams, load_CNMF
from gpu_cnmf.metrics import roi_f1
from gpu_cnmf.synthetic import make_movie


@pytest.fixture(scope="module")
def fitted():
    movie, truth = make_movie("2p", dims=(64, 64), n_frames=400, n_neurons=12, seed=3)
    params = CNMFParams(params_dict={"fr": truth.fr, "decay_time": truth.decay_time,
                                     "gSig": [5, 5], "K": 16, "p": 1, "nb": 1,
                                     "only_init": False, "use_cnn": True})
    cnm = CNMF(params=params).fit(movie)
    return movie, truth, cnm


def test_save_load_reproduces_every_array_and_parameter(fitted, tmp_path):
    movie, _, cnm = fitted
    cnm.estimates.evaluate_components(movie, cnm.params)
    path = cnm.save(tmp_path / "r.hdf5")
    back = load_CNMF(path)
    assert back.params == cnm.params
    a, b = cnm.estimates, back.estimates
    assert sp.issparse(b.A) and (a.A != b.A).nnz == 0 and b.A.dtype == a.A.dtype
    for name in ("C", "S", "YrA", "b", "f", "sn", "g", "bl", "c1", "neurons_sn",
                 "idx_components", "idx_components_bad", "SNR_comp", "r_values", "cnn_preds"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
        assert np.asarray(x).dtype == np.asarray(y).dtype, name
    assert tuple(b.dims) == tuple(a.dims)
    assert not list(tmp_path.glob("*.tmp*")), "temporary file left behind"


def test_evaluation_keeps_cells_and_selection_follows(fitted):
    movie, truth, cnm = fitted
    est = cnm.estimates
    est.evaluate_components(movie, cnm.params)
    good, bad = np.asarray(est.idx_components), np.asarray(est.idx_components_bad)
    assert len(good) + len(bad) == est.nr and not set(good) & set(bad)
    before = roi_f1(truth.A, est.A, truth.dims)
    after = roi_f1(truth.A, est.A[:, good], truth.dims)
    assert after["recall"] >= before["recall"] - 0.02
    assert after["precision"] >= before["precision"]

    import copy
    kept = copy.deepcopy(est).select_components(use_object=True)
    assert kept.nr == len(good)
    np.testing.assert_array_equal(kept.C, est.C[good])
    dropped = copy.deepcopy(est).remove_components(bad)
    assert (dropped.A != kept.A).nnz == 0


def test_detrend_df_f_sets_F_dff(fitted):
    _, _, cnm = fitted
    est = cnm.estimates
    est.detrend_df_f(frames_window=100)
    assert est.F_dff.shape == est.C.shape
    # ΔF/F of the raw trace C + YrA: near 0 at rest, following the raw trace
    raw = est.C + est.YrA
    r = [np.corrcoef(est.F_dff[k], raw[k])[0, 1] for k in range(est.nr)]
    assert np.median(r) > 0.95
    assert abs(np.median(np.median(est.F_dff, axis=1))) < 0.1
    est.detrend_df_f(frames_window=100, use_residuals=False)
    r = [np.corrcoef(est.F_dff[k], est.C[k])[0, 1] for k in range(est.nr) if est.C[k].std() > 0]
    assert np.median(r) > 0.95


def test_select_without_evaluation_is_a_clear_error(fitted):
    from gpu_cnmf.cnmf import Estimates
    from gpu_cnmf.errors import ParameterError
    with pytest.raises(ParameterError, match="evaluate_components"):
        Estimates(A=sp.csc_matrix((4, 1)), dims=(2, 2)).select_components(use_object=True)
