"""Pictures of components for people: contours, correlation/PNR images,
a component viewer, the patch grid, cross-session matches, a results movie.

Matplotlib (the extra ``gpu_cnmf[report]``) is imported inside the
functions, never at import time. Drawing goes onto a given ``ax`` or onto
pyplot's current axes, as CaImAn's functions do; on a machine with no
display matplotlib falls back to its Agg canvas, so everything here runs
headless (figures can be saved, nothing is shown).

Footprints ``A`` are (pixels, K), Fortran pixel order (``swap_dim=True``:
C order), dense or sparse; ``dims`` is the frame shape.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import scipy.sparse as sp

from .errors import ParameterError

__all__ = ["footprint_images", "get_contours", "plot_contours", "correlation_pnr_figure",
           "component_viewer", "view_quilt", "registration_figure", "results_movie_frames",
           "write_movie", "play_movie", "has_display"]


def _pyplot():
    from .io.results import require_extra
    require_extra("matplotlib", "report", "plotting")
    import matplotlib.pyplot as plt
    return plt


def _dims2(dims):
    try:
        d = tuple(int(v) for v in dims)
    except TypeError:
        raise ParameterError(f"dims: expected the frame shape (d1, d2), got {dims!r}") from None
    if len(d) != 2 or min(d) < 1:
        raise ParameterError(f"dims: expected the 2D frame shape (d1, d2), got {dims!r}")
    return d


def _footprint_matrix(A, dims) -> sp.csc_matrix:
    dims = _dims2(dims)
    A = sp.csc_matrix(A if sp.issparse(A) else np.atleast_2d(np.asarray(A, dtype=np.float64).T).T,
                      dtype=np.float64)
    if A.shape[0] != dims[0] * dims[1]:
        raise ParameterError(f"A: expected (pixels, K) footprints with {dims[0] * dims[1]} "
                             f"pixels for dims={dims}, got shape {A.shape}")
    return A


def _image_of(A: sp.csc_matrix, k: int, dims, swap_dim: bool = False) -> np.ndarray:
    """Footprint ``k`` of a csc matrix as a ``dims`` image."""
    col = A[:, k].toarray().ravel()
    return col.reshape(dims, order="C" if swap_dim else "F")


def footprint_images(A, dims, swap_dim: bool = False) -> np.ndarray:
    """Footprints as images, ``(K, d1, d2)`` float64 (dense: for a few
    components; the functions here take one footprint at a time)."""
    dims = _dims2(dims)
    A = _footprint_matrix(A, dims)
    return np.stack([_image_of(A, k, dims, swap_dim) for k in range(A.shape[1])]) \
        if A.shape[1] else np.zeros((0,) + dims)


def _sum_image(A, dims) -> np.ndarray:
    A = _footprint_matrix(A, dims)
    return np.asarray(A.sum(axis=1)).ravel().reshape(dims, order="F")


def _level_image(img: np.ndarray, thr: float, thr_method: str) -> tuple[np.ndarray, float]:
    """The image to cut and the level: 'max' cuts the footprint at ``thr``
    times its peak; 'nrg' cuts the map of cumulative energy (pixels sorted
    by value, each holding the fraction of the footprint's sum of squares
    in it and the brighter ones) at ``thr``, enclosing the brightest pixels
    that hold that fraction of the energy."""
    img = np.clip(img, 0, None)
    if thr_method == "max":
        return img, thr * img.max()
    v = img.ravel()
    order = np.argsort(v)[::-1]
    cum = np.cumsum(v[order] ** 2)
    nrg = np.ones(v.size)
    if cum[-1] > 0:
        nrg[order] = cum / cum[-1]
    nrg[v <= 0] = 1.0
    # inside = low cumulative energy: flip so that inside is high, as for 'max'
    return 1.0 - nrg.reshape(img.shape), 1.0 - thr


def get_contours(A, dims, thr: float = 0.9, thr_method: str = "nrg",
                 swap_dim: bool = False) -> list[dict]:
    """Contour of every footprint (CaImAn's ``get_contours``).

    Parameters
    ----------
    A : (pixels, K) footprints
    dims : (d1, d2)
    thr : float
        'nrg': fraction of each footprint's energy enclosed; 'max':
        fraction of its peak at which it is cut.
    thr_method : 'nrg' or 'max'
    swap_dim : bool
        Pixels in C order.

    Returns
    -------
    list of dict, one per component, with
        ``neuron_id`` (1-based), ``coordinates`` ((n, 2) array of (x, y) =
        (column, row) points, closed pieces separated by a NaN row),
        ``CoM`` (centre of mass, (row, column)), ``bbox`` ([row min, row
        max, column min, column max] of the contour, floored/ceiled).
    """
    if thr_method not in ("nrg", "max"):
        raise ParameterError(f"thr_method: expected 'nrg' or 'max', got {thr_method!r}")
    if not 0 < float(thr) <= 1:
        raise ParameterError(f"thr: expected a fraction in (0, 1], got {thr}")
    import contourpy   # matplotlib's contouring, without a figure

    dims = _dims2(dims)
    A = _footprint_matrix(A, dims)
    rows, cols = np.indices(dims)
    out = []
    for k in range(A.shape[1]):
        img = _image_of(A, k, dims, swap_dim)
        pos = np.clip(img, 0, None)
        mass = pos.sum()
        com = (np.array([(rows * pos).sum(), (cols * pos).sum()]) / mass if mass > 0
               else np.array([np.nan, np.nan]))
        pieces = []
        if mass > 0:
            z, level = _level_image(img, float(thr), thr_method)
            # pad so that contours touching the border close
            zp = np.pad(z, 1, constant_values=min(z.min(), level) - 1)
            gen = contourpy.contour_generator(z=zp, line_type="Separate")
            for line in gen.lines(level):
                xy = np.asarray(line, dtype=np.float64) - 1.0   # (x=col, y=row)
                xy[:, 0] = np.clip(xy[:, 0], 0, dims[1] - 1)
                xy[:, 1] = np.clip(xy[:, 1], 0, dims[0] - 1)
                pieces.append(xy)
        if pieces:
            coords = np.concatenate([np.vstack([p, [np.nan, np.nan]]) for p in pieces])[:-1]
            bbox = [np.floor(np.nanmin(coords[:, 1])), np.ceil(np.nanmax(coords[:, 1])),
                    np.floor(np.nanmin(coords[:, 0])), np.ceil(np.nanmax(coords[:, 0]))]
        else:
            coords = np.zeros((0, 2))
            bbox = [np.nan] * 4
        out.append({"neuron_id": k + 1, "coordinates": coords, "CoM": com, "bbox": bbox})
    return out


def _image_limits(img, vmin, vmax):
    finite = np.isfinite(img)
    if vmin is None:
        vmin = float(np.nanpercentile(img, 1)) if finite.any() else 0.0
    if vmax is None:
        vmax = float(np.nanpercentile(img, 99)) if finite.any() else 1.0
    return vmin, vmax


def plot_contours(A, Cn, thr=None, thr_method: str = "max", maxthr: float = 0.2,
                  nrgthr: float = 0.9, display_numbers: bool = True, max_number=None,
                  cmap=None, swap_dim: bool = False, colors="w", vmin=None, vmax=None,
                  coordinates=None, contour_args=None, number_args=None, ax=None,
                  **kwargs) -> list[dict]:
    """Draw ``Cn`` and the contour of every footprint (CaImAn's
    ``plot_contours``); returns the contours (:func:`get_contours`).

    ``thr`` (CaImAn's deprecated spelling) means ``thr_method='nrg'`` with
    ``nrgthr=thr``. ``max_number`` draws only the first components.
    ``coordinates`` reuses contours from an earlier call. Extra keyword
    arguments go to ``imshow``.
    """
    plt = _pyplot()
    Cn = np.asarray(Cn, dtype=np.float64)
    if Cn.ndim != 2:
        raise ParameterError(f"Cn: expected a 2D image, got shape {Cn.shape}")
    if thr is not None:
        thr_method, nrgthr = "nrg", float(thr)
    if thr_method not in ("nrg", "max"):
        raise ParameterError(f"thr_method: expected 'nrg' or 'max', got {thr_method!r}")
    if ax is None:
        ax = plt.gca()
    lo, hi = _image_limits(Cn, vmin, vmax)
    ax.imshow(Cn, interpolation=None, cmap=cmap, vmin=lo, vmax=hi, **kwargs)
    if coordinates is None:
        coordinates = get_contours(A, Cn.shape, maxthr if thr_method == "max" else nrgthr,
                                   thr_method, swap_dim)
    shown = coordinates if max_number is None else coordinates[:int(max_number)]
    for c in shown:
        xy = c["coordinates"]
        if xy.size:
            ax.plot(xy[:, 0], xy[:, 1], color=colors, **(contour_args or {}))
        if display_numbers and np.all(np.isfinite(c["CoM"])):
            ax.text(c["CoM"][1], c["CoM"][0], str(c["neuron_id"]), color=colors,
                    **(number_args or {}))
    return coordinates


def correlation_pnr_figure(cn, pnr, cmap: str = "jet", fig=None):
    """The correlation image, the PNR image and their product side by side
    (CaImAn's ``inspect_correlation_pnr``, without its threshold sliders: a
    seed needs ``Cn >= min_corr`` and ``pnr >= min_pnr``). Returns the
    figure."""
    plt = _pyplot()
    cn, pnr = np.asarray(cn, dtype=np.float64), np.asarray(pnr, dtype=np.float64)
    if cn.shape != pnr.shape or cn.ndim != 2:
        raise ParameterError(f"cn, pnr: expected two 2D images of one shape, got {cn.shape} "
                             f"and {pnr.shape}")
    fig = fig if fig is not None else plt.figure(figsize=(10, 4))
    for i, (img, title) in enumerate([(cn, "correlation image"), (pnr, "PNR"),
                                      (cn * pnr, "PNR * correlation")]):
        ax = fig.add_subplot(1, 3, i + 1)
        im = ax.imshow(img, cmap=cmap)
        ax.set_title(title)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def component_viewer(A, C, dims, YrA=None, img=None, idx=None, fr: float = 1.0,
                     thr: float = 0.9, cmap: str = "gray"):
    """A figure to step through components: the image with the selected
    component's contour, its footprint, and its traces (``C`` and, when
    given, the raw ``C + YrA``), with a slider choosing the component
    (CaImAn's ``view_components``; the slider is live in an interactive
    backend, the first component is drawn otherwise).

    Returns
    -------
    fig, slider
    """
    plt = _pyplot()
    from matplotlib.widgets import Slider

    dims = _dims2(dims)
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    K = C.shape[0]
    Am = _footprint_matrix(A, dims)
    if Am.shape[1] != K:
        raise ParameterError(f"A, C: {Am.shape[1]} footprints but {K} traces")
    sel = np.arange(K) if idx is None else np.asarray(idx, dtype=int).ravel()
    if sel.size == 0:
        raise ParameterError("idx: no component to show")
    if sel.min() < 0 or sel.max() >= K:
        raise ParameterError(f"idx: component indices must be in [0, {K}), got {sel}")
    raw = None if YrA is None else C + np.asarray(YrA, dtype=np.float64).reshape(C.shape)
    bg = _sum_image(Am, dims) if img is None else np.asarray(img, dtype=np.float64)
    contours = get_contours(Am, dims, thr, "nrg")
    t = np.arange(C.shape[1]) / float(fr)
    fig = plt.figure(figsize=(11, 5))
    ax_img = fig.add_axes([0.03, 0.25, 0.3, 0.7])
    ax_fp = fig.add_axes([0.35, 0.25, 0.2, 0.7])
    ax_tr = fig.add_axes([0.6, 0.25, 0.38, 0.7])
    ax_sl = fig.add_axes([0.1, 0.08, 0.8, 0.05])
    lo, hi = _image_limits(bg, None, None)

    def draw(i):
        k = int(sel[int(i)])
        for ax in (ax_img, ax_fp, ax_tr):
            ax.clear()
        ax_img.imshow(bg, cmap=cmap, vmin=lo, vmax=hi)
        xy = contours[k]["coordinates"]
        if xy.size:
            ax_img.plot(xy[:, 0], xy[:, 1], color="r")
        ax_img.set_title(f"component {k}")
        ax_img.set_axis_off()
        ax_fp.imshow(_image_of(Am, k, dims), cmap="viridis")
        ax_fp.set_title("footprint")
        ax_fp.set_axis_off()
        if raw is not None:
            ax_tr.plot(t, raw[k], color="0.6", lw=0.7, label="C + YrA")
        ax_tr.plot(t, C[k], color="C0", lw=1, label="C")
        ax_tr.set_xlabel("time (s)" if fr != 1.0 else "frame")
        ax_tr.legend(loc="upper right", fontsize=8)
        fig.canvas.draw_idle()

    slider = Slider(ax_sl, "component", 0, sel.size - 1, valinit=0, valstep=1)
    slider.on_changed(draw)
    draw(0)
    return fig, slider


def view_quilt(template_image, stride: int, overlap: int, color="white", vmin=None,
               vmax=None, figsize=(6, 6), ax=None):
    """The image with the grid of patches drawn on it: patches of side
    ``stride + overlap`` starting every ``stride`` pixels, the last one
    flush with the border (CaImAn's ``view_quilt``). Returns the axes."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    from .motion.piecewise import patch_starts

    img = np.asarray(template_image, dtype=np.float64)
    if img.ndim != 2:
        raise ParameterError(f"template_image: expected a 2D image, got shape {img.shape}")
    if int(stride) < 1 or int(overlap) < 0:
        raise ParameterError(f"stride, overlap: expected stride >= 1 and overlap >= 0 pixels, "
                             f"got {stride}, {overlap}")
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    lo, hi = _image_limits(img, vmin, vmax)
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    rs, rsize = patch_starts(img.shape[0], int(stride), int(overlap))
    cs, csize = patch_starts(img.shape[1], int(stride), int(overlap))
    for r in rs:
        for c in cs:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), csize, rsize, fill=False,
                                   edgecolor=color, lw=0.8))
    ax.set_axis_off()
    return ax


