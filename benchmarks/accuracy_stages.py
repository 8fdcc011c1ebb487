"""Where true neurons are lost and false ones kept, stage by stage (issue 15).

On one hard synthetic movie (:func:`gpu_cnmf.synthetic.hard_1p` /
``hard_2p``) with the parameters a CaImAn user would pick
(:func:`gpu_cnmf.demo.demo_params`), the CNMF stages are run one by one on
the movie itself (no motion correction: ``--motion`` keeps the movie's
motion, then the truth is only approximately aligned) and scored against
the truth after each:

- seeds (1p: corr-PNR seeds of the whole field): true cells with a seed
  within ``gSig`` of their centre, seeds farther than ``gSig`` from every
  true centre;
- ``fit`` (patches or the whole field, with ``only_init`` as the
  parameters say) and ``refit``: ROI F1 / precision / recall of all
  components, how many true cells are matched by more than one component
  (duplicates left unmerged);
- evaluation: accepted F1, and for each true cell matched before
  evaluation but rejected, its SNR and spatial r (which test failed).

Usage::

    python benchmarks/accuracy_stages.py --kind 1p --seed 0 --dims 96 --frames 400 --neurons 15
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def _centres(A, dims):
    """Centre of mass (y, x) of each column of A (Fortran pixel order)."""
    import scipy.sparse as sp
    A = sp.csc_matrix(A)
    d1, d2 = dims
    ii = np.tile(np.arange(d1), d2).astype(float)
    jj = np.repeat(np.arange(d2), d1).astype(float)
    w = np.asarray(A.sum(0)).ravel() + 1e-12
    return np.stack([A.T @ ii / w, A.T @ jj / w], 1)


def stage_score(name, truth, A, extra=""):
    from gpu_cnmf.metrics import roi_f1

    r = roi_f1(truth.A, A, truth.dims)
    # true cells whose best-overlap component is not their match: duplicates
    from gpu_cnmf.metrics import binary_masks, jaccard_distance
    Mt, Me = binary_masks(truth.A, truth.dims), binary_masks(A, truth.dims)
    D = jaccard_distance(Mt, Me) if A.shape[1] else np.ones((truth.K, 0))
    near = (D < 0.7).sum(1) if A.shape[1] else np.zeros(truth.K)
    est_near = (D < 0.85).sum(0) if A.shape[1] else np.zeros(0)
    print(f"{name:<10s} K={A.shape[1]:3d}  F1 {r['f1']:.3f}  P {r['precision']:.2f}  "
          f"R {r['recall']:.2f}  true cells with >1 comp (J<0.7): {(near > 1).sum()}  "
          f"comps near no true cell (J>=0.85): {(est_near == 0).sum()} {extra}", flush=True)
    return r


def seeds_score(truth, seeds, gsig):
    c = truth.centers
    if len(seeds) == 0:
        print("seeds: none")
        return
    d = np.hypot(c[:, None, 0] - seeds[None, :, 0], c[:, None, 1] - seeds[None, :, 1])
    hit = (d.min(1) <= gsig)
    false = d.min(0) > gsig
    multi = (d <= gsig).sum(1)
    print(f"seeds      {len(seeds)} seeds; true cells with a seed within gSig: {hit.sum()}/"
          f"{truth.K}; seeds > gSig from every cell: {false.sum()}; cells with >1 seed: "
          f"{(multi > 1).sum()}", flush=True)
    return hit


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", default="1p")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dims", type=int, default=96)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--neurons", type=int, default=15)
    ap.add_argument("--motion", action="store_true", help="keep the movie's rigid motion")
    a = ap.parse_args(argv)
    import torch

    from gpu_cnmf.cnmf.cnmf import CNMF
    from gpu_cnmf.demo import demo_params
    from gpu_cnmf.metrics import roi_f1, trace_correlation
    from gpu_cnmf.synthetic import hard_1p, hard_2p

    torch.manual_seed(0)
    make = hard_2p if a.kind == "2p" else hard_1p
    over = {} if a.motion else {"motion": None}
    movie, truth = make(a.seed, dims=(a.dims, a.dims), n_frames=a.frames,
                        n_neurons=a.neurons, **over)
    images = movie.astype(np.float32)
    params = demo_params(truth, use_cuda=False)
    gsig = params.init["gSig"][0]
    print(f"# {a.kind} seed {a.seed} {a.dims}x{a.dims}x{a.frames}, {truth.K} cells, gSig {gsig}, "
          f"true sigmas {np.round(np.median(truth.sigmas), 2)}", flush=True)
    t0 = time.perf_counter()
    if a.kind == "1p":
        from gpu_cnmf.cnmf.config import fit_config
        from gpu_cnmf.cnmf.corr_pnr import initialize_corr_pnr
        ini = fit_config(params)["init"]
        A0, C0, ring, extra = initialize_corr_pnr(
            images, ini["gSig"], ini["gSiz"], ini["min_corr"], ini["min_pnr"],
            ini["ring_size_factor"], ini["ssub_B"], ini["init_iter"], center_psf=True, K=ini["K"])
        for i, s in enumerate(extra["seeds"]):
            print(f"  pass {i}: {len(s)} seeds, {extra['rounds'][i]} rounds")
        seeds_score(truth, np.concatenate(extra["seeds"]), gsig)
        stage_score("init", truth, A0.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cnm = CNMF(1, params=params).fit(images)
    stage_score("fit", truth, cnm.estimates.A, f"({time.perf_counter() - t0:.0f} s)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cnm2 = cnm.refit(images)
    est = cnm2.estimates
    r_all = stage_score("refit", truth, est.A)
    est.evaluate_components(images, params)
    good = np.asarray(est.idx_components, dtype=int)
    r_acc = stage_score("accepted", truth, est.A[:, good])
    tr = trace_correlation(truth.C, est.C, r_all["matched_true"], r_all["matched_est"])
    print(f"median trace r (all matched) {np.median(tr):.3f}")
    q = params.get_group("quality")
    # true cells matched before evaluation, rejected by it
    lost = [(t, e) for t, e in zip(r_all["matched_true"], r_all["matched_est"]) if e not in good]
    for t, e in lost:
        print(f"  true {t} (centre {np.round(truth.centers[t], 1)}) -> comp {e} rejected: "
              f"SNR {est.SNR_comp[e]:.2f} (min {q['min_SNR']}), r {est.r_values[e]:.2f} "
              f"(thr {q['rval_thr']})" + (f", CNN {est.cnn_preds[e]:.2f} (accept >= "
                                          f"{q['min_cnn_thr']}, reject < {q['cnn_lowest']})"
                                          if q["use_cnn"] else ""))
    fp = sorted(set(good) - set(np.asarray(r_all["matched_est"])))
    cen = _centres(est.A, truth.dims)
    for e in fp:
        dist = np.hypot(*(truth.centers - cen[e]).T)
        print(f"  false accepted comp {e} at {np.round(cen[e], 1)}: SNR {est.SNR_comp[e]:.2f}, "
              f"r {est.r_values[e]:.2f}; nearest true {dist.argmin()} at {dist.min():.1f} px")
    missed = sorted(set(range(truth.K)) - set(np.asarray(r_all["matched_true"])))
    for t in missed:
        dist = np.hypot(*(cen - truth.centers[t]).T) if est.A.shape[1] else np.array([np.inf])
        ring = truth.params.get("ring")
        rr = "" if ring is None else f" ring={bool(ring[t])}"
        print(f"  missed true {t} at {np.round(truth.centers[t], 1)} peak C {truth.C[t].max():.1f}"
              f" sigma {np.round(truth.sigmas[t], 1)}{rr}; nearest comp {dist.argmin()} at "
              f"{dist.min():.1f} px")
    print(f"true peak C: median {np.median(truth.C.max(1)):.1f}, lowest "
          f"{np.round(np.sort(truth.C.max(1))[:6], 1)}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return dict(f1_all=r_all["f1"], f1=r_acc["f1"], est=est, truth=truth, matched=r_all)


if __name__ == "__main__":
    main()
