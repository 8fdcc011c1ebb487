"""Rigid registration of a movie whose motion wanders slowly over +-7 px,
corrected with ``max_shifts=(6, 6)`` (issue 15, item 0).

Shift error is measured against the truth relative to the movie's typical
(median) position, where a template at the centre of the motion sits:
``err_t = |est_t - (s_t - median(s))|``; frames whose motion exceeds the
bound cannot do better than their excess over it, so the report gives the
centre offset of the template, the RMS error of the frames within the
bound, the largest error beyond ``excess + 1`` px and the frames at the bound.

    python benchmarks/motion_wander.py [--dims 256] [--frames 1500] [--seeds 0,1,2]
        [--cache DIR]   # keep/reuse the movies as .npy (to run older code on them)
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np


def movie(seed, dims, frames, cache):
    path = Path(cache) / f"wander_{dims}_{frames}_{seed}.npz" if cache else None
    if path is not None and path.exists():
        z = np.load(path)
        return z["movie"], z["shifts"]
    from gpu_cnmf.synthetic import make_movie
    mov, tr = make_movie("2p", dims=(dims, dims), n_frames=frames, n_neurons=dims * dims // 550,
                         motion="rigid", max_shift=7, motion_timescale=20.0, motion_jitter=0.05,
                         seed=seed, keep_clean=False)
    if path is not None:
        np.savez(path, movie=mov, shifts=tr.shifts)
    return mov, tr.shifts


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-shifts", type=int, default=6)
    ap.add_argument("--cache")
    a = ap.parse_args(argv)
    from gpu_cnmf.motion import MotionCorrect

    m = a.max_shifts
    for seed in [int(s) for s in a.seeds.split(",")]:
        mov, s = movie(seed, a.dims, a.frames, a.cache)
        s = s.astype(np.float64)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mc = MotionCorrect(mov, max_shifts=(m, m), progress=False).motion_correct()
        sec = time.perf_counter() - t0
        est = mc.shifts_rig
        med = np.median(s, 0)
        err = np.linalg.norm(est - (s - med), axis=1)
        excess = np.linalg.norm(np.clip(np.abs(s - med) - m, 0, None), axis=1)
        inside = excess == 0
        over = err - excess - 1
        centre = np.median(est, 0)
        print(f"seed {seed}: {a.frames} frames {a.dims}x{a.dims}, truth median {med.round(2)}; "
              f"template off centre {np.hypot(*centre):.2f} px; RMS error within the bound "
              f"{np.sqrt(np.mean(err[inside] ** 2)):.2f} px ({inside.sum()} frames), max "
              f"{err.max():.2f} px; frames beyond excess+1 px: {(over > 0).sum()}; frames needing "
              f"more than {m} px: {(~inside).sum()}, at the bound: "
              f"{getattr(mc, 'frames_at_bound', 'n/a')}, suggested max_shifts "
              f"{getattr(mc, 'max_shifts_needed', 'n/a')}; {sec:.1f} s", flush=True)


if __name__ == "__main__":
    main()
