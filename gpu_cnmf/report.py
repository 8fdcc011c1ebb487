"""Pictures of a results file: :func:`write_report`.

Two PNG files:

- ``<name>_contours.png``: the local correlation image ``Cn`` saved with
  the results (else the mean image: saved, or rebuilt from the model as
  ``b f + A C`` averaged over time) with the contour of every component,
  accepted ones in green and rejected ones in red;
- ``<name>_traces.png``: the traces of the components with the highest SNR
  (``C`` in colour over the raw trace ``C + YrA`` in grey).

Matplotlib (the extra ``gpu_cnmf[report]``) is imported only here, and
only its object-oriented API with the Agg canvas is used, so a user's
interactive backend is left alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import ParameterError
from .io.results import atomic_write, load_results, require_extra

__all__ = ["write_report", "background_image", "contour_level"]


def contour_level(footprint: np.ndarray, nrg: float = 0.9) -> float:
    """The value above which the pixels of ``footprint`` hold the fraction
    ``nrg`` of its energy (sum of squares): CaImAn's 'nrg' contour."""
    v = np.sort(np.asarray(footprint, dtype=np.float64).ravel())[::-1]
    v = v[v > 0]
    if v.size == 0:
        return 0.0
    cum = np.cumsum(v ** 2)
    i = int(np.searchsorted(cum, nrg * cum[-1]))
    return float(v[min(i, v.size - 1)])


def _frames_to_images(A, dims):
    """Footprints (pixels x K, Fortran order) as (K, d1, d2) images (3-D
    frames are shown as their maximum over the last axis)."""
    A = sp.csc_matrix(A)
    K = A.shape[1]
    imgs = A.toarray().T.reshape((K,) + tuple(dims)[::-1])
    imgs = imgs.transpose((0,) + tuple(range(len(dims), 0, -1)))
    return imgs.max(axis=-1) if len(dims) == 3 else imgs


def background_image(est: dict, extra: dict | None):
    """The image to draw contours on and its name: ``Cn``, else a saved
    mean image, else the model's mean ``b f + A C`` over time."""
    dims = tuple(int(d) for d in est["dims"])
    img, name = est.get("Cn"), "local correlation image"
    if img is None and extra and isinstance(extra.get("summary_images"), dict):
        img, name = extra["summary_images"].get("mean"), "mean image"
    if img is None:
        name = "mean image (model)"
        flat = np.zeros(int(np.prod(dims)))
        if est.get("A") is not None and est.get("C") is not None:
            flat += sp.csc_matrix(est["A"]) @ np.asarray(est["C"]).mean(axis=1)
        if est.get("b") is not None and est.get("f") is not None and np.size(est["b"]):
            flat += np.asarray(est["b"]) @ np.asarray(est["f"]).mean(axis=1)
        img = flat.reshape(dims, order="F")
    img = np.asarray(img, dtype=np.float64)
    return (img.max(axis=-1) if img.ndim == 3 else img), name


def _accepted_mask(est, K):
    good = est.get("idx_components")
    if good is None:
        return np.ones(K, bool), False
    mask = np.zeros(K, bool)
    mask[np.asarray(good, dtype=int)] = True
    return mask, True


def _save(fig, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _contours_figure(est, extra, Figure):
    img, name = background_image(est, extra)
    dims = tuple(int(d) for d in est["dims"])
    K = 0 if est.get("A") is None else sp.csc_matrix(est["A"]).shape[1]
    accepted, evaluated = _accepted_mask(est, K)
    fig = Figure(figsize=(7, 7 * img.shape[0] / max(img.shape[1], 1) + 0.6))
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = np.nanpercentile(img, [1, 99.5]) if np.isfinite(img).any() else (0, 1)
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="upper")
    if K:
        for k, fp in enumerate(_frames_to_images(est["A"], dims)):
            level = contour_level(fp)
            if level <= 0 or fp.max() <= level:
                continue
            ax.contour(fp, levels=[level], colors="limegreen" if accepted[k] else "red",
                       linewidths=0.9)
    n_ok = int(accepted.sum())
    status = (f"{n_ok} accepted (green), {K - n_ok} rejected (red)" if evaluated
              else f"{K} components (not evaluated)")
    ax.set_title(f"{name}: {status}", fontsize=10)
    ax.set_axis_off()
    fig.tight_layout()
    return fig


def _traces_figure(est, fr, n_top, Figure):
    C = np.asarray(est["C"], dtype=np.float64)
    K, T = C.shape
    raw = C + np.asarray(est["YrA"], dtype=np.float64) if est.get("YrA") is not None else None
    snr = est.get("SNR_comp")
    snr = np.asarray(snr, dtype=np.float64) if snr is not None and np.size(snr) == K else None
    order = np.argsort(-(snr if snr is not None else C.max(axis=1)), kind="stable")[:n_top]
    accepted, _ = _accepted_mask(est, K)
    t = np.arange(T) / float(fr)
    fig = Figure(figsize=(10, 1.0 + 0.9 * max(len(order), 1)))
    ax = fig.add_subplot(1, 1, 1)
    for row, k in enumerate(order):
        ref = raw[k] if raw is not None else C[k]
        lo, span = ref.min(), np.ptp(ref) or 1.0
        y0 = (len(order) - 1 - row) * 1.2
        if raw is not None:
            ax.plot(t, y0 + (raw[k] - lo) / span, color="0.7", lw=0.6)
        ax.plot(t, y0 + (C[k] - lo) / span, lw=0.9,
                color="forestgreen" if accepted[k] else "firebrick")
        label = f"#{k}" + (f"  SNR {snr[k]:.1f}" if snr is not None else "")
        ax.text(t[-1] if T else 0, y0 + 0.5, "  " + label, fontsize=8, va="center")
    ax.set_yticks([])
    ax.set_xlabel("time (s)")
    ax.set_title(f"top {len(order)} of {K} components by "
                 f"{'SNR' if snr is not None else 'peak'} (C in colour, C + YrA in grey)",
                 fontsize=10)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def write_report(results_path, out_dir=None, n_traces: int = 10) -> list[str]:
    """Draw the components of a results file; return the PNG paths.

    Parameters
    ----------
    results_path : path
        A file written by :func:`gpu_cnmf.io.results.save_results` (or
        CaImAn's ``cnmf.save``).
    out_dir : path, optional
        Folder for the pictures (made if missing); default: next to the
        results file.
    n_traces : int
        How many traces (highest SNR first) to draw.

    Raises
    ------
    OptionalDependencyError
        matplotlib (``gpu_cnmf[report]``) is not installed.
    MovieError, ParameterError
        The results file is missing, unreadable, or has no components.
    """
    if int(n_traces) < 0:
        raise ParameterError(f"n_traces: expected 0 or more traces to draw, got {n_traces}")
    require_extra("matplotlib", "report", "gpu-cnmf report")
    from matplotlib.figure import Figure

    results_path = Path(results_path)
    res = load_results(results_path)
    est = res["estimates"]
    if not est or est.get("A") is None or est.get("C") is None or est.get("dims") is None:
        raise ParameterError(f"{results_path}: no components to draw (estimates A, C and "
                             "dims are needed)")
    out_dir = Path(out_dir) if out_dir is not None else results_path.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise ParameterError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    fr = 30.0
    if res["params"] is not None:
        fr = float(res["params"].data["fr"])
    stem = results_path.stem
    paths = [_save(_contours_figure(est, res["extra"], Figure),
                   out_dir / f"{stem}_contours.png"),
             _save(_traces_figure(est, fr, int(n_traces), Figure),
                   out_dir / f"{stem}_traces.png")]
    return [os.fspath(p) for p in paths]
