"""Patch dispatch on the CPU: one patch at a time, threads, or a fork pool.

    flock /work/heavy.lock nice -n 5 python benchmarks/bench_patches.py

Fits the same synthetic two-photon movie on patches (``only_init`` off, the
full per-patch CNMF) with

- ``serial``: ``n_processes=1``, torch using every core inside each patch;
- ``threads``: ``n_processes=2``, what ``map_patches`` does (two threads,
  each patch's torch/numba ops on ``cores // 2`` threads);
- ``fork``: ``n_processes=2`` through a ``fork`` multiprocessing pool with
  one torch thread per worker (patched in here for the comparison only);

and prints seconds of ``CNMF.fit`` and the ROI F1 between each and serial.
No ``__main__`` guard, on purpose: the threads path must not need one (the
fork comparison is run last and only in this process).
"""
import multiprocessing as mp
import sys
import time

import numpy as np
import torch

from gpu_cnmf.cnmf import CNMF, patches
from gpu_cnmf.metrics import roi_f1
from gpu_cnmf.params import CNMFParams
from gpu_cnmf.synthetic import make_movie

DIMS = (128, 128)
T = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
mov, truth = make_movie("2p", dims=DIMS, n_frames=T, n_neurons=50, p=1, seed=3)
mov = np.ascontiguousarray(mov, dtype=np.float32)
params = CNMFParams()
params.change_params({"init": {"K": 8, "gSig": [4, 4]}, "temporal": {"p": 1},
                      "patch": {"rf": 24, "stride": 12, "only_init": False}})

_FORK = {}


def _fork_run(i):
    torch.set_num_threads(1)
    return _FORK["fn"](_FORK["tasks"][i])


def _fork_map(fn, tasks, *, n_processes=1, dview=None, desc=""):
    _FORK.update(fn=fn, tasks=list(tasks))
    with mp.get_context("fork").Pool(n_processes) as pool:
        return pool.map(_fork_run, range(len(tasks)))


def _fit(n):
    t0 = time.perf_counter()
    est = CNMF(n, params=params).fit(mov).estimates
    return time.perf_counter() - t0, est


_fit(1)   # numba compilation and warm caches out of the timings
rows = {}
for mode in ("serial", "threads"):
    rows[mode] = _fit(1 if mode == "serial" else 2)
    print(f"{mode}: {rows[mode][0]:.2f} s", flush=True)
orig = patches.map_patches
patches.map_patches = _fork_map
rows["fork"] = _fit(2)
patches.map_patches = orig

n_patches = len(patches.patch_regions(DIMS, 24, 12))
print(f"{DIMS[0]}x{DIMS[1]}x{T}, {n_patches} patches, torch threads {torch.get_num_threads()}")
ref = rows["serial"][1]
for mode, (sec, est) in rows.items():
    f1 = roi_f1(ref.A, est.A, DIMS)["f1"]
    f1t = roi_f1(truth.A, est.A, DIMS)["f1"]
    print(f"{mode:8s} {sec:7.2f} s  K={est.A.shape[1]:3d}  F1 vs serial {f1:.3f}  "
          f"F1 vs truth {f1t:.3f}")
