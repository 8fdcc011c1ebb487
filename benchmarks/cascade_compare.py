"""Spike inference on real ground truth: gpu_cnmf vs oasis-deconv.

CASCADE DS14 (Chen et al. 2013): 18 GCaMP6s recordings (mouse V1, ~60 Hz)
with simultaneously recorded spikes. For each recording, the inferred spike
train and the true one (spike counts per frame) are both summed in bins of
``BIN`` frames (~67 ms) and correlated.

Run:  python benchmarks/cascade_compare.py [--p 1] [--bootstrap] [--table out.md]
      python benchmarks/cascade_compare.py --p 2 --tau-rise 0.05,0.06,0.07,0.08,0.09,0.1,0.12
      (AR(2) with the indicator's rise held and the decay refitted; each
      recording's rise is chosen on the recordings of the other cells)
oasis-deconv (GPL, optional: ``pip install oasis-deconv``) is imported here
only, never by the package.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from gpu_cnmf.deconvolution import deconvolve_batch, g_from_tau

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cascade_ds14_gcamp6s.npz"
BIN = 4
# Where gpu_cnmf is given a rise time only, its decay starts here (s) and is
# refitted (starting at 0.5 s or 2 s instead moved the mean score by <= 0.001).
DECAY_START = 1.0


def load(path=DATA):
    d = np.load(path)
    names = sorted({k.rsplit("__", 1)[0] for k in d.files})
    out = []
    for n in names:
        t = d[n + "__time"]
        y = d[n + "__fluo"].astype(np.float64)
        edges = np.concatenate([t - 0.5 * np.gradient(t), [t[-1] + 0.5 * (t[-1] - t[-2])]])
        counts = np.histogram(d[n + "__spikes"], bins=edges)[0].astype(float)
        ok = np.isfinite(y)
        out.append((n, y[ok], counts[ok]))
    return out


def binned(v, T, b=BIN):
    """Sums of v over bins of b frames, the first T // b bins."""
    n = (T // b) * b
    return np.asarray(v[:n], float).reshape(-1, b).sum(1)


def binned_corr(s_est, s_true, b=BIN):
    a, t = binned(s_est, len(s_true), b), binned(s_true, len(s_true), b)
    if a.std() == 0:
        return 0.0
    return float(np.corrcoef(a, t)[0, 1])


def bootstrap_diff(s_a, s_b, s_true, n=2000, block=150, b=BIN, seed=0):
    """95 % interval of corr(a, true) - corr(b, true) over block-bootstrap
    resamples of the binned trains (blocks of ``block`` bins, ~10 s, keep
    the slow structure of calcium and spikes)."""
    A, B, S = (binned(v, len(s_true), b) for v in (s_a, s_b, s_true))
    nb = len(S) // block
    blocks = np.arange(nb * block).reshape(nb, block)
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n):
        i = blocks[rng.integers(0, nb, nb)].ravel()
        if S[i].std() == 0 or A[i].std() == 0 or B[i].std() == 0:
            continue
        d.append(np.corrcoef(A[i], S[i])[0, 1] - np.corrcoef(B[i], S[i])[0, 1])
    return tuple(np.percentile(d, [2.5, 97.5]))


def ours(y, p, **kw):
    # recordings differ in length: one call each (a batch needs equal T)
    return deconvolve_batch(y.astype(np.float32), p=p, **kw).S


def reference(y, p, g=None, **kw):
    from oasis.functions import deconvolve
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return deconvolve(y, g=(None,) * p if g is None else tuple(g), penalty=1, **kw)[1]


def held_out_choice(scores, groups):
    """Leave one cell out: for each recording (column of ``scores``, one row
    per candidate setting), the candidate with the best mean score over the
    recordings of the other cells (``groups``: a cell label per recording,
    its name without the ``__k`` suffix, which may number several
    recordings of one cell). So no recording of the same cell label helps
    pick a recording's setting."""
    groups = np.asarray(groups)
    out = np.empty(scores.shape[1], int)
    for g in np.unique(groups):
        out[groups == g] = scores[:, groups != g].mean(axis=1).argmax()
    return out


def run(p=1, ours_kw=None, ref_kw=None, bootstrap=False, rise_grid=None, fr=60.0):
    """One row per recording: (name, frames, spikes, r gpu_cnmf,
    r oasis-deconv, seconds gpu_cnmf, seconds oasis-deconv, bootstrap
    interval or None, rise held or None).

    ``rise_grid``: candidate rise times (s). gpu_cnmf then starts from
    g_from_tau(DECAY_START, rise, fr), holds the rise and refits the decay
    (``ours_kw`` must ask for that), and each recording gets the rise chosen
    on the other cells' recordings (:func:`held_out_choice`).
    """
    ours_kw = {} if ours_kw is None else ours_kw
    ref_kw = {} if ref_kw is None else ref_kw
    grid = [None] if rise_grid is None else list(rise_grid)
    data = load()
    runs = []
    for name, y, s in data:
        t0 = time.perf_counter()
        sa = [ours(y, p, **ours_kw) if rise is None else
              ours(y, p, g=g_from_tau(DECAY_START, rise, fr), **ours_kw) for rise in grid]
        t1 = time.perf_counter()
        try:
            sr = reference(y, p, **ref_kw)
        except ImportError:
            sr = None
        runs.append((sa, [binned_corr(v, s) for v in sa], sr, t1 - t0, time.perf_counter() - t1))
    cells = [name.rsplit("__", 1)[0] for name, _, _ in data]
    pick = (held_out_choice(np.array([r[1] for r in runs]).T, cells) if len(grid) > 1
            else np.zeros(len(data), int))
    rows = []
    for (name, y, s), (sa, sc, sr, ta, tr), k in zip(data, runs, pick):
        r = float("nan") if sr is None else binned_corr(sr, s)
        ci = bootstrap_diff(sa[k], sr, s) if bootstrap and sr is not None else None
        rows.append((name, len(y), int(s.sum()), sc[k], r, ta, tr, ci, grid[k]))
    return rows


