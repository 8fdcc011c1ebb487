"""Issue 5 acceptance check: the standard 2p movie (256x256x2000, 120 neurons,
rigid motion) -> MotionCorrect -> CNMF without patches -> refit, scored against
the truth. Run: python benchmarks/cnmf_after_motion.py"""
import tempfile
import time
from pathlib import Path
import numpy as np
from gpu_cnmf import CNMF, CNMFParams, MotionCorrect, load_memmap
from gpu_cnmf.metrics import registration_error, roi_f1, trace_correlation
from gpu_cnmf.synthetic import standard_2p

movie, truth = standard_2p(seed=0)
params = CNMFParams(params_dict={"fr": truth.fr, "decay_time": truth.decay_time, "p": 1,
                                 "gSig": [5, 5], "K": 120, "rf": None, "only_init": False,
                                 "max_shifts": (8, 8)})
t = time.perf_counter()
mc = MotionCorrect(movie, **params.get_group("motion")).motion_correct(save_movie=True)
Yr, dims, T = load_memmap(mc.save_memmap_C(str(Path(tempfile.mkdtemp()) / "std")))
images = np.reshape(Yr.T, [T] + list(dims), order="F")
t_mc = time.perf_counter() - t
cnm = CNMF(params=params).fit(images); cnm = cnm.refit(images)
t_all = time.perf_counter() - t
s = roi_f1(truth.A, cnm.estimates.A, dims)
r = trace_correlation(truth.C, cnm.estimates.C, s["matched_true"], s["matched_est"])
print(f"shift RMS {registration_error(truth.shifts, mc.shifts_rig, subtract_mean=True):.3f} px; "
      f"no patches after MC: F1 {s['f1']:.3f} (P {s['precision']:.2f} R {s['recall']:.2f}), "
      f"median r {np.median(r):.3f}, K {cnm.estimates.nr}; MC {t_mc:.1f} s, MC+fit+refit {t_all:.1f} s")
