"""CaImAn's ``caiman.base.movies``: the ``movie`` array and loading.

``movie`` is an ndarray ``(T, d1, d2[, d3])`` that carries the frame rate
``fr`` (and ``start_time``, ``file_name``, ``meta_data``) through slicing
and arithmetic. Its methods call the core: :mod:`gpu_cnmf.movie_ops`
(resize, ΔF/F, binned median), :mod:`gpu_cnmf.io` (reading and writing),
the summary images (local correlations).
"""
from __future__ import annotations

import logging
import os
import warnings

import numpy as np

from .._unsupported import add_unsupported
from ...errors import ParameterError
from ...io import load_movie
from ... import movie_ops

log = logging.getLogger(__name__)

__all__ = ["movie", "load", "load_movie_chain", "concatenate"]

# CaImAn movie methods we do not have -> the nearest thing here
_NOT_HERE = {
    "motion_correct": "gpu_cnmf.caiman.motion_correction.MotionCorrect(...).motion_correct()",
    "motion_correct_3d": "MotionCorrect(..., is3D=True).motion_correct()",
    "extract_shifts": "MotionCorrect(...).motion_correct() then .shifts_rig",
    "apply_shifts": "MotionCorrect.apply_shifts_movie(fname)",
    "debleach": "movie.computeDFF(secsWindow=..., quantilMin=...) (running-percentile baseline)",
    "NonnegativeMatrixFactorization": "gpu_cnmf.caiman.source_extraction.cnmf.CNMF",
    "IPCA": "gpu_cnmf.caiman.source_extraction.cnmf.CNMF",
    "IPCA_stICA": "gpu_cnmf.caiman.source_extraction.cnmf.CNMF",
    "IPCA_denoise": "gpu_cnmf.caiman.source_extraction.cnmf.CNMF (A C + b f denoises)",
    "IPCA_io": "gpu_cnmf.caiman.source_extraction.cnmf.CNMF",
    "partition_FOV_KMeans": "gpu_cnmf.caiman.source_extraction.cnmf.CNMF",
    "guided_filter_blur_2D": "scipy.ndimage filters on the array",
    "bilateral_blur_2D": "scipy.ndimage filters on the array",
    "gaussian_blur_2D": "scipy.ndimage.gaussian_filter(m, (0, sy, sx))",
    "median_blur_2D": "scipy.ndimage.median_filter(m, (1, k, k))",
    "to_3D": "np.reshape",
    "return_cropped": "movie.crop(...)",
    "online_NMF": "gpu_cnmf.caiman.source_extraction.cnmf.CNMF",
    "local_correlations_movie": "gpu_cnmf.caiman.summary_images.local_correlations_movie_offline",
    "play_3D": "movie.play() on one plane (m[:, :, :, z])",
}