def table(rows, p, ours_kw, ref_kw, rise_grid=None):
    ci_col, rise_col = rows[0][7] is not None, rise_grid is not None
    head = f"AR order p={p}; gpu_cnmf settings {ours_kw or 'defaults'}"
    if rise_col:
        held = (f"{rise_grid[0]:g} s" if len(rise_grid) == 1 else
                f"the time chosen on the other cells' recordings from {list(rise_grid)} s")
        head += f", rise held at {held}, decay refitted from {DECAY_START} s"
    lines = [head + f"; oasis-deconv settings penalty=1 {ref_kw or '(defaults)'}; bins of {BIN} frames",
             "", "| recording | frames | spikes |" + (" rise (s) |" if rise_col else "")
             + " r gpu_cnmf | r oasis-deconv | diff |" + (" 95 % interval of diff |" if ci_col else ""),
             "|---|---:|---:|" + ("---:|" if rise_col else "") + "---:|---:|---:|" + ("---|" if ci_col else "")]
    for name, T, ns, a, r, _, _, ci, rise in rows:
        lines.append(f"| {name} | {T} | {ns} |" + (f" {rise:g} |" if rise_col else "")
                     + f" {a:.3f} | {r:.3f} | {a - r:+.3f} |"
                     + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}] |" if ci_col else ""))
    A = np.array([r[3] for r in rows])
    R = np.array([r[4] for r in rows])
    lines.append(f"| **mean** | | |" + (" |" if rise_col else "")
                 + f" **{A.mean():.3f}** | **{R.mean():.3f}** | {A.mean() - R.mean():+.3f} |")
    lines.append("")
    lines.append(f"gpu_cnmf >= oasis-deconv on {(A >= R - 1e-9).sum()} of {len(A)} recordings; "
                 f"median diff {np.median(A - R):+.3f}")
    return "\n".join(lines)


def _floats(text):
    """'0.05,0.06' -> [0.05, 0.06] (argparse names this function in its error)."""
    return [float(v) for v in text.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, default=1)
    ap.add_argument("--optimize-g", type=int, default=1)
    ap.add_argument("--s-min", type=lambda v: None if v.lower() == "none" else float(v), default=None,
                    help="None (L1, the default), 0 (automatic threshold) or a threshold")
    ap.add_argument("--noise-method", default="mean")
    ap.add_argument("--fudge-factor", type=float, default=0.96)
    ap.add_argument("--lags", type=int, default=5)
    ap.add_argument("--support", default=None, choices=["ar1", "ar2"],
                    help="two-stage AR(2): spikes only near the events of a first pass")
    ap.add_argument("--exact", type=int, default=1,
                    help="AR(2): 1 exact L1 solve (default), 0 the greedy pool merge alone")
    ap.add_argument("--refit-rise", type=int, default=1,
                    help="AR(2) with --optimize-g: 1 refit decay and rise, 0 the decay only")
    ap.add_argument("--ref-optimize-g", type=int, default=0)
    ap.add_argument("--tau-decay", type=float, default=None,
                    help="give both packages the same g, from this decay time (s) and --tau-rise")
    ap.add_argument("--tau-rise", type=_floats, default=None,
                    help="rise time (s). With --tau-decay: part of the g both packages get. Alone "
                         "(AR(2)): gpu_cnmf holds this rise and refits its decay (optimize_g, "
                         "refit_rise=False), oasis-deconv estimates its own g. A comma-separated "
                         "list: each recording gets the rise that scores best on the other cells' recordings")
    ap.add_argument("--fr", type=float, default=60.0, help="frame rate for --tau-decay/--tau-rise (Hz)")
    ap.add_argument("--bootstrap", action="store_true",
                    help="add each recording's block-bootstrap 95 %% interval of the difference")
    ap.add_argument("--table", default=None)
    a = ap.parse_args()
    ours_kw = dict(optimize_g=bool(a.optimize_g), noise_method=a.noise_method, fudge_factor=a.fudge_factor, lags=a.lags)
    if a.s_min is not None:
        ours_kw["s_min"] = a.s_min
    if a.support is not None:
        ours_kw["support"] = a.support
    if not a.exact:
        ours_kw["exact"] = False
    if not a.refit_rise:
        ours_kw["refit_rise"] = False
    ref_kw = dict(optimize_g=a.ref_optimize_g)
    rise_grid = None
    if a.tau_decay is not None:
        if a.tau_rise is not None and len(a.tau_rise) > 1:
            ap.error("--tau-decay takes one --tau-rise value")
        rise = 0.0 if a.tau_rise is None else a.tau_rise[0]
        g = g_from_tau(a.tau_decay, rise, a.fr)
        if len(g) != a.p:
            ap.error(f"--tau-rise {rise} gives AR({len(g)}), but --p is {a.p}")
        ours_kw["g"] = ref_kw["g"] = g
    elif a.tau_rise is not None:
        if a.p != 2 or not a.optimize_g or min(a.tau_rise) <= 0:
            ap.error("--tau-rise without --tau-decay holds gpu_cnmf's AR(2) rise and refits its decay: "
                     "it needs --p 2, --optimize-g 1 and rise times > 0")
        ours_kw["refit_rise"] = False
        rise_grid = a.tau_rise
    rows = run(a.p, ours_kw, ref_kw, a.bootstrap, rise_grid, a.fr)
    text = table(rows, a.p, ours_kw, ref_kw, rise_grid)
    print(text)
    if a.table:
        Path(a.table).write_text(text + "\n")


if __name__ == "__main__":
    main()