def registration_figure(A1, A2, dims, matched1, matched2, non_matched1, non_matched2,
                        Cn=None, cmap: str = "viridis", thr: float = 0.98):
    """Matches (left) and mismatches (right) of two sessions: session 1's
    contours in white, session 2's (aligned) in red. Returns the figure."""
    plt = _pyplot()
    dims = _dims2(dims)
    if Cn is None:
        Cn = _sum_image(A1, dims) + _sum_image(A2, dims)
    c1 = get_contours(A1, dims, thr, "nrg")
    c2 = get_contours(A2, dims, thr, "nrg")
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    lo, hi = np.nanpercentile(Cn, [5, 95])
    for ax, i1, i2, title in ((axes[0], matched1, matched2, "matches"),
                              (axes[1], non_matched1, non_matched2, "mismatches")):
        ax.imshow(Cn, vmin=lo, vmax=hi, cmap=cmap)
        for cs, idx, col in ((c1, i1, "w"), (c2, i2, "r")):
            for k in np.asarray(idx, dtype=int):
                xy = cs[k]["coordinates"]
                if xy.size:
                    ax.plot(xy[:, 0], xy[:, 1], color=col, lw=1)
        ax.set_title(title)
        ax.set_axis_off()
    return fig


# --------------------------------------------------------------------------
# results movie

