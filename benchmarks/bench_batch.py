"""A batch of synthetic recordings on 1 and 2 local Dask workers.

    flock /work/heavy.lock nice -n 5 python benchmarks/bench_batch.py [--n 8] \
        [--frames 2000] [--dims 256] [--workers 1 2] [--folder DIR]

Writes ``n`` two-photon movies (``standard_2p`` with rigid motion, seeds
0..n-1) as ``.npy`` once, then runs ``gpu_cnmf.pipeline.run_batch`` on them
with each worker count (``--force``, so every run computes everything) and
prints the wall-clock seconds, the per-recording seconds and the speed-up.
"""
import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from gpu_cnmf.params import CNMFParams
from gpu_cnmf.pipeline import run_batch
from gpu_cnmf.synthetic import standard_2p

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=8)
ap.add_argument("--frames", type=int, default=2000)
ap.add_argument("--dims", type=int, default=256)
ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
ap.add_argument("--folder", default=None)
ap.add_argument("--motion", default="rigid", help="rigid, or none for faster generation")
args = ap.parse_args()
if args.motion == "none":
    args.motion = None

folder = Path(args.folder or tempfile.mkdtemp(prefix="gpu_cnmf_bench_batch_"))
folder.mkdir(parents=True, exist_ok=True)
movies = []
t0 = time.perf_counter()
for seed in range(args.n):
    path = folder / f"rec{seed}.npy"
    if not path.exists():
        mov, truth = standard_2p(seed=seed, dims=(args.dims, args.dims), n_frames=args.frames,
                                  motion=args.motion)
        np.save(path, mov.astype(np.float32))
        del mov
    movies.append(path)
print(f"{args.n} movies {args.dims}x{args.dims}x{args.frames} ready in "
      f"{time.perf_counter() - t0:.0f} s in {folder}", flush=True)

params = CNMFParams(params_dict={
    "fr": 30, "decay_time": 0.4, "p": 1, "nb": 2, "gSig": [4, 4], "rf": 32, "stride": 12,
    "K": 8, "max_shifts": [6, 6], "pw_rigid": False, "use_cnn": False})
rows = {}
for n in args.workers:
    out = folder / f"out_{n}"
    t0 = time.perf_counter()
    res = run_batch(movies, params, out, n_workers=n, force=True, progress_bar=False)
    sec = time.perf_counter() - t0
    rows[n] = sec
    per = [r.seconds for r in res.rows if r.seconds is not None]
    print(f"workers={n}: {sec:.1f} s wall, per recording {np.mean(per):.1f} s mean "
          f"(status {sorted({r.status for r in res.rows})}, components "
          f"{[r.components for r in res.rows]})", flush=True)
    print(res.table(), flush=True)
if 1 in rows:
    for n, sec in rows.items():
        print(f"speed-up {n} workers vs 1: {rows[1] / sec:.2f}x", flush=True)
print(json.dumps({"seconds": rows, "load_avg": os.getloadavg()}), flush=True)
if args.folder is None:
    shutil.rmtree(folder, ignore_errors=True)
