"""CaImAn's scripts on gpu_cnmf with only their imports changed.

Each script below is written the way CaImAn's demos are (load ->
setup_cluster -> MotionCorrect -> save_memmap(order='C') -> load_memmap ->
CNMF fit -> refit -> evaluate_components -> select_components ->
detrend_df_f -> save -> load_CNMF -> stop_server), uses only CaImAn's calls,
has no ``if __name__ == '__main__'`` guard, and runs as a real script in a
subprocess. Its results are scored against the synthetic truth (ROI F1,
trace correlation). Replacing ``gpu_cnmf.caiman`` by ``caiman`` in the import
lines gives a script CaImAn runs.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import tifffile

from gpu_cnmf.metrics import roi_f1, trace_correlation
from gpu_cnmf.synthetic import make_movie

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, folder: Path, name: str):
    """Write ``script`` to ``folder/name`` and run it there as ``python name``."""
    assert "__main__" not in script
    for line in script.splitlines():
        if line.startswith(("import ", "from ")):
            # only the import lines differ from CaImAn's script
            assert re.match(r"(import numpy as np|(import|from) gpu_cnmf\.caiman\b)", line), line
    path = folder / name
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    res = subprocess.run([sys.executable, name], cwd=folder, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, f"{name} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res.stdout


def _score(truth, est_A, est_C):
    r = roi_f1(truth.A, est_A, truth.dims)
    corr = trace_correlation(truth.C, est_C, r["matched_true"], r["matched_est"])
    return r, float(np.median(corr)) if len(corr) else 0.0


# --------------------------------------------------------------------- 2p ---

SCRIPT_2P = '''\
import numpy as np

import gpu_cnmf.caiman as cm
from gpu_cnmf.caiman.motion_correction import MotionCorrect
from gpu_cnmf.caiman.source_extraction.cnmf import cnmf as cnmf
from gpu_cnmf.caiman.source_extraction.cnmf import params as params

fnames = ['movie_2p.tif']
fr = 30
decay_time = 0.4
opts_dict = {'fnames': fnames, 'fr': fr, 'decay_time': decay_time, 'dxy': (1., 1.),
             'pw_rigid': False, 'max_shifts': (6, 6), 'strides': (48, 48),
             'overlaps': (24, 24), 'max_deviation_rigid': 3, 'border_nan': 'copy'}
opts = params.CNMFParams(params_dict=opts_dict)

m_orig = cm.load_movie_chain(fnames)
c, dview, n_processes = cm.cluster.setup_cluster(backend='multiprocessing', n_processes=None,
                                                 single_thread=False)
mc = MotionCorrect(fnames, dview=dview, **opts.get_group('motion'))
mc.motion_correct(save_movie=True)
m_rig = cm.load(mc.fname_tot_rig)
np.save('shifts_rig.npy', mc.shifts_rig)
border_to_0 = 0 if mc.border_nan == 'copy' else mc.border_to_0
fname_new = cm.save_memmap(mc.mmap_file, base_name='memmap_', order='C',
                           border_to_0=border_to_0)
Yr, dims, T = cm.load_memmap(fname_new)
images = np.reshape(Yr.T, [T] + list(dims), order='F')

cm.stop_server(dview=dview)
c, dview, n_processes = cm.cluster.setup_cluster(backend='multiprocessing', n_processes=None,
                                                 single_thread=False)
opts.change_params({'p': 1, 'nb': 2, 'rf': 20, 'stride': 8, 'K': 6, 'gSig': [5, 5],
                    'method_init': 'greedy_roi', 'rolling_sum': True, 'only_init': True,
                    'ssub': 1, 'tsub': 1, 'merging': {'merge_thr': 0.85}})
cnm = cnmf.CNMF(n_processes, params=opts, dview=dview)
cnm = cnm.fit(images)
cnm2 = cnm.refit(images, dview=dview)
cnm2.params.set('quality', {'min_SNR': 2, 'rval_thr': 0.85, 'use_cnn': True,
                            'min_cnn_thr': 0.99, 'cnn_lowest': 0.1})
cnm2.estimates.evaluate_components(images, cnm2.params, dview=dview)
print('accepted', len(cnm2.estimates.idx_components), 'of', cnm2.estimates.A.shape[1])
cnm2.estimates.select_components(use_object=True)
cnm2.estimates.detrend_df_f(quantileMin=8, frames_window=250)
cnm2.save('results_2p.hdf5')
cnm3 = cnmf.load_CNMF('results_2p.hdf5')
assert cnm3.estimates.A.shape == cnm2.estimates.A.shape
cm.stop_server(dview=dview)
'''


def test_2p_pipeline_script(tmp_path):
    movie, truth = make_movie("2p", dims=(64, 64), n_frames=200, n_neurons=12,
                              motion="rigid", seed=4)
    tifffile.imwrite(tmp_path / "movie_2p.tif", movie)
    out = _run(SCRIPT_2P, tmp_path, "demo_pipeline.py")
    assert "accepted" in out
    from gpu_cnmf.caiman.source_extraction.cnmf.cnmf import load_CNMF
    est = load_CNMF(str(tmp_path / "results_2p.hdf5")).estimates
    r, corr = _score(truth, est.A, est.C)
    assert r["f1"] >= 0.85, r
    assert corr >= 0.9
    assert est.F_dff is not None and est.F_dff.shape == est.C.shape
    # motion correction recovered the simulated shifts (up to a constant)
    shifts = np.load(tmp_path / "shifts_rig.npy")
    err = shifts - truth.shifts
    assert np.abs(err - np.median(err, 0)).mean() < 0.3
    assert list(tmp_path.glob("memmap__d1_64_d2_64_d3_1_order_C_frames_200_.mmap"))


# --------------------------------------------------------------------- 1p ---

SCRIPT_1P = '''\
import numpy as np

import gpu_cnmf.caiman as cm
from gpu_cnmf.caiman.motion_correction import MotionCorrect
from gpu_cnmf.caiman.source_extraction.cnmf import cnmf as cnmf
from gpu_cnmf.caiman.source_extraction.cnmf import params as params

fnames = ['movie_1p.tif']
fr = 30
decay_time = 0.4
motion_correct = True
pw_rigid = False
gSig_filt = (3, 3)
max_shifts = (5, 5)
border_nan = 'copy'
mc_dict = {'fnames': fnames, 'fr': fr, 'decay_time': decay_time, 'pw_rigid': pw_rigid,
           'max_shifts': max_shifts, 'gSig_filt': gSig_filt, 'strides': (48, 48),
           'overlaps': (24, 24), 'max_deviation_rigid': 3, 'border_nan': border_nan}
opts = params.CNMFParams(params_dict=mc_dict)

c, dview, n_processes = cm.cluster.setup_cluster(backend='multiprocessing', n_processes=None,
                                                 single_thread=False)
if motion_correct:
    mc = MotionCorrect(fnames, dview=dview, **opts.get_group('motion'))
    mc.motion_correct(save_movie=True)
    fname_mc = mc.fname_tot_els if pw_rigid else mc.fname_tot_rig
    if pw_rigid:
        bord_px = np.ceil(np.maximum(np.max(np.abs(mc.x_shifts_els)),
                                     np.max(np.abs(mc.y_shifts_els)))).astype(int)
    else:
        bord_px = np.ceil(np.max(np.abs(mc.shifts_rig))).astype(int)
    bord_px = 0 if border_nan == 'copy' else bord_px
    fname_new = cm.save_memmap(fname_mc, base_name='memmap_', order='C', border_to_0=bord_px)
else:
    fname_new = cm.save_memmap(fnames, base_name='memmap_', order='C', border_to_0=0)

Yr, dims, T = cm.load_memmap(fname_new)
images = Yr.T.reshape((T,) + dims, order='F')

p = 1
K = None
gSig = (4, 4)
gSiz = (9, 9)
Ain = None
merge_thr = .7
rf = None
stride_cnmf = 20
tsub = 1
ssub = 1
low_rank_background = None
gnb = 0
nb_patch = 0
min_corr = .8
min_pnr = 5
ssub_B = 2
ring_size_factor = 1.5
opts.change_params(params_dict={'dims': dims, 'method_init': 'corr_pnr', 'K': K, 'gSig': gSig,
                                'gSiz': gSiz, 'merge_thr': merge_thr, 'p': p, 'tsub': tsub,
                                'ssub': ssub, 'rf': rf, 'stride': stride_cnmf,
                                'only_init': True, 'nb': gnb, 'nb_patch': nb_patch,
                                'method_deconvolution': 'oasis',
                                'low_rank_background': low_rank_background,
                                'update_background_components': True, 'min_corr': min_corr,
                                'min_pnr': min_pnr, 'normalize_init': False,
                                'center_psf': True, 'ssub_B': ssub_B,
                                'ring_size_factor': ring_size_factor, 'del_duplicates': True,
                                'border_pix': 0})
cnm = cnmf.CNMF(n_processes=n_processes, dview=dview, Ain=Ain, params=opts)
cnm.fit(images)

min_SNR = 2.5
r_values_min = 0.85
cnm.params.set('quality', {'min_SNR': min_SNR, 'rval_thr': r_values_min, 'use_cnn': False})
cnm.estimates.evaluate_components(images, cnm.params, dview=dview)
print(' ***** ')
print('Number of total components: ', len(cnm.estimates.C))
print('Number of accepted components: ', len(cnm.estimates.idx_components))
cnm.estimates.select_components(use_object=True)
cnm.save('results_1p.hdf5')
cm.stop_server(dview=dview)
'''


def test_cnmfe_pipeline_script(tmp_path):
    movie, truth = make_movie("1p", dims=(64, 64), n_frames=300, n_neurons=10, seed=2)
    tifffile.imwrite(tmp_path / "movie_1p.tif", movie)
    out = _run(SCRIPT_1P, tmp_path, "demo_pipeline_cnmfE.py")
    assert "Number of accepted components" in out
    from gpu_cnmf.caiman.source_extraction.cnmf.cnmf import load_CNMF
    est = load_CNMF(str(tmp_path / "results_1p.hdf5")).estimates
    r, corr = _score(truth, est.A, est.C)
    assert r["f1"] >= 0.8, r
    assert corr >= 0.85
    assert est.W is not None and est.b0 is not None


# ----------------------------------------------------------------- seeded ---

SCRIPT_SEEDED = '''\
import numpy as np

import gpu_cnmf.caiman as cm
from gpu_cnmf.caiman.source_extraction.cnmf import cnmf as cnmf
from gpu_cnmf.caiman.source_extraction.cnmf import params as params

fnames = ['movie_seeded.tif']
opts = params.CNMFParams(params_dict={'fnames': fnames, 'fr': 30, 'decay_time': 0.4, 'p': 1,
                                      'nb': 2, 'gSig': [5, 5], 'rf': None, 'only_init': False,
                                      'merge_thr': 0.85, 'min_SNR': 2, 'rval_thr': 0.8,
                                      'use_cnn': False})
c, dview, n_processes = cm.cluster.setup_cluster(backend='multiprocessing', n_processes=1,
                                                 single_thread=True)
fname_new = cm.save_memmap(fnames, base_name='memmap_', order='C')
Yr, dims, T = cm.load_memmap(fname_new)
images = np.reshape(Yr.T, [T] + list(dims), order='F')

masks = np.load('masks.npy')           # (K, d1, d2) binary masks, e.g. drawn by hand
Ain = np.reshape(masks.transpose(1, 2, 0), (-1, masks.shape[0]), order='F').astype(bool)
cnm_seeded = cnmf.CNMF(n_processes, params=opts, dview=dview, Ain=Ain)
cnm_seeded.fit(images)
cnm_seeded.estimates.evaluate_components(images, cnm_seeded.params, dview=dview)
cnm_seeded.estimates.threshold_spatial_components(maxthr=0.3)
cnm_seeded.estimates.remove_small_large_neurons(min_size_neuro=10, max_size_neuro=500)
cnm_seeded.estimates.remove_duplicates(r_values=cnm_seeded.estimates.r_values)
print('kept', len(cnm_seeded.estimates.idx_components), 'of', cnm_seeded.estimates.A.shape[1])
cnm_seeded.estimates.select_components(use_object=True)
cnm_seeded.estimates.detrend_df_f(quantileMin=8, frames_window=250)
cnm_seeded.save('results_seeded.hdf5')
cm.stop_server(dview=dview)
'''


def test_seeded_cnmf_script(tmp_path):
    movie, truth = make_movie("2p", dims=(64, 64), n_frames=300, n_neurons=12, seed=6)
    tifffile.imwrite(tmp_path / "movie_seeded.tif", movie)
    imgs = truth.footprint_images()
    masks = imgs > 0.3 * imgs.reshape(len(imgs), -1).max(1)[:, None, None]
    np.save(tmp_path / "masks.npy", masks)
    _run(SCRIPT_SEEDED, tmp_path, "demo_seeded_CNMF.py")
    from gpu_cnmf.caiman.source_extraction.cnmf.cnmf import load_CNMF
    est = load_CNMF(str(tmp_path / "results_seeded.hdf5")).estimates
    r, corr = _score(truth, est.A, est.C)
    assert r["f1"] >= 0.9, r
    assert corr >= 0.9
    # seeded: component k is mask k (those kept stay in order)
    assert est.discarded_components is None or est.discarded_components.nr <= 2


# ------------------------------------------------------------ unit checks ---

@pytest.fixture(scope="module")
def small_fit():
    """A small two-photon CNMF fit through the façade (no patches)."""
    from gpu_cnmf.caiman.source_extraction.cnmf import cnmf, params
    movie, truth = make_movie("2p", dims=(48, 48), n_frames=200, n_neurons=8, seed=11)
    opts = params.CNMFParams(params_dict={"fr": 30, "decay_time": 0.4, "p": 1, "nb": 1,
                                          "gSig": [5, 5], "K": 10, "rf": None,
                                          "only_init": False, "use_cnn": True})
    cnm = cnmf.CNMF(1, params=opts).fit(movie)
    return movie, truth, cnm


def test_params_speak_caiman():
    from gpu_cnmf.caiman.source_extraction.cnmf.params import CNMFParams
    from gpu_cnmf.errors import ParameterError
    p = CNMFParams(params_dict={"merging": {"merge_thr": 0.7}, "gnb": 2, "k": 7,
                                "online": {"init_batch": 200}, "block_size_spat": 100})
    assert p.merge["thr"] == 0.7 and p.get("merging", "merge_thr") == 0.7
    assert p.get_group("merging")["merge_thr"] == 0.7
    assert p.init["nb"] == p.spatial["nb"] == p.temporal["nb"] == 2 and p.init["K"] == 7
    assert p.spatial["block_size"] == 100
    assert p.unused() == {"online.init_batch": 200} and p.online["init_batch"] == 200
    with pytest.raises(ParameterError, match="legacy"):
        p.change_params({"gnb": 1}, allow_legacy=False)
    with pytest.raises(ParameterError, match="did you mean"):
        p.set("quality", {"min_snr": 3})
    p.set("quality", {"my_flag": 3}, set_if_not_exists=True)
    assert p.unused()["quality.my_flag"] == 3
    p.set("quality", {"use_ecc": False})          # CaImAn's value that means "off"
    with pytest.raises(NotImplementedError, match="use_ecc.*nearest"):
        p.set("quality", {"use_ecc": True})
    p.check_consistency()


def test_params_read_caimans_json_files(tmp_path):
    import json
    from gpu_cnmf.caiman.source_extraction.cnmf.params import CNMFParams
    # the shape of CaImAn's parameter files: groups of names, JSON lists for tuples
    doc = {"data": {"fr": 15, "decay_time": 0.6, "dxy": [2.0, 2.0]},
           "motion": {"max_shifts": [4, 4], "pw_rigid": True, "strides": [48, 48],
                      "overlaps": [24, 24]},
           "init": {"K": 12, "gSig": [3, 3], "nb": 2},
           "merging": {"merge_thr": 0.9},
           "online": {"init_batch": 300, "epochs": 2},
           "quality": {"min_SNR": 3.0, "use_cnn": False}}
    (tmp_path / "caiman.json").write_text(json.dumps(doc))
    p = CNMFParams(params_from_file=str(tmp_path / "caiman.json"))
    assert p.data["fr"] == 15 and p.motion["pw_rigid"] is True and p.init["K"] == 12
    assert p.merge["thr"] == 0.9 and p.online["epochs"] == 2 and p.quality["use_cnn"] is False
    q = CNMFParams()
    q.change_params_from_jsonfile(str(tmp_path / "caiman.json"))
    assert q == p
    p.to_jsonfile(str(tmp_path / "ours.json"))
    assert CNMFParams(params_from_file=str(tmp_path / "ours.json")) == p


def test_movie_keeps_its_frame_rate_and_resizes_by_area(tmp_path):
    import gpu_cnmf.caiman as cm
    rng = np.random.default_rng(0)
    m = cm.movie(rng.random((40, 12, 16), dtype=np.float32), fr=20)
    sub = m[5:15]
    assert isinstance(sub, cm.movie) and sub.fr == 20 and sub.shape == (10, 12, 16)
    assert isinstance(m + 1, cm.movie) and (m * 2).fr == 20
    r = m.resize(0.5, 0.5, 1)             # fx: columns, fy: rows
    assert r.shape == (40, 6, 8)
    np.testing.assert_allclose(r, np.asarray(m).reshape(40, 6, 2, 8, 2).mean((2, 4)), atol=1e-6)
    t = m.resize(1, 1, 0.5)
    assert t.shape == (20, 12, 16) and t.fr == 10
    np.testing.assert_allclose(t, np.asarray(m).reshape(20, 2, 12, 16).mean(1), atol=1e-6)
    assert m.resize(fx=1.5, fy=1.5).shape == (40, 18, 24)
    np.testing.assert_allclose(m.bin_median(window=10),
                               np.median(np.asarray(m).reshape(4, 10, 12, 16).mean(1), 0),
                               atol=1e-6)
    joined = cm.concatenate([m, m[:5]], axis=0)
    assert isinstance(joined, cm.movie) and joined.shape[0] == 45 and joined.fr == 20
    with pytest.raises(NotImplementedError, match="nearest"):
        m.motion_correct()
    with pytest.warns(RuntimeWarning, match="no display"):
        assert m.play() is None


def test_computeDFF_removes_a_running_baseline():
    import gpu_cnmf.caiman as cm
    T, fr = 600, 20
    t = np.arange(T) / fr
    base = 10 + 2 * t / t[-1]                      # slow drift
    spikes = np.zeros(T)
    spikes[::50] = 5
    F = base[:, None, None] + spikes[:, None, None] + np.zeros((T, 4, 4))
    m = cm.movie(F.astype(np.float32), fr=fr)
    dff, F0 = m.computeDFF(secsWindow=5, quantilMin=8, method="delta_f_over_f")
    assert isinstance(dff, cm.movie) and dff.shape == m.shape
    # a low percentile of a rising window sits a little below its middle
    assert np.abs(np.asarray(F0)[:, 0, 0] - base).max() < 0.2
    quiet = spikes == 0
    assert np.abs(np.asarray(dff)[quiet, 0, 0]).max() < 0.02
    assert np.asarray(dff)[~quiet, 0, 0].min() > 0.35


def test_load_save_and_memmap_names(tmp_path):
    import gpu_cnmf.caiman as cm
    rng = np.random.default_rng(1)
    m = cm.movie(rng.random((30, 10, 12), dtype=np.float32) + 1, fr=10)
    for ext in ("tif", "h5", "npy", "npz"):
        path = m.save(str(tmp_path / f"m.{ext}"))
        back = cm.load(path, fr=10)
        assert isinstance(back, cm.movie) and back.fr == 10
        np.testing.assert_array_equal(np.asarray(back), np.asarray(m))
    mm = m.save(str(tmp_path / "m.mmap"), order="C")
    assert mm.endswith("m_d1_10_d2_12_d3_1_order_C_frames_30_.mmap")
    np.testing.assert_array_equal(np.asarray(cm.load(mm)), np.asarray(m))
    np.testing.assert_array_equal(cm.load(str(tmp_path / "m.tif"), subindices=slice(5, 9)),
                                  np.asarray(m)[5:9])
    chain = cm.load_movie_chain([str(tmp_path / "m.tif"), str(tmp_path / "m.h5")])
    assert chain.shape == (60, 10, 12)

    tif = str(tmp_path / "m.tif")
    fF = cm.save_memmap([tif], base_name="Yr")                      # CaImAn's default: F
    assert os.path.basename(fF) == "Yr_d1_10_d2_12_d3_1_order_F_frames_30_.mmap"
    fC = cm.save_memmap([tif], base_name="memmap_", order="C", border_to_0=2, add_to_movie=1)
    Yr, dims, T = cm.load_memmap(fC)
    assert dims == (10, 12) and T == 30 and Yr.shape == (120, 30)
    frames = np.reshape(Yr.T, [T] + list(dims), order="F")
    np.testing.assert_allclose(frames[:, 2:-2, 2:-2], np.asarray(m)[:, 2:-2, 2:-2] + 1)
    assert not frames[:, :2].any() and not frames[:, :, -2:].any()
    fE = cm.save_memmap([tif], base_name="edit", order="C", remove_init=5,
                        idx_xy=(slice(0, 8), slice(2, 12)), resize_fact=(0.5, 0.5, 1))
    Yr, dims, T = cm.load_memmap(fE)
    assert (dims, T) == ((4, 5), 25)
    ref = np.asarray(m)[5:, 0:8, 2:12].reshape(25, 4, 2, 5, 2).mean((2, 4))
    np.testing.assert_allclose(np.reshape(Yr.T, (T,) + dims, order="F"), ref, atol=1e-5)
    joined = cm.save_memmap_join([fF, fF])
    assert os.path.basename(joined) == "Yr-#-2_d1_10_d2_12_d3_1_order_C_frames_60_.mmap"
    assert cm.load_memmap(joined)[2] == 60


def test_save_memmap_applies_xy_shifts(tmp_path):
    import gpu_cnmf.caiman as cm
    movie, truth = make_movie("2p", dims=(48, 48), n_frames=60, n_neurons=6, motion="rigid",
                              seed=3)
    tif = str(tmp_path / "moving.tif")
    tifffile.imwrite(tif, movie)
    fname = cm.save_memmap([tif], base_name="shifted", order="C", xy_shifts=truth.shifts)
    Yr, dims, T = cm.load_memmap(fname)
    fixed = np.reshape(Yr.T, (T,) + dims, order="F")
    inner = (slice(None), slice(8, -8), slice(8, -8))
    clean = truth.denoised()        # motion-free, noise-free frames
    before = np.abs(movie[inner] - clean[inner]).mean()
    after = np.abs(fixed[inner] - clean[inner]).mean()
    assert after < 0.75 * before
    r = np.corrcoef(fixed[inner].mean(0).ravel(), clean[inner].mean(0).ravel())[0, 1]
    assert r > 0.99


def test_setup_cluster_backends():
    import gpu_cnmf.caiman as cm
    c, dview, n = cm.cluster.setup_cluster(backend="multiprocessing", n_processes=3)
    assert c is None and dview is None and n == 3
    assert cm.cluster.setup_cluster(backend="local", single_thread=True) == (None, None, 1)
    cm.stop_server(dview=None)
    with pytest.raises(NotImplementedError, match="dask"):
        cm.cluster.setup_cluster(backend="ipyparallel")
    pytest.importorskip("dask.distributed")
    c, dview, n = cm.cluster.setup_cluster(backend="dask", n_processes=1)
    try:
        assert dview.submit(lambda x: x + 1, 1).result() == 2 and n == 1
    finally:
        cm.stop_server(dview=dview)
    assert dview.status in ("closed", "closing")


def test_select_discard_restore_and_remove(small_fit):
    import copy
    movie, truth, cnm = small_fit
    est = copy.deepcopy(cnm.estimates)
    K = est.A.shape[1]
    est.detrend_df_f(frames_window=100)
    keep = np.arange(0, K, 2)
    A0, C0, Y0, F0 = est.A.copy(), est.C.copy(), est.YrA.copy(), est.F_dff.copy()
    est.select_components(idx_components=keep)
    assert est.A.shape[1] == len(keep) and est.R is est.YrA
    for name, full in (("C", C0), ("YrA", Y0), ("F_dff", F0)):
        np.testing.assert_array_equal(getattr(est, name), full[keep], err_msg=name)
    gone = np.setdiff1d(np.arange(K), keep)
    np.testing.assert_array_equal(est.discarded_components.C, C0[gone])
    est.restore_discarded_components()
    order = np.concatenate([keep, gone])
    np.testing.assert_array_equal(est.C, C0[order])
    assert (est.A != A0[:, order]).nnz == 0 and est.discarded_components is None
    est.remove_components([0])
    assert est.A.shape[1] == K - 1 and est.discarded_components is None


def test_residuals_background_and_deconvolution(small_fit):
    import copy
    movie, truth, cnm = small_fit
    est = copy.deepcopy(cnm.estimates)
    Yr = np.reshape(movie, (movie.shape[0], -1), order="F").T
    YrA = est.YrA.copy()
    est.compute_residuals(Yr)
    assert np.corrcoef(est.YrA.ravel(), YrA.ravel())[0, 1] > 0.99
    B = est.compute_background(Yr)
    np.testing.assert_allclose(B, est.b @ est.f, rtol=1e-5)
    C0 = est.C.copy()
    cnm2 = copy.deepcopy(cnm)
    cnm2.deconvolve(p=2)
    assert cnm2.estimates.g.shape == (est.A.shape[1], 2)
    r = [np.corrcoef(a, b)[0, 1] for a, b in zip(C0, cnm2.estimates.C) if b.std() > 0]
    assert np.median(r) > 0.9


def test_footprint_filters_and_duplicates(small_fit):
    import copy
    movie, truth, cnm = small_fit
    est = copy.deepcopy(cnm.estimates)
    K = est.A.shape[1]
    # a duplicate of component 0 with a worse score is found and rejected
    est.A = sp.hstack([est.A, est.A[:, 0]]).tocsc()
    for name in ("C", "YrA", "S", "g", "bl", "c1", "neurons_sn"):
        v = getattr(est, name)
        setattr(est, name, np.concatenate([v, v[:1]]))
    scores = np.r_[np.ones(K), 0.5]
    est.threshold_spatial_components(maxthr=0.3)
    size = np.asarray((est.A_thr > 0).sum(0)).ravel()
    assert est.A_thr.shape == est.A.shape and (size > 0).all()
    est.remove_duplicates(predictions=scores)
    assert list(est.idx_duplicates) == [K]
    assert K not in est.idx_components and 0 in est.idx_components
    est.idx_components = None
    est.remove_small_large_neurons(int(np.median(size)), 10 ** 6)
    assert set(est.idx_components) == set(np.flatnonzero(size >= int(np.median(size))))


def test_filter_cnn_and_manual_merge(small_fit):
    import copy
    movie, truth, cnm = small_fit
    est = copy.deepcopy(cnm.estimates)
    params = cnm.params.copy()
    est.evaluate_components(movie, params)
    n_good = len(est.idx_components)
    est.filter_components(movie, params, new_dict={"min_SNR": 1e6, "rval_thr": 1.0,
                                                  "use_cnn": False, "SNR_lowest": 1e6})
    assert len(est.idx_components) == 0 and n_good > 0
    est.evaluate_components_CNN(params)
    assert est.cnn_preds.shape == (est.A.shape[1],)
    K = est.A.shape[1]
    est.manual_merge([[0, 1]], params)
    assert est.A.shape[1] == K - 1 and est.merged_ROIs == [[0, 1]]
    assert est.C.shape == (K - 1, movie.shape[0])
    with pytest.raises(NotImplementedError, match="select_mode"):
        est.filter_components(movie, params, select_mode="Accepted")


def test_single_update_steps_keep_the_fit(small_fit):
    import copy
    movie, truth, cnm = small_fit
    c = copy.deepcopy(cnm)
    before = roi_f1(truth.A, c.estimates.A, truth.dims)["f1"]
    c.update_temporal(movie, p=1)
    c.update_spatial(movie)
    c.merge_comps(movie)
    assert roi_f1(truth.A, c.estimates.A, truth.dims)["f1"] >= before - 0.05
    with pytest.raises(NotImplementedError, match="fit_online"):
        c.fit_online()


def test_save_nwb(small_fit, tmp_path):
    pynwb = pytest.importorskip("pynwb")
    _, _, cnm = small_fit
    path = cnm.estimates.save_NWB(str(tmp_path / "r.nwb"), imaging_rate=30.,
                                  indicator="GCaMP6f", location="V1")
    with pynwb.NWBHDF5IO(path, "r") as io:
        nwb = io.read()
        rois = nwb.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        assert len(rois) == cnm.estimates.A.shape[1]
        series = nwb.processing["ophys"]["Fluorescence"]["RoiResponseSeries"]
        np.testing.assert_allclose(series.data[:], cnm.estimates.C.T)


def test_apply_shifts_movie_to_a_second_channel(tmp_path):
    import gpu_cnmf.caiman as cm
    from gpu_cnmf.caiman.motion_correction import MotionCorrect
    movie, truth = make_movie("2p", dims=(48, 48), n_frames=80, n_neurons=6, motion="rigid",
                              seed=5)
    red = str(tmp_path / "red.tif")
    tifffile.imwrite(red, movie)
    mc = MotionCorrect(red, max_shifts=(6, 6), pw_rigid=False).motion_correct(save_movie=True)
    assert mc.fname_tot_rig == mc.mmap_file and mc.fname_tot_els is None
    green = mc.apply_shifts_movie(red)
    assert isinstance(green, cm.movie) and green.shape == movie.shape
    written = np.asarray(cm.load(mc.fname_tot_rig))
    np.testing.assert_allclose(np.asarray(green), written, atol=1e-3)
    path = mc.apply_shifts_movie(red, save_memmap=True, save_base_name="MC", order="C")
    assert os.path.basename(path) == "MC_d1_48_d2_48_d3_1_order_C_frames_80_.mmap"
    with pytest.raises(NotImplementedError, match="shifts_interpolate"):
        MotionCorrect(red, shifts_interpolate=True)


def _caiman_style_read(path):
    """What CaImAn's load_dict_from_hdf5 gives for a file (its documented
    behaviour: datasets become values, 'NoneType' becomes None, the groups
    'A' and 'W' become sparse matrices, other groups nested dicts)."""
    import h5py

    def walk(g):
        out = {}
        for key, item in g.items():
            if isinstance(item, h5py.Dataset):
                v = item[()]
                out[key] = None if (isinstance(v, bytes) and v == b"NoneType") else v
            elif key in ("A", "W"):
                out[key] = sp.csc_matrix((item["data"][:], item["indices"][:],
                                          item["indptr"][:]), shape=item["shape"][:])
            else:
                out[key] = walk(item)
        return out
    with h5py.File(path, "r") as h5:
        return walk(h5)


# CaImAn's parameter groups and the names of those groups that differ from ours
CAIMAN_GROUPS = {"data", "patch", "preprocess", "init", "spatial", "temporal", "merging",
                 "quality", "online", "motion", "ring_CNN"}


def test_saved_results_use_caimans_names(small_fit, tmp_path):
    import copy
    _, _, cnm = small_fit
    c = copy.deepcopy(cnm)
    c.params.change_params({"online": {"init_batch": 100}}, warn_unused=False)
    path = c.save(str(tmp_path / "r.hdf5"))
    d = _caiman_style_read(path)
    assert set(d["params"]) <= CAIMAN_GROUPS and "merge" not in d["params"]
    assert float(d["params"]["merging"]["merge_thr"]) == c.params.merge["thr"]
    assert "block_size_spat" in d["params"]["spatial"]
    assert "block_size_temp" in d["params"]["temporal"]
    assert int(d["params"]["online"]["init_batch"]) == 100
    est = d["estimates"]
    assert sp.issparse(est["A"]) and (est["A"] != c.estimates.A).nnz == 0
    np.testing.assert_array_equal(est["C"], c.estimates.C)
    assert tuple(d["dims"]) == tuple(c.estimates.dims)


def test_caiman_written_results_open_here(small_fit, tmp_path):
    """A file laid out as CaImAn's cnmf.save writes it (no type attributes,
    CaImAn's group names, its extra fields) opens in load_CNMF."""
    import h5py
    from gpu_cnmf.caiman.source_extraction.cnmf.cnmf import load_CNMF
    _, _, cnm = small_fit
    e = cnm.estimates
    path = tmp_path / "caiman.hdf5"
    with h5py.File(path, "w") as h5:
        h5["dims"] = np.asarray(e.dims)
        h5["dview"] = "NoneType"
        g = h5.create_group("estimates")
        A = sp.csc_matrix(e.A)
        for k, v in (("data", A.data), ("indices", A.indices), ("indptr", A.indptr),
                     ("shape", np.asarray(A.shape))):
            g[f"A/{k}"] = v
        for k in ("C", "S", "YrA", "b", "f", "sn", "g"):
            g[k] = getattr(e, k)
        g["nr"] = A.shape[1]
        g["W"] = "NoneType"
        g["idx_components"] = np.arange(3)
        dc = g.create_group("discarded_components")
        dc["C"] = e.C[:1]
        p = h5.create_group("params")
        p["merging/merge_thr"] = 0.65
        p["data/fr"] = 15.0
        p["data/dims"] = np.asarray(e.dims)
        p["online/init_batch"] = 200
        p["spatial/block_size_spat"] = 1234
        p["quality/use_ecc"] = False
    cnm2 = load_CNMF(str(path))
    assert cnm2.params.merge["thr"] == 0.65 and cnm2.params.data["fr"] == 15.0
    assert cnm2.params.spatial["block_size"] == 1234 and cnm2.params.online["init_batch"] == 200
    est = cnm2.estimates
    assert est.nr == A.shape[1] and (est.A != A).nnz == 0 and est.W is None
    np.testing.assert_array_equal(est.C, e.C)
    np.testing.assert_array_equal(est.discarded_components.C, e.C[:1])