def has_display() -> bool:
    """Whether windows can be shown: an interactive matplotlib backend, or
    (before matplotlib is loaded) a display server to talk to."""
    import sys
    if "matplotlib" in sys.modules:
        import matplotlib
        backend = matplotlib.get_backend().lower()
        return not any(b in backend for b in ("agg", "pdf", "svg", "ps", "cairo", "template"))
    if os.name == "nt" or sys.platform == "darwin":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def results_movie_frames(Y, A, C, dims, b=None, f=None, W=None, b0=None,
                         frame_range=slice(None), include_bck: bool = True,
                         gain_res: float = 1, bpx: int = 0, magnification: float = 1,
                         q_min: float = 2, q_max: float = 99.75, thr: float = 0) -> np.ndarray:
    """Frames of CaImAn's results movie: the data, the model and the
    residual side by side, as 8-bit grey images.

    The model is ``A C`` plus, with ``include_bck``, the background (``b f``,
    or the CNMF-E ring background ``W``, ``b0``); the residual is
    ``Y - A C - background`` times ``gain_res``. Without ``include_bck`` the
    background is subtracted from the data panel too. ``bpx`` border pixels
    are cut, frames are enlarged ``magnification`` times (nearest pixel),
    and grey levels span the ``q_min``..``q_max`` percentiles of the data
    panel. ``thr > 0`` draws the outline of every footprint cut at ``thr``
    of its peak in white on the three panels.

    Returns
    -------
    ndarray (n, H, 3 W) uint8
    """
    dims = _dims2(dims)
    from .io import ArraySource, MovieSource
    src = Y if isinstance(Y, MovieSource) else ArraySource(np.asarray(Y))
    if tuple(src.dims) != dims:
        raise ParameterError(f"imgs: frames of shape {tuple(src.dims)} do not match dims={dims}")
    T = src.n_frames
    frames = np.arange(T)[frame_range]
    if frames.size == 0:
        raise ParameterError(f"frame_range: {frame_range} selects no frame of {T}")
    A = sp.csc_matrix(A)
    C = np.asarray(C, dtype=np.float64)
    if C.shape != (A.shape[1], T):
        raise ParameterError(f"C: expected shape ({A.shape[1]}, {T}), got {C.shape}")
    lo_f, hi_f = int(frames.min()), int(frames.max()) + 1
    Yc = src.read(lo_f, hi_f)[frames - lo_f].astype(np.float64)
    AC = (A @ C[:, frames]).T.reshape((-1, dims[1], dims[0])).transpose(0, 2, 1)
    if W is not None and b0 is not None:
        from .cnmf.ring_movie import BackgroundRemovedSource
        clean = BackgroundRemovedSource(np.asarray(src.read(lo_f, hi_f), dtype=np.float32),
                                        A, C[:, lo_f:hi_f], b0, W)
        B = Yc - clean.read(0, hi_f - lo_f)[frames - lo_f]
    elif b is not None and f is not None and np.size(b):
        bf = np.asarray(b, dtype=np.float64) @ np.asarray(f, dtype=np.float64)[:, frames]
        B = bf.T.reshape((-1, dims[1], dims[0])).transpose(0, 2, 1)
    else:
        B = np.zeros_like(Yc)
    res = (Yc - AC - B) * float(gain_res)
    data, model = (Yc, AC + B) if include_bck else (Yc - B, AC)
    p = int(bpx)
    if p:
        data, model, res = (x[:, p:-p, p:-p] for x in (data, model, res))
    lo, hi = np.percentile(data, [q_min, q_max])
    hi = hi if hi > lo else lo + 1

    def grey(x):
        return np.clip((x - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)

    panels = [grey(data), grey(model), grey(res)]
    if thr > 0:
        edge = _outlines(A, dims, float(thr))
        if p:
            edge = edge[p:-p, p:-p]
        for x in panels:
            x[:, edge] = 255
    out = np.concatenate(panels, axis=2)
    m = float(magnification)
    if m != 1:
        if m <= 0:
            raise ParameterError(f"magnification: expected > 0, got {magnification}")
        rows = np.minimum((np.arange(int(round(out.shape[1] * m))) / m).astype(int),
                          out.shape[1] - 1)
        cols = np.minimum((np.arange(int(round(out.shape[2] * m))) / m).astype(int),
                          out.shape[2] - 1)
        out = out[:, rows][:, :, cols]
    return out


def _outlines(A, dims, thr: float) -> np.ndarray:
    """Pixels on the border of any footprint's mask (values above ``thr``
    times its peak), ``dims`` bool."""
    from scipy.ndimage import binary_erosion
    edge = np.zeros(dims, bool)
    A = _footprint_matrix(A, dims)
    for k in range(A.shape[1]):
        img = _image_of(A, k, dims)
        if img.max() <= 0:
            continue
        m = img > thr * img.max()
        edge |= m & ~binary_erosion(m)
    return edge


def write_movie(frames: np.ndarray, path, fr: float = 30.0) -> str:
    """Write 8-bit grey frames ``(n, H, W)``: ``.avi``/``.mp4``/``.mkv``
    through PyAV (MPEG-4 part 2 video), ``.npy`` as an array, ``.tif`` as a
    TIFF stack. Written to a temporary name, then renamed."""
    from .io.results import atomic_write
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    frames = np.asarray(frames, dtype=np.uint8)
    if ext == ".npy":
        def write(tmp):
            with open(tmp, "wb") as fh:
                np.save(fh, frames)
    elif ext in (".tif", ".tiff"):
        import tifffile

        def write(tmp):
            tifffile.imwrite(tmp, frames, photometric="minisblack")
    elif ext in (".avi", ".mp4", ".mkv", ".mov"):
        from .io.results import require_extra
        av = require_extra("av", "video", "writing a movie file")
        from fractions import Fraction

        def write(tmp):
            with av.open(tmp, mode="w", format=ext[1:] if ext != ".mkv" else "matroska") as box:
                st = box.add_stream("mpeg4", rate=Fraction(fr).limit_denominator(1000))
                # even sizes for the yuv420p encoder
                h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
                st.height, st.width, st.pix_fmt = h, w, "yuv420p"
                st.bit_rate = 4_000_000
                for fr_ in frames:
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(fr_[:h, :w]),
                                                    format="gray")
                    for pkt in st.encode(vf):
                        box.mux(pkt)
                for pkt in st.encode():
                    box.mux(pkt)
    else:
        raise ParameterError(f"movie_name: {path}: expected a .avi, .mp4, .mkv, .npy or .tif "
                             "file name")
    atomic_write(path, write)
    return path


def play_movie(frames: np.ndarray, fr: float = 30.0, save_movie: bool = False,
               movie_name: str = "results_movie.avi", display: bool = True):
    """Show frames in a window (when a display is available and ``display``)
    and/or write them (``save_movie``) with :func:`write_movie`. With no
    display and nothing to save, warns and returns. Returns the written
    path or None."""
    written = write_movie(frames, movie_name, fr) if save_movie else None
    if not display:
        return written
    if not has_display():
        warnings.warn("play_movie: no display available, nothing shown"
                      + (f"; the movie was written to {written}" if written else
                         "; pass save_movie=True to write it to a file"), stacklevel=3)
        return written
    plt = _pyplot()
    fig, ax = plt.subplots()
    im = ax.imshow(frames[0], cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()
    for fr_ in frames:
        if not plt.fignum_exists(fig.number):
            break                       # window closed: stop playing
        im.set_data(fr_)
        plt.pause(1.0 / max(float(fr), 1e-3))
    return written
