"""``gpu-cnmf demo``: the whole pipeline on a synthetic movie with known truth.

The movie comes from :mod:`gpu_cnmf.synthetic`: two-photon (neurons with
overlaps, neuropil, rigid motion), or with ``--1p`` one-photon (a bright,
fluctuating background, analysed by CNMF-E after high-pass-filtered motion
correction). It is written to a TIFF and analysed by
:func:`gpu_cnmf.pipeline.run_pipeline` exactly as ``gpu-cnmf run`` would
(motion correction, memmap, CNMF with patches, refit, evaluation, results
file); then each stage is scored against the truth with :mod:`gpu_cnmf.metrics`:

- motion correction: RMS error of the estimated shifts (px);
- source extraction: ROI F1 of all and of the accepted components, and the
  median correlation of matched traces;
- deconvolution: median correlation of inferred and true spikes.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def demo_movie(small: bool, seed: int, one_photon: bool = False):
    """The demo's movie and its truth. Two-photon: the standard 256x256x2000
    movie with 120 neurons, or 128x128x600 with 30 neurons when ``small``.
    One-photon: 160x160x1000 with 40 neurons (96x96x500, 20 when ``small``),
    with three blood-vessel shadows: the static texture that 1p registration
    locks on to, as in real microendoscope data."""
    from .synthetic import make_movie, standard_2p

    if one_photon:
        dims, T, K = ((96, 96), 500, 20) if small else ((160, 160), 1000, 40)
        return make_movie("1p", dims=dims, n_frames=T, n_neurons=K, motion="rigid",
                          max_shift=3, seed=seed, keep_clean=False, n_vessels=3,
                          vessel_depth=0.3)
    if small:
        return make_movie("2p", dims=(128, 128), n_frames=600, n_neurons=30,
                          motion="rigid", max_shift=4, seed=seed, keep_clean=False)
    return standard_2p(seed=seed)


def demo_params(truth, use_cuda: bool, ring_cnn: bool = False):
    """CaImAn-style parameters a user would pick for this movie (with
    ``ring_cnn``, for the 1p movie once the Ring-CNN has removed its
    background: CNMF as for two-photon data)."""
    from .params import CNMFParams

    gsig = int(round(float(np.median(truth.sigmas))))
    d1, d2 = truth.dims
    common = {"fr": truth.fr, "decay_time": truth.decay_time, "use_cuda": use_cuda,
              "max_shifts": (8, 8), "p": 1, "gSig": [gsig, gsig], "merge_thr": 0.85,
              "min_SNR": 2.5, "rval_thr": 0.8}
    if truth.kind == "1p" and ring_cnn:
        return CNMFParams(params_dict={
            **common, "gSig_filt": (3, 3), "nb": 1, "rf": 24, "stride": 12, "K": 8,
            "only_init": True, "use_cnn": False, "lr": 1e-2, "max_epochs": 40,
            "use_add": True})
    if truth.kind == "1p":
        # CaImAn's 1p settings: high-pass filtered registration, CNMF-E with
        # the ring background and no low-rank background components.
        return CNMFParams(params_dict={
            **common, "gSig_filt": (3, 3), "center_psf": True, "method_init": "corr_pnr",
            "nb": 0, "K": None, "rf": None, "only_init": True, "min_corr": 0.8,
            "min_pnr": 5, "ring_size_factor": 1.5, "ssub_B": 2, "low_rank_background": None,
            "use_cnn": False})
    rf = 24 if max(d1, d2) <= 128 else 32
    return CNMFParams(params_dict={
        **common, "nb": 1, "rf": rf, "stride": 12, "K": patch_K(truth.K, (d1, d2), rf),
        "only_init": True})


def patch_K(n_cells: int, dims, rf: int) -> int:
    """Components per patch as a user who knows the cell density picks it.

    CaImAn's ``K`` is an upper bound on the cells a patch holds: the cells a
    ``2 rf`` square holds on average, and a quarter more for patches denser
    than the average. (Half more was tried on the hard 2p movies: at
    200 x 200 it scores as well, but in 96 x 96 x 400 movies the extra
    components of sparse patches pick noise that evaluation then rejects,
    F1 of all components 0.91 -> 0.83.)"""
    per_patch = n_cells * (2 * rf) ** 2 / (dims[0] * dims[1])
    return max(1, int(np.ceil(1.25 * per_patch)))


def score(truth, est, shifts) -> dict:
    """Accuracy of a pipeline result against the truth."""
    from .metrics import registration_error, roi_f1, spike_correlation, trace_correlation

    out = {"shift_rms": registration_error(truth.shifts, shifts, subtract_mean=True)}
    every = roi_f1(truth.A, est["A"], truth.dims)
    good = np.asarray(est["idx_components"], dtype=int)
    kept = roi_f1(truth.A, est["A"][:, good], truth.dims)
    mt, me = kept["matched_true"], good[kept["matched_est"]]
    r = trace_correlation(truth.C, est["C"], mt, me)
    rs = spike_correlation(truth.S, est["S"], mt, me, bin_size=2)
    out.update(n_found=est["A"].shape[1], n_accepted=len(good), f1_all=every["f1"],
               f1=kept["f1"], precision=kept["precision"], recall=kept["recall"],
               trace_r=float(np.median(r)) if r.size else float("nan"),
               spike_r=float(np.median(rs)) if rs.size else float("nan"))
    return out


def run_demo(use_cuda: bool = False, small: bool = False, seed: int = 0,
             out_dir: str | None = None, one_photon: bool = False, ring_cnn: bool = False) -> int:
    """Run the demo and print each stage's accuracy. Returns 0."""
    import tifffile

    from . import backend
    from .io import load_results
    from .pipeline import run_pipeline

    if ring_cnn and not one_photon:
        from .errors import ParameterError
        raise ParameterError("--ring-cnn: the Ring-CNN background is for one-photon movies; "
                             "add --1p")
    device = backend.get_device(use_cuda)   # fails early and clearly without a GPU
    print(f"gpu-cnmf demo on {backend.describe(device)}", flush=True)
    t0 = time.perf_counter()
    movie, truth = demo_movie(small, seed, one_photon)
    T, d1, d2 = movie.shape
    print(f"synthetic {truth.kind} movie: {T} frames of {d1}x{d2}, {truth.K} neurons, rigid motion "
          f"up to {np.abs(truth.shifts).max():.1f} px ({time.perf_counter() - t0:.1f} s)",
          flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu_cnmf_demo_") as tmp:
        work = Path(out_dir) if out_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tif = work / "demo_movie.tif"
        tifffile.imwrite(tif, movie)
        del movie
        result = run_pipeline([str(tif)], demo_params(truth, use_cuda, ring_cnn),
                              str(work / "demo_results.hdf5"), ring_cnn=ring_cnn)
        print(result.summary(), flush=True)
        saved = load_results(result.out_path)
        s = score(truth, saved["estimates"], saved["motion"]["shifts_rig"])

    rows = [("motion: shift RMS error (px)", f"{s['shift_rms']:.3f}"),
            ("CNMF: components found / accepted / true",
             f"{s['n_found']} / {s['n_accepted']} / {truth.K}"),
            ("CNMF: ROI F1, all components", f"{s['f1_all']:.3f}"),
            ("CNMF: ROI F1, accepted components", f"{s['f1']:.3f}"),
            ("      precision / recall", f"{s['precision']:.2f} / {s['recall']:.2f}"),
            ("CNMF: median trace correlation", f"{s['trace_r']:.3f}"),
            ("OASIS: median spike correlation (2-frame bins)", f"{s['spike_r']:.3f}")]
    print("accuracy against the truth:")
    for name, value in rows:
        print(f"  {name:<48s} {value:>14s}")
    print(f"total {time.perf_counter() - t0:.1f} s", flush=True)
    return 0
