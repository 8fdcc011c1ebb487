"""CNMF-E (corr-PNR init + ring background) on the standard 1p movie, CPU vs GPU.

pytest-benchmark::

    python -m pytest benchmarks/bench_cnmfe.py --benchmark-only -s

or directly, printing stage times, F1 and median trace correlation against
the ground truth::

    python benchmarks/bench_cnmfe.py --device cpu

The movie is ``synthetic.standard_1p`` (256x256, 2000 frames at 30 Hz, 70
neurons under a fluctuating background 5x their median peak). Size from the
environment: ``GPU_CNMF_BENCH_DIMS=128,128``, ``GPU_CNMF_BENCH_FRAMES=1000``,
``GPU_CNMF_BENCH_NEURONS=30``. The issue's criterion on the standard movie:
F1 >= 0.85 and median trace correlation >= 0.85. GPU runs are skipped
without CUDA.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pytest

from gpu_cnmf.backend import cuda_available, synchronize
from gpu_cnmf import CNMF
from gpu_cnmf.metrics import roi_f1, trace_correlation
from gpu_cnmf.params import CNMFParams


def bench_size():
    dims = tuple(int(x) for x in os.environ.get("GPU_CNMF_BENCH_DIMS", "256,256").split(","))
    T = int(os.environ.get("GPU_CNMF_BENCH_FRAMES", "2000"))
    N = int(os.environ.get("GPU_CNMF_BENCH_NEURONS", "70"))
    return dims, T, N


def make_standard(dims, T, N):
    from gpu_cnmf.synthetic import standard_1p

    return standard_1p(seed=0, dims=dims, n_frames=T, n_neurons=N)


def params_for(use_cuda):
    return CNMFParams(params_dict=dict(
        fr=30, decay_time=0.4, p=1, gSig=[4, 4], center_psf=True, method_init="corr_pnr",
        min_corr=0.8, min_pnr=5, K=None, nb=0, ssub_B=2, ring_size_factor=1.5, init_iter=2,
        use_cuda=use_cuda))


def run_once(mov, truth, device):
    t0 = time.perf_counter()
    est = CNMF(params=params_for(device == "cuda")).fit(mov).estimates
    synchronize(device)
    out = dict(A=est.A, C=est.C, timings=est.timings)
    wall = time.perf_counter() - t0
    r = roi_f1(truth.A, out["A"], truth.dims)
    corr = trace_correlation(truth.C, out["C"], r["matched_true"], r["matched_est"])
    return dict(seconds=wall, f1=r["f1"], precision=r["precision"], recall=r["recall"],
                median_r=float(np.median(corr)) if corr.size else 0.0, K=out["A"].shape[1],
                timings={k: round(v, 2) for k, v in out["timings"].items()})


@pytest.fixture(scope="module")
def standard():
    return make_standard(*bench_size())


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cnmfe_standard_1p(benchmark, standard, device):
    if device == "cuda" and not cuda_available():
        pytest.skip("needs a CUDA GPU")
    mov, truth = standard
    res = benchmark.pedantic(run_once, args=(mov, truth, device), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in res.items() if k != "timings"})
    print(device, res)
    assert res["f1"] >= 0.85 and res["median_r"] >= 0.85


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "both"], default="both")
    args = ap.parse_args(argv)
    devs = ["cpu", "cuda"] if args.device == "both" else [args.device]
    devs = [d for d in devs if d == "cpu" or cuda_available()]
    dims, T, N = bench_size()
    t0 = time.perf_counter()
    mov, truth = make_standard(dims, T, N)
    print(f"movie {dims} x {T} frames, {N} neurons, made in {time.perf_counter() - t0:.1f} s")
    for dev in devs:
        res = run_once(mov, truth, dev)
        print(f"{dev}: {res['seconds']:.1f} s  F1 {res['f1']:.3f} (P {res['precision']:.3f} "
              f"R {res['recall']:.3f})  median r {res['median_r']:.3f}  K {res['K']}  "
              f"stages {res['timings']}")


if __name__ == "__main__":
    main()