def test_fit_file_runs_the_whole_pipeline(tmp_path):
    from gpu_cnmf.caiman.source_extraction.cnmf import cnmf, params
    movie, truth = make_movie("2p", dims=(48, 48), n_frames=200, n_neurons=8, motion="rigid",
                              seed=12)
    tif = str(tmp_path / "session.tif")
    tifffile.imwrite(tif, movie)
    opts = params.CNMFParams(params_dict={"fnames": [tif], "fr": 30, "decay_time": 0.4,
                                          "p": 1, "nb": 1, "gSig": [5, 5], "K": 10,
                                          "rf": None, "only_init": False, "use_cnn": False,
                                          "max_shifts": (8, 8)})
    cnm = cnmf.CNMF(1, params=opts)
    cnm2 = cnm.fit_file(motion_correct=True, include_eval=True)
    assert os.path.basename(cnm2.mmap_file) == "memmap__d1_48_d2_48_d3_1_order_C_frames_200_.mmap"
    assert os.path.isfile(cnm2.mmap_file[:-4] + "hdf5")
    est = cnm2.estimates
    assert est.idx_components is not None and est.Cn.shape == (48, 48)
    assert est.F_dff.shape == est.C.shape
    r, corr = _score(truth, est.A[:, est.idx_components], est.C[est.idx_components])
    assert r["f1"] >= 0.85 and corr >= 0.9, r
