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
    movie, truth = make_movie("2p", dims=(64, 64), n_frames=300, n_neurons=12,
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
    assert list(tmp_path.glob("memmap__d1_64_d2_64_d3_1_order_C_frames_300_.mmap"))


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
