"""Component evaluation on a large memory-mapped movie, one checkout against
another (issue 13: evaluation at the speed of one pass).

::

    python benchmarks/bench_eval_scale.py MOVIE.npy TRUTH.npz [--code /tmp/before]

``MOVIE.npy`` and ``TRUTH.npz`` are what ``benchmarks/scale.py`` writes. The
movie is copied once into a pixels x T C-order memory map (as the pipeline
leaves it; kept next to the movie for later runs) and viewed as frames,
``np.reshape(Yr.T, [T] + dims, order='F')``, as CaImAn users pass it. The
true footprints and traces stand in for a fit (``YrA`` zero, no
background); the child process running ``evaluate_components`` uses the
gpu_cnmf found at ``--code``, so the same movie and components can be timed
with the code from before and after a change. Prints seconds and the
number of components.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
import numpy as np, scipy.sparse as sp
from gpu_cnmf.io import load_memmap
from gpu_cnmf.evaluation import evaluate_components
mmap, truth = sys.argv[1], sys.argv[2]
t = np.load(truth)
A = sp.csc_matrix((t["A_data"], t["A_indices"], t["A_indptr"]), shape=tuple(t["A_shape"]))
Yr, dims, T = load_memmap(mmap)
images = np.reshape(Yr.T, [T] + list(dims), order="F")
C = t["C"][:, :T]
t0 = time.perf_counter()
out = evaluate_components(images, A, C, None, None, np.zeros_like(C), dims, float(t["fr"]),
                          float(t["decay_time"]), {"use_cnn": True}, gSig=float(t["gSig"]))
sec = time.perf_counter() - t0
print(json.dumps({"s": sec, "K": int(A.shape[1]), "T": int(T),
                  "n_accepted": int(len(out["idx_components"])),
                  "r_mean": float(np.nanmean(out["r_values"]))}))
"""


def c_order_copy(movie: str) -> str:
    sys.path.insert(0, str(HERE))
    import numpy as np

    from gpu_cnmf.io import save_memmap

    base = str(Path(movie).with_suffix("")) + "_Yr"
    mov = np.load(movie, mmap_mode="r")
    T, d1, d2 = mov.shape
    from gpu_cnmf.io import mmap_name
    name = mmap_name(base, (d1, d2), T, "C")
    if not os.path.isfile(name):
        name = save_memmap(movie, base, order="C")
    return name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("movie")
    ap.add_argument("truth")
    ap.add_argument("--code", default=str(HERE))
    args = ap.parse_args(argv)
    mmap = c_order_copy(args.movie)
    env = dict(os.environ, PYTHONPATH=args.code)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, mmap, args.truth], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec.update(code=args.code, mmap=mmap, wall_s=time.perf_counter() - t0)
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
