"""CNMF fit + refit on the standard 2p movie, stage by stage, CPU vs GPU.

pytest-benchmark::

    python -m pytest benchmarks/bench_cnmf.py --benchmark-only -s

or directly, printing a table (and F1 / median trace correlation against
the ground truth)::

    python benchmarks/bench_cnmf.py --device cpu --patches both

Size from the environment (defaults: the standard movie, 256x256, 2000
frames, 120 neurons): ``GPU_CNMF_BENCH_DIMS=512,512``,
``GPU_CNMF_BENCH_FRAMES=10000``, ``GPU_CNMF_BENCH_NEURONS=400``. The movie is
the motion-free version of ``synthetic.standard_2p`` (same scene and noise,
``motion=None``), written to a C-order memory map and passed as CaImAn users
do, ``np.reshape(Yr.T, [T] + dims, order='F')``. GPU runs are skipped
without CUDA.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

from gpu_cnmf.backend import cuda_available, synchronize
from gpu_cnmf.cnmf import CNMF
from gpu_cnmf.metrics import roi_f1, trace_correlation
from gpu_cnmf.params import CNMFParams


def bench_size():
    dims = tuple(int(x) for x in os.environ.get("GPU_CNMF_BENCH_DIMS", "256,256").split(","))
    T = int(os.environ.get("GPU_CNMF_BENCH_FRAMES", "2000"))
    N = int(os.environ.get("GPU_CNMF_BENCH_NEURONS", "120"))
    return dims, T, N


def make_standard(dims, T, N, folder):
    """Motion-free standard movie as a C-order memmap; returns (images, truth)."""
    from gpu_cnmf.io import load_memmap, save_memmap
    from gpu_cnmf.synthetic import standard_2p

    mov, truth = standard_2p(seed=0, dims=dims, n_frames=T, n_neurons=N, motion=None)
    path = save_memmap(mov, os.path.join(folder, "Yr"), order="C")
    del mov
    Yr, dims_, T_ = load_memmap(path)
    images = np.reshape(Yr.T, [T_] + list(dims_), order="F")
    return images, truth


def params_for(N, dims, patches, use_cuda):
    p = CNMFParams()
    p.change_params({
        "data": {"fr": 30, "decay_time": 0.4},
        "init": {"gSig": [5, 5], "K": N},
        "temporal": {"p": 1},
        "motion": {"use_cuda": use_cuda},
    })
    if patches:
        # patches of 64x64 overlapping by 16: ~ (64/d)^2 of the neurons each
        density = N / float(np.prod(dims))
        k = int(np.ceil(1.2 * density * 64 * 64))
        p.change_params({"patch": {"rf": 32, "stride": 16, "only_init": True},
                         "init": {"K": k}})
    else:
        p.change_params({"patch": {"rf": None, "only_init": False}})
    return p


def run_once(images, truth, patches, device):
    """fit + refit; returns dict of stage times, F1 and median r."""
    dims = images.shape[1:]
    p = params_for(truth.A.shape[1], dims, patches, device == "cuda")
    t0 = time.perf_counter()
    cnm = CNMF(1, params=p).fit(images)
    synchronize(device)
    t1 = time.perf_counter()
    cnm2 = cnm.refit(images)
    synchronize(device)
    t2 = time.perf_counter()
    est = cnm2.estimates
    r = roi_f1(truth.A, est.A, dims)
    c = trace_correlation(truth.C, est.C, r["matched_true"], r["matched_est"])
    out = {"fit_s": t1 - t0, "refit_s": t2 - t1, "total_s": t2 - t0, "f1": r["f1"],
           "median_r": float(np.median(c)) if len(c) else 0.0, "K": est.A.shape[1],
           "fit_f1": roi_f1(truth.A, cnm.estimates.A, dims)["f1"]}
    out.update({f"fit.{k}": v for k, v in cnm.estimates.timings.items()})
    out.update({f"refit.{k}": v for k, v in est.timings.items()})
    return out


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def standard_movie():
    dims, T, N = bench_size()
    with tempfile.TemporaryDirectory() as folder:
        images, truth = make_standard(dims, T, N, folder)
        yield images, truth


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("patches", [False, True], ids=["full_fov", "patches"])
def test_fit_refit(benchmark, standard_movie, device, patches):
    if device == "cuda" and not cuda_available():
        pytest.skip("needs a CUDA GPU")
    images, truth = standard_movie
    res = benchmark.pedantic(run_once, args=(images, truth, patches, device),
                             rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in res.items()})
    assert res["f1"] > 0.5


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda", "both"], default="cpu")
    ap.add_argument("--patches", choices=["no", "yes", "both"], default="both")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dims, T, N = bench_size()
    devs = ["cpu", "cuda"] if args.device == "both" else [args.device]
    pats = {"no": [False], "yes": [True], "both": [False, True]}[args.patches]
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        images, truth = make_standard(dims, T, N, folder)
        print(f"movie {dims} x {T} frames, {N} neurons: made in {time.perf_counter() - t:.1f} s")
        for dev in devs:
            if dev == "cuda" and not cuda_available():
                print("cuda: skipped (no GPU)")
                continue
            for pt in pats:
                c0 = time.process_time()
                res = run_once(images, truth, pt, dev)
                res["cpu_time_s"] = time.process_time() - c0
                name = f"{dev} {'patches' if pt else 'full FOV'}"
                print(f"{name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in res.items()))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