class movie(np.ndarray):
    """A movie ``(T, d1, d2[, d3])`` with its frame rate.

    Parameters
    ----------
    input_arr : array-like
    fr : float
        Frame rate (Hz).
    start_time : float
    file_name, meta_data : optional
        Where it came from and anything else to keep with it.
    """

    _ATTRS = ("fr", "start_time", "file_name", "meta_data")

    def __new__(cls, input_arr, fr=30, start_time=0, file_name=None, meta_data=None, **kwargs):
        if kwargs:
            raise NotImplementedError(f"movie(...): argument(s) {sorted(kwargs)} are not "
                                      "supported; nearest: movie(input_arr, fr=, start_time=, "
                                      "file_name=, meta_data=)")
        if isinstance(input_arr, (str, os.PathLike)):
            raise ParameterError("movie(input_arr): expected an array; to read a file use "
                                 "gpu_cnmf.caiman.load(file_name)")
        obj = np.asarray(input_arr).view(cls)
        obj.fr = None if fr is None else float(fr)
        obj.start_time = start_time
        obj.file_name = file_name
        obj.meta_data = meta_data
        return obj

    def __array_finalize__(self, obj):
        for name in self._ATTRS:
            setattr(self, name, getattr(obj, name, None) if obj is not None else None)

    def __reduce__(self):   # pickling keeps the attributes
        state = super().__reduce__()
        return state[0], state[1], (state[2], {k: getattr(self, k) for k in self._ATTRS})

    def __setstate__(self, state):
        nd_state, attrs = state
        super().__setstate__(nd_state)
        for k, v in attrs.items():
            setattr(self, k, v)

    def _like(self, arr, **kw):
        attrs = {k: getattr(self, k) for k in self._ATTRS}
        attrs.update(kw)
        return movie(arr, **attrs)

    def _fr(self):
        if self.fr is None or not np.isfinite(self.fr) or self.fr <= 0:
            raise ParameterError("this movie has no frame rate: set movie.fr (Hz) first")
        return self.fr

    # ------------------------------------------------------------- methods
    def resize(self, fx=1, fy=1, fz=1, interpolation=None):
        """Rescale: ``fx`` columns (d2), ``fy`` rows (d1), ``fz`` time (the
        frame rate scales with it). Area averaging when shrinking, linear
        interpolation when growing (CaImAn's default INTER_AREA); other
        ``interpolation`` values raise NotImplementedError."""
        if interpolation is not None and interpolation != 3:   # cv2.INTER_AREA == 3
            raise NotImplementedError(f"movie.resize(interpolation={interpolation!r}): only "
                                      "the default (area averaging, cv2.INTER_AREA) is "
                                      "available; nearest: interpolation=None")
        out = movie_ops.resize(np.asarray(self), fx=fx, fy=fy, fz=fz)
        fr = None if self.fr is None else self.fr * out.shape[0] / self.shape[0]
        return self._like(out, fr=fr)

    def computeDFF(self, secsWindow=5, quantilMin=8, method="only_baseline", in_place=False,
                   order="F"):
        """Remove a running-percentile baseline F0 (``quantilMin`` percent over
        windows of ``secsWindow`` s). Returns ``(out, F0)`` as movies, out being
        ``F - F0`` (``method='only_baseline'``), ``(F - F0)/F0``
        (``'delta_f_over_f'``) or ``(F - F0)/sqrt(F0)``."""
        out, base = movie_ops.compute_dff(np.asarray(self), self._fr(), secsWindow, quantilMin,
                                          method)
        if in_place:
            self[...] = out
            return self, self._like(base)
        return self._like(out), self._like(base)

    def bin_median(self, window=10):
        """Median over time of the means of bins of ``window`` frames (an image)."""
        return np.asarray(movie_ops.bin_median(np.asarray(self), window))

    def local_correlations(self, eight_neighbours=False, swap_dim=False, frames_per_chunk=1500,
                           do_plot=False, order_mean=1):
        """Correlation image: each pixel's mean correlation with its
        neighbours (8 or 4), with CaImAn's defaults. A movie of at least two
        ``frames_per_chunk`` is cut into ``T // frames_per_chunk`` near-equal
        chunks and the pixel-wise maximum of their images is returned, as
        CaImAn takes the maximum over chunks. ``swap_dim`` as in CaImAn (time last when True)."""
        if do_plot:
            raise NotImplementedError("movie.local_correlations(do_plot=True): nearest: plot "
                                      "the returned image with matplotlib's imshow")
        from ..summary_images import local_correlations
        Y = np.asarray(self)
        t_axis = Y.ndim - 1 if swap_dim else 0
        T = Y.shape[t_axis]
        if frames_per_chunk is None or int(frames_per_chunk) < 1:
            raise ParameterError(f"frames_per_chunk: expected a positive int, got {frames_per_chunk!r}")
        n_chunks = max(1, T // int(frames_per_chunk))
        Cn = None
        for idx in np.array_split(np.arange(T), n_chunks):
            img = local_correlations(np.take(Y, idx, axis=t_axis), eight_neighbours=eight_neighbours,
                                     swap_dim=swap_dim, order_mean=order_mean)
            Cn = img if Cn is None else np.maximum(Cn, img)
        return Cn

    def save(self, file_name, to32=True, order="F", imagej=False, bigtiff=True, compress=0,
             var_name_hdf5="mov", **kwargs):
        """Write the movie: ``.tif``/``.tiff``, ``.h5``/``.hdf5`` (dataset
        ``var_name_hdf5``), ``.npy``, ``.npz`` or ``.mmap`` (CaImAn's name
        carrying the shape; ``order`` applies). Returns the path written."""
        from ...io.writers import save_movie
        unsupported = {k: v for k, v in kwargs.items()
                       if k not in ("excitation_lambda", "sess_desc", "identifier",
                                    "imaging_plane_description", "emission_lambda",
                                    "indicator", "location", "starting_time",
                                    "experimenter", "lab_name", "institution",
                                    "experiment_description", "session_id", "q_max", "q_min")}
        if unsupported or imagej or compress:
            bad = sorted(unsupported) + (["imagej"] if imagej else []) + \
                (["compress"] if compress else [])
            raise NotImplementedError(f"movie.save: argument(s) {bad} are not supported; "
                                      "nearest: movie.save(file_name, order=, var_name_hdf5=)")
        ext = os.path.splitext(os.fspath(file_name))[1].lower()
        if ext in (".avi", ".mp4", ".nwb", ".mat", ".sbx"):
            raise NotImplementedError(f"movie.save to {ext} is not supported; nearest: .tif, "
                                      ".h5/.hdf5, .npy, .npz or .mmap")
        return save_movie(np.asarray(self), file_name, fr=self.fr, var_name_hdf5=var_name_hdf5,
                          order=order, to32=to32)

    def play(self, gain=1, fr=None, magnification=1, offset=0, interpolation=None,
             backend="opencv", do_loop=False, bord_px=None, q_max=99.75, q_min=1,
             plot_text=False, save_movie=False, opencv_codec="H264", movie_name="movie.avi"):
        """Show the movie. With no display (no ``DISPLAY``/``WAYLAND_DISPLAY``,
        or a non-interactive matplotlib backend) it warns and returns; with
        one it animates with matplotlib. ``save_movie`` is not supported."""
        if save_movie:
            raise NotImplementedError("movie.play(save_movie=True): writing a video is not "
                                      "supported; nearest: movie.save('file.tif')")
        if backend not in ("opencv", "pyplot", "notebook", "embed_opencv"):
            raise ParameterError(f"backend: expected 'opencv', 'pyplot', 'notebook' or "
                                 f"'embed_opencv', got {backend!r}")
        if not _has_display():
            warnings.warn("movie.play: no display available; nothing shown", RuntimeWarning,
                          stacklevel=2)
            return None
        import matplotlib.pyplot as plt
        from matplotlib import animation

        frames = np.asarray(self, dtype=np.float32)
        if bord_px:
            b = int(bord_px)
            frames = frames[:, b:-b, b:-b]
        lo, hi = np.nanpercentile(frames, q_min), np.nanpercentile(frames, q_max)
        frames = (frames - lo) * gain / max(hi - lo, 1e-12) + offset
        fig, ax = plt.subplots(figsize=(4 * magnification, 4 * magnification))
        img = ax.imshow(frames[0], cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        rate = float(fr or self.fr or 30)

        def update(t):
            img.set_data(frames[t])
            if plot_text:
                ax.set_title(f"frame {t}")
            return (img,)

        anim = animation.FuncAnimation(fig, update, frames=len(frames),
                                       interval=1000.0 / rate, repeat=do_loop, blit=False)
        plt.show()
        return anim

    def crop(self, crop_top=0, crop_bottom=0, crop_left=0, crop_right=0, crop_begin=0,
             crop_end=0):
        """Cut pixels off each edge and frames off each end."""
        T, d1, d2 = self.shape[:3]
        return self[crop_begin:T - crop_end, crop_top:d1 - crop_bottom,
                    crop_left:d2 - crop_right]

    def to_2D(self, order="F"):
        """``(T, pixels)``, each frame flattened in ``order``."""
        return np.reshape(np.asarray(self), (self.shape[0], -1), order=order)

    def zproject(self, method="mean", cmap=None, aspect="auto", **kwargs):
        """The mean (or ``'median'``/``'max'``) image; plotted with matplotlib
        when a display is available."""
        fn = {"mean": np.nanmean, "median": np.nanmedian, "max": np.nanmax}.get(method)
        if fn is None:
            raise ParameterError(f"method: expected 'mean', 'median' or 'max', got {method!r}")
        img = fn(np.asarray(self), axis=0)
        if _has_display():
            import matplotlib.pyplot as plt
            plt.imshow(img, cmap=cmap, aspect=aspect, **kwargs)
        return img

    def copy(self, order="C"):
        return self._like(np.array(self, order=order, copy=True))


add_unsupported(movie, _NOT_HERE)


def _has_display():
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) \
            and os.name != "nt":
        return False
    try:
        import matplotlib
    except ImportError:
        return False
    return matplotlib.get_backend().lower() not in ("agg", "pdf", "ps", "svg", "template",
                                                    "cairo", "module://matplotlib_inline."
                                                    "backend_inline")


def _crop(arr, bottom, top, left, right, z_top=0, z_bottom=0):
    if not any((bottom, top, left, right, z_top, z_bottom)):
        return arr
    d1, d2 = arr.shape[1:3]
    sl = (slice(None), slice(top, d1 - bottom), slice(left, d2 - right))
    if arr.ndim == 4:
        sl = sl + (slice(z_top, arr.shape[3] - z_bottom),)
    return arr[sl]


def load(file_name, fr=30, start_time=0, meta_data=None, subindices=None, shape=None,
         var_name_hdf5="mov", in_memory=False, is_behavior=False, bottom=0, top=0, left=0,
         right=0, channel=None, outtype=np.float32, is3D=False):
    """Read a movie (TIFF, HDF5/NWB, .npy, .npz, CaImAn .mmap, zarr) as a
    :class:`movie`. A list of files is joined in time
    (:func:`load_movie_chain`). ``subindices`` picks frames; ``bottom``,
    ``top``, ``left``, ``right`` crop pixels. ``in_memory`` is accepted (the
    movie is always read into memory; ``load_memmap`` maps without reading).
    """
    if isinstance(file_name, (list, tuple)):
        return load_movie_chain(list(file_name), fr=fr, start_time=start_time,
                                meta_data=meta_data, subindices=subindices,
                                var_name_hdf5=var_name_hdf5, bottom=bottom, top=top, left=left,
                                right=right, channel=channel, outtype=outtype, is3D=is3D)
    if shape is not None:
        raise NotImplementedError("load(shape=...): raw files without a header are not "
                                  "supported; nearest: save them as .npy or .tif")
    if is_behavior:
        raise NotImplementedError("load(is_behavior=True): behaviour movies are not "
                                  "supported; nearest: load(file_name)")
    if channel is not None:
        raise NotImplementedError("load(channel=...): nearest: `gpu-cnmf run --channel` or "
                                  "load the file and index the channel axis yourself")
    path = os.fspath(file_name)
    if os.path.splitext(path)[1].lower() == ".npz":
        with np.load(path) as npz:
            arr = np.asarray(npz["input_arr"])
            if subindices is not None:
                arr = arr[subindices]
            arr = arr.astype(outtype, copy=False)
    else:
        arr = load_movie(path, subindices=subindices, var_name_hdf5=var_name_hdf5,
                         outtype=outtype)
    if is3D and arr.ndim != 4:
        raise ParameterError(f"{path}: is3D=True expects (T, d1, d2, d3) data, got "
                             f"shape {arr.shape}")
    arr = _crop(arr, bottom, top, left, right)
    return movie(arr, fr=fr, start_time=start_time, file_name=path, meta_data=meta_data)


def load_movie_chain(file_list, fr=30, start_time=0, meta_data=None, subindices=None,
                     var_name_hdf5="mov", bottom=0, top=0, left=0, right=0, z_top=0,
                     z_bottom=0, is3D=False, channel=None, outtype=np.float32):
    """Load several files (``subindices`` applied to each) and join them in time."""
    if isinstance(file_list, (str, os.PathLike)):
        file_list = [file_list]
    if not file_list:
        raise ParameterError("file_list: the list of movie files is empty")
    parts = [load(f, fr=fr, subindices=subindices, var_name_hdf5=var_name_hdf5,
                  channel=channel, outtype=outtype, is3D=is3D) for f in file_list]
    arr = _crop(np.concatenate([np.asarray(p) for p in parts], axis=0), bottom, top, left,
                right, z_top, z_bottom)
    return movie(arr, fr=fr, start_time=start_time,
                 file_name=[os.fspath(f) for f in file_list], meta_data=meta_data)


def concatenate(*args, **kwargs):
    """``np.concatenate`` that returns a :class:`movie` with the first
    movie's frame rate and attributes."""
    seq = args[0] if args else kwargs.get("arrays")
    first = next((m for m in seq if isinstance(m, movie)), None)
    out = np.concatenate([np.asarray(m) for m in seq], *args[1:],
                         **{k: v for k, v in kwargs.items() if k != "arrays"})
    if first is None:
        return movie(out)
    return first._like(out)
