"""CNMF-E on the whole field vs on patches: seconds, F1 and trace correlation.

    python benchmarks/bench_cnmfe_patches.py [--movies small,class,large] [--modes whole,patches]

Movies (``gpu_cnmf.synthetic.make_movie('1p', ...)``):
``small``: 96x96x600, 25 neurons, seed 1 (tests/test_cnmfe.py);
``class``: 96x96x500, 20 neurons, seed 2 (the CNMF-class 1p test);
``large``: 200x200x1000, 110 neurons, seed 3.
Both modes go through ``CNMF(params=...).fit`` on the CPU; ``patches`` sets
``rf=24, stride=12`` (``rf=40, stride=16`` for ``large``), ``del_duplicates``,
``low_rank_background=None``, ``nb_patch=0``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from gpu_cnmf import CNMF
from gpu_cnmf.metrics import roi_f1, trace_correlation
from gpu_cnmf.params import CNMFParams
from gpu_cnmf.synthetic import make_movie

MOVIES = {
    "small": dict(dims=(96, 96), n_frames=600, n_neurons=25, seed=1),
    "class": dict(dims=(96, 96), n_frames=500, n_neurons=20, seed=2),
    "large": dict(dims=(200, 200), n_frames=1000, n_neurons=110, seed=3),
}
PATCH = {"small": (24, 12), "class": (24, 12), "large": (40, 16)}


def params_for(truth, rf=None, stride=None):
    d = dict(fr=truth.fr, decay_time=truth.decay_time, p=1, gSig=[4, 4], center_psf=True,
             method_init="corr_pnr", min_corr=0.8, min_pnr=5, K=None, nb=0, ssub_B=2,
             ring_size_factor=1.5, init_iter=2)
    if rf is not None:
        d.update(rf=rf, stride=stride, nb_patch=0, del_duplicates=True, low_rank_background=None)
    return CNMFParams(params_dict=d)


def run(name, mode):
    mov, truth = make_movie("1p", **MOVIES[name])
    rf, stride = PATCH[name] if mode == "patches" else (None, None)
    t0 = time.perf_counter()
    est = CNMF(params=params_for(truth, rf, stride)).fit(mov).estimates
    sec = time.perf_counter() - t0
    r = roi_f1(truth.A, est.A, truth.dims)
    corr = trace_correlation(truth.C, est.C, r["matched_true"], r["matched_est"])
    print(f"{name:6s} {mode:8s} {tuple(mov.shape)}  {sec:7.1f} s  K={est.A.shape[1]:4d}  "
          f"F1={r['f1']:.3f}  P={r['precision']:.3f}  R={r['recall']:.3f}  "
          f"median trace corr={np.median(corr) if len(corr) else float('nan'):.3f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--movies", default="small,class,large")
    ap.add_argument("--modes", default="whole,patches")
    a = ap.parse_args()
    for name in a.movies.split(","):
        for mode in a.modes.split(","):
            run(name, mode)


if __name__ == "__main__":
    main()
