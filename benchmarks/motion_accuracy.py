"""Motion-correction accuracy against the truth on synthetic 2p movies of
192x192 and 256x256 px (rigid: 400 frames, niter_rig=2; pw-rigid: 150 frames of
non-rigid motion, strides 48, overlaps 24). Run: python benchmarks/motion_accuracy.py"""
import numpy as np, time
from gpu_cnmf.synthetic import make_movie
from gpu_cnmf.motion import MotionCorrect
from gpu_cnmf.metrics import registration_error
for d in (192, 256):
    for seed in (0, 1, 2):
        mov, tr = make_movie("2p", dims=(d, d), n_frames=400, n_neurons=int(40 * (d / 128) ** 2), motion="rigid", seed=seed, keep_clean=False)
        t = time.time()
        mc = MotionCorrect(mov, max_shifts=(6, 6), niter_rig=2, progress=False).motion_correct()
        print("rigid", d, seed, f"{registration_error(tr.shifts, mc.shifts_rig, subtract_mean=True):.3f}", f"{time.time()-t:.1f}s", flush=True)
for d in (192, 256):
    for seed in (0, 1, 2):
        mov, tr = make_movie("2p", dims=(d, d), n_frames=150, n_neurons=int(40 * (d / 128) ** 2), motion="nonrigid", seed=seed, keep_clean=False)
        mc = MotionCorrect(mov, max_shifts=(8, 8), pw_rigid=True, strides=(48, 48), overlaps=(24, 24), progress=False).motion_correct()
        fld = mc.dense_field()
        fld = np.asarray(fld)
        print("pw", d, seed, fld.shape, f"{registration_error(tr.flow, fld, crop=16, subtract_mean=True):.3f}", flush=True)
