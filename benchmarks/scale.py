"""Real-size recordings under a memory limit: ``gpu-cnmf run`` on a movie
larger than the limit, peak anonymous memory, seconds and passes per stage,
F1 against the truth (issue 13).

::

    python benchmarks/scale.py --kind 2p --frames 6000 --limit 2GiB
    python benchmarks/scale.py --kind 1p --frames 4000 --limit 2GiB
    # the same movie with another checkout of gpu_cnmf (e.g. "before"):
    python benchmarks/scale.py --kind 2p --frames 1000 --code /tmp/before --reuse

Steps:

1. write the synthetic movie (:func:`gpu_cnmf.synthetic.make_movie` with a
   ``sink``: frame blocks go straight to a ``.npy`` file, the movie is never
   whole in memory) -- two-photon 512 x 512 with rigid motion, or one-photon
   480 x 480 -- and its truth (``A`` and ``C``) next to it;
2. run ``gpu-cnmf run MOVIE --memory-limit LIMIT`` in a child process
   (``n_processes=2``, a plain script: the CLI has no main guard to rely
   on) while a thread samples the anonymous memory (RssAnon + RssShmem) of
   the child and its workers every 20 ms (:class:`gpu_cnmf.memwatch.PeakMemory`);
3. read the per-stage seconds, peak memory and passes from the run's closing
   summary, score the accepted footprints against the truth
   (:func:`gpu_cnmf.metrics.roi_f1`), and print a JSON record and a
   markdown table (``--json`` appends the record to a file).

The movie and results go to ``--work`` (default ``/tmp/gpu_cnmf_scale``);
``--reuse`` keeps an existing movie of the same size and seed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

SIZES = {"2p": (512, 512), "1p": (480, 480)}
NEURONS = {"2p": 400, "1p": 250}


def movie_params(kind: str, truth_gsig: float, fr: float, decay_time: float) -> dict:
    """What a user would pick for these movies (as ``gpu_cnmf.demo`` does)."""
    g = int(round(truth_gsig))
    common = {"fr": fr, "decay_time": decay_time, "p": 1, "gSig": [g, g],
              "merge_thr": 0.85, "min_SNR": 2.5, "rval_thr": 0.8, "max_shifts": [8, 8],
              "n_processes": 2}
    if kind == "2p":
        return {**common, "nb": 1, "rf": 32, "stride": 12, "K": 12, "only_init": True}
    return {**common, "gSig_filt": [3, 3], "center_psf": True, "method_init": "corr_pnr",
            "nb": 0, "K": None, "rf": 48, "stride": 16, "only_init": True, "min_corr": 0.8,
            "min_pnr": 5, "ring_size_factor": 1.5, "ssub_B": 2,
            "low_rank_background": None, "use_cnn": False}


def write_movie(kind: str, n_frames: int, seed: int, folder: Path, reuse: bool,
                dims=None) -> dict:
    """The movie as ``.npy`` written block by block, and its truth."""
    from gpu_cnmf.synthetic import make_movie

    dims = tuple(dims or SIZES[kind])
    n_neurons = int(round(NEURONS[kind] * np.prod(dims) / np.prod(SIZES[kind])))
    stem = folder / f"{kind}_{dims[0]}x{dims[1]}x{n_frames}_s{seed}"
    movie, truth_f = stem.with_suffix(".npy"), stem.with_name(stem.name + "_truth.npz")
    if reuse and movie.is_file() and truth_f.is_file():
        return {"movie": str(movie), "truth": str(truth_f), "write_s": None}
    t0 = time.perf_counter()
    tmp = movie.with_name(movie.name + ".part.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                    shape=(n_frames,) + dims)

    def sink(start, frames):
        out[start:start + frames.shape[0]] = frames

    kw = dict(dims=dims, n_frames=n_frames, n_neurons=n_neurons, seed=seed,
              keep_clean=False, sink=sink)
    if kind == "2p":
        kw.update(motion="rigid", max_shift=5.0)
    else:
        kw.update(motion="rigid", max_shift=3.0, n_vessels=3, vessel_depth=0.3)
    _, truth = make_movie(kind, **kw)
    out.flush()
    del out
    os.replace(tmp, movie)
    A = sp.csc_matrix(truth.A)
    np.savez(truth_f, A_data=A.data, A_indices=A.indices, A_indptr=A.indptr,
             A_shape=A.shape, C=truth.C, dims=dims, gSig=float(np.median(truth.sigmas)),
             fr=truth.fr, decay_time=truth.decay_time)
    return {"movie": str(movie), "truth": str(truth_f),
            "write_s": time.perf_counter() - t0}


_STAGE_RE = re.compile(r"^\s{4}(?P<name>.+?)\s+(?P<sec>[0-9.]+) s\s+(?P<mib>[0-9.]+) MiB\s+"
                       r"(?P<r>[0-9.]+) r\s+(?P<w>[0-9.]+) w\s*$")
_OLD_STAGE_RE = re.compile(r"^\s{4}(?P<name>[A-Za-z][A-Za-z -]+?)\s+(?P<sec>[0-9.]+)\s*$")


def parse_summary(stdout: str) -> dict:
    """Per-stage figures from ``gpu-cnmf run``'s closing summary (older
    versions print seconds only)."""
    stages = {}
    for line in stdout.splitlines():
        m = _STAGE_RE.match(line)
        if m:
            stages[m["name"]] = {"s": float(m["sec"]), "peak_MiB": float(m["mib"]),
                                 "passes_read": float(m["r"]), "passes_written": float(m["w"])}
            continue
        m = _OLD_STAGE_RE.match(line)
        if m:
            stages[m["name"]] = {"s": float(m["sec"])}
    return stages


def run(kind, files, limit, work: Path, code: Path, timeout: float,
        memmap_dtype: str = "float32") -> dict:
    from gpu_cnmf.memwatch import PeakMemory

    t = np.load(files["truth"])
    params = movie_params(kind, float(t["gSig"]), float(t["fr"]), float(t["decay_time"]))
    if memmap_dtype != "float32":   # (a checkout from before the half-size store lacks it)
        params["memmap_dtype"] = memmap_dtype
    pfile = work / f"params_{kind}.json"
    pfile.write_text(json.dumps(params))
    out = work / (Path(files["movie"]).stem + "_results.hdf5")
    cmd = [sys.executable, "-c", "import sys; from gpu_cnmf.cli import main; "
           "sys.exit(main(sys.argv[1:]))", "run", files["movie"], "--params", str(pfile),
           "--out", str(out)]
    if limit:   # (a checkout from before issue 13 knows neither flag: run it with --limit '')
        cmd += ["--memory-limit", limit, "--log-file", str(out.with_suffix(".log"))]
    env = dict(os.environ, PYTHONPATH=str(code))
    env.pop("GPU_CNMF_MEMORY_BUDGET", None)
    t0 = time.perf_counter()
    # cwd: `python -c` puts the working directory first on sys.path, ahead of
    # PYTHONPATH, so a checkout there would shadow --code
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(work))
    with PeakMemory(proc.pid, interval=0.02) as mem:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    rec = {"kind": kind, "limit": limit, "code": str(code), "rc": proc.returncode,
           "memmap_dtype": memmap_dtype,
           "wall_s": wall, "peak_anon_MiB": mem.peak / 2**20, "samples": mem.n_samples,
           "stages": parse_summary(stdout), "stderr_tail": stderr[-1500:]}
    if proc.returncode == 0:
        rec.update(score(t, out))
    return rec


def samples_bytes(A, C) -> int:
    """At most what the refit keeps for evaluation: each footprint's
    support (ATHRESH of its peak and up) at its active frames, 12 bytes a
    value (gpu_cnmf.evaluation.spatial.MovieSamples)."""
    import torch

    from gpu_cnmf.evaluation.spatial import ATHRESH, active_frames

    n_act = active_frames(torch.as_tensor(np.asarray(C, np.float32))).sum(1).numpy()
    peak = A.max(axis=0).toarray().ravel()
    n_sup = np.array([(A.data[A.indptr[k]:A.indptr[k + 1]] >= ATHRESH * peak[k]).sum()
                      for k in range(A.shape[1])])
    return int(12 * (n_sup * n_act).sum())


def score(t, results) -> dict:
    from gpu_cnmf.io import load_results
    from gpu_cnmf.metrics import roi_f1

    A_true = sp.csc_matrix((t["A_data"], t["A_indices"], t["A_indptr"]),
                           shape=tuple(t["A_shape"]))
    est = load_results(results)["estimates"]
    good = np.asarray(est["idx_components"], dtype=int)
    dims = tuple(int(x) for x in t["dims"])
    r = roi_f1(A_true, sp.csc_matrix(est["A"])[:, good], dims)
    A = sp.csc_matrix(est["A"])
    K, T = np.shape(est["C"])
    results_bytes = A.nnz * 12 + 4 * K * T * 3 + samples_bytes(A, est["C"])
    return {"f1": r["f1"], "precision": r["precision"], "recall": r["recall"],
            "n_true": r["n_true"], "n_accepted": int(len(good)), "n_found": int(A.shape[1]),
            "results_MiB": results_bytes / 2**20}


def table(rec: dict, n_frames: int) -> str:
    rows = ["| stage | s | frames/s | peak MiB | passes read | passes written |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, v in rec["stages"].items():
        fps = n_frames / v["s"] if v["s"] > 0 else float("inf")
        rows.append(f"| {name} | {v['s']:.1f} | {fps:.1f} | {v.get('peak_MiB', float('nan')):.0f} "
                    f"| {v.get('passes_read', float('nan')):.2f} "
                    f"| {v.get('passes_written', float('nan')):.2f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=("2p", "1p"), default="2p")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--limit", default="2GiB", help="--memory-limit of the run ('' for none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dims", default=None,
                    help="frame size other than 512,512 (2p) / 480,480 (1p), for a quick check")
    ap.add_argument("--work", default="/tmp/gpu_cnmf_scale")
    ap.add_argument("--code", default=str(HERE),
                    help="gpu_cnmf checkout the run uses (PYTHONPATH of the child)")
    ap.add_argument("--reuse", action="store_true", help="reuse an existing movie")
    ap.add_argument("--timeout", type=float, default=6 * 3600)
    ap.add_argument("--json", default=None, help="append the record to this file")
    ap.add_argument("--memmap-dtype", default="float32", choices=("float32", "float16"),
                    help="element type of the corrected movie's memory map")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dims = tuple(int(x) for x in args.dims.split(",")) if args.dims else SIZES[args.kind]
    files = write_movie(args.kind, args.frames, args.seed, work, args.reuse, dims)
    movie_bytes = args.frames * int(np.prod(dims)) * 4
    print(f"movie {files['movie']}: {movie_bytes / 2**30:.2f} GiB as float32"
          + (f", written in {files['write_s']:.0f} s" if files["write_s"] else ""), flush=True)
    rec = run(args.kind, files, args.limit, work, Path(args.code), args.timeout,
              args.memmap_dtype)
    rec.update(frames=args.frames, dims=dims, movie_GiB=movie_bytes / 2**30,
               date=time.strftime("%Y-%m-%d %H:%M"))
    print(json.dumps({k: v for k, v in rec.items() if k != "stderr_tail"}, indent=1))
    if rec["rc"] != 0:
        print(rec["stderr_tail"], file=sys.stderr)
    print(table(rec, args.frames))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return int(rec["rc"] != 0)


if __name__ == "__main__":
    sys.exit(main())
