"""Accuracy of the whole pipeline on the hard synthetic movies and the real one.

Runs :func:`gpu_cnmf.pipeline.run_pipeline` exactly as ``gpu-cnmf run``
would, with the parameters a CaImAn user would pick for each movie
(:func:`gpu_cnmf.demo.demo_params`: gSig from the cells' typical size, the
movie's frame rate and decay time, CaImAn's default thresholds), on several
seeds of :func:`gpu_cnmf.synthetic.hard_2p` and
:func:`gpu_cnmf.synthetic.hard_1p`, and scores each result against the
truth: ROI F1 of all and of the accepted components, precision, recall,
median trace correlation of matched pairs, and the share of accepted
footprints that fall apart into more than one piece at 20 % of their peak.
On the real two-photon movie in ``../shared/data`` (no truth) only the
fragmentation is measured.

Heavy: run it as ``flock /work/heavy.lock nice -n 5 python benchmarks/accuracy.py``.

Usage::

    python benchmarks/accuracy.py [--kinds 2p,1p] [--seeds 0,1,2,3]
        [--dims 200] [--frames 1500] [--neurons-2p 100] [--neurons-1p 60] [--k-2p K]
        [--real [--real-path ../shared/data/mouse_sofroniew_500x64x64_int16.tif]]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "mouse_sofroniew_500x64x64_int16.tif"


def run_movie(movie, params, work: Path, name: str):
    """Write ``movie`` as a TIFF, run the pipeline, return the saved estimates."""
    import tifffile

    from gpu_cnmf.io import load_results
    from gpu_cnmf.pipeline import run_pipeline

    tif = work / f"{name}.tif"
    tifffile.imwrite(tif, movie)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_pipeline([str(tif)], params, str(work / f"{name}.hdf5"), progress=False)
    return load_results(res.out_path)


def score_synthetic(kind: str, seed: int, dims: int, frames: int, neurons: int, work: Path,
                    k_patch: int | None = None):
    from gpu_cnmf.demo import demo_params, score
    from gpu_cnmf.metrics import fragmented_share
    from gpu_cnmf.synthetic import hard_1p, hard_2p

    t0 = time.perf_counter()
    make = hard_2p if kind == "2p" else hard_1p
    movie, truth = make(seed, dims=(dims, dims), n_frames=frames, n_neurons=neurons)
    t_gen = time.perf_counter() - t0
    params = demo_params(truth, use_cuda=False)
    if k_patch is not None and kind == "2p":
        params.change_params({"init": {"K": int(k_patch)}})
    saved = run_movie(movie, params, work, f"{kind}_{seed}")
    est = saved["estimates"]
    s = score(truth, est, saved["motion"]["shifts_rig"])
    good = np.asarray(est["idx_components"], dtype=int)
    s["fragmented"] = fragmented_share(est["A"][:, good], truth.dims)
    s.update(kind=kind, seed=seed, dims=dims, frames=frames, neurons=truth.K,
             seconds=time.perf_counter() - t0 - t_gen)
    return s


def real_params():
    """What a CaImAn user would pick for the 64x64 downsampled two-photon
    movie: cells ~6 px across (gSig 3), one patch-free fit of the whole
    field, the usual evaluation thresholds."""
    from gpu_cnmf.params import CNMFParams

    return CNMFParams(params_dict={
        "fr": 10.0, "decay_time": 0.4, "p": 1, "gSig": [3, 3], "nb": 1, "K": 40,
        "rf": None, "only_init": True, "merge_thr": 0.85, "min_SNR": 2.5, "rval_thr": 0.8,
        "max_shifts": (6, 6), "use_cuda": False, "use_cnn": False})


def score_real(work: Path, path: Path = REAL):
    import tifffile

    from gpu_cnmf.metrics import fragmented_share, footprint_pieces

    t0 = time.perf_counter()
    movie = tifffile.imread(path)
    saved = run_movie(movie, real_params(), work, "real")
    est = saved["estimates"]
    good = np.asarray(est["idx_components"], dtype=int)
    dims = movie.shape[1:]
    pieces = footprint_pieces(est["A"][:, good], dims)
    return dict(kind="real", n_found=int(est["A"].shape[1]), n_accepted=len(good),
                n_fragmented=int((pieces > 1).sum()),
                fragmented=fragmented_share(est["A"][:, good], dims),
                seconds=time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default="2p,1p")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--dims", type=int, default=200)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--neurons-2p", type=int, default=100)
    ap.add_argument("--neurons-1p", type=int, default=60)
    ap.add_argument("--k-2p", type=int, default=None,
                    help="2p components per patch instead of demo_params' (demo.patch_K: 1.25 times "
                         "the cells a patch holds on average)")
    ap.add_argument("--real", action="store_true", help="also the real movie (fragmentation)")
    ap.add_argument("--real-path", default=str(REAL), help="the real movie (default: %(default)s)")
    ap.add_argument("--json", help="write all rows to this JSON file")
    a = ap.parse_args(argv)
    import torch

    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} torch {torch.__version__}",
          flush=True)
    rows = []
    keys = ("f1_all", "f1", "precision", "recall", "trace_r", "fragmented")
    with tempfile.TemporaryDirectory(prefix="gpu_cnmf_acc_") as tmp:
        work = Path(tmp)
        for kind in [k for k in a.kinds.split(",") if k]:
            n = a.neurons_2p if kind == "2p" else a.neurons_1p
            for seed in [int(s) for s in a.seeds.split(",") if s]:
                r = score_synthetic(kind, seed, a.dims, a.frames, n, work, a.k_2p)
                rows.append(r)
                print(f"{kind} seed {seed}: {r['n_found']} found / {r['n_accepted']} accepted / "
                      f"{r['neurons']} true; " + ", ".join(f"{k} {r[k]:.3f}" for k in keys)
                      + f"; shift rms {r['shift_rms']:.2f} px; {r['seconds']:.0f} s", flush=True)
            sel = [r for r in rows if r["kind"] == kind]
            print(f"{kind} mean over {len(sel)} seeds: "
                  + ", ".join(f"{k} {np.mean([r[k] for r in sel]):.3f}" for k in keys), flush=True)
        if a.real:
            if not Path(a.real_path).exists():
                print(f"real movie not found at {a.real_path}: skipped")
            else:
                r = score_real(work, Path(a.real_path))
                rows.append(r)
                print(f"real: {r['n_found']} found / {r['n_accepted']} accepted; "
                      f"{r['n_fragmented']} fragmented ({r['fragmented']:.3f}); "
                      f"{r['seconds']:.0f} s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=float))
    return rows


if __name__ == "__main__":
    main()
