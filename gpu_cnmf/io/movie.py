"""Opening and loading movies: :func:`open_movie` (lazy) and
:func:`load_movie` (everything, or chosen frames, in memory)."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from ..errors import MovieError, ParameterError
from .formats import open_file
from .source import ArraySource, ConcatSource, MovieSource

_PathLike = (str, os.PathLike)
log = logging.getLogger(__name__)


def _one(item, var_name_hdf5: str, select: dict) -> MovieSource:
    if isinstance(item, MovieSource):
        return item
    if isinstance(item, _PathLike):
        return open_file(item, var_name_hdf5, **select)
    if isinstance(item, np.ndarray) or hasattr(item, "__array__") or hasattr(item, "detach"):
        return ArraySource(item)
    raise MovieError(f"cannot open a movie from {type(item).__name__}: expected a file path, "
                     "a list of paths, an array (T, d1, d2[, d3]) or a MovieSource")


def _warn_lexical_order(fnames) -> None:
    """A shell glob lists ``0.avi 1.avi 10.avi 2.avi``: say so, since the
    files are joined in the order given."""
    from .video import natural_key

    names = [os.fspath(f) for f in fnames if isinstance(f, _PathLike)]
    if len(names) < 3 or len(names) != len(fnames):
        return
    natural = sorted(names, key=natural_key)
    if names == sorted(names) and names != natural:
        log.warning("fnames: the %d files are in lexical order (%s, ...), not numeric order "
                    "(%s, ...); they are joined as given. Pass them in numeric order, or a "
                    "Miniscope folder, which is joined numerically", len(names),
                    ", ".join(os.path.basename(n) for n in names[:3]),
                    ", ".join(os.path.basename(n) for n in natural[:3]))


def open_movie(fnames, var_name_hdf5: str = "mov", check_nan: bool = False,
               plane: int | None = None, channel: int | None = None,
               nwb_series: str | None = None) -> MovieSource:
    """Open a movie for lazy, frame-range reading.

    Parameters
    ----------
    fnames : path, list of paths, array or MovieSource
        A ``.tif``/``.tiff`` (ScanImage, ImageJ hyperstack included),
        ``.h5``/``.hdf5``, ``.nwb``, ``.npy``, CaImAn ``.mmap``, ``.zarr``,
        Scanbox ``.sbx`` or video (``.avi``, ``.mkv``, ``.mp4``) file; a
        folder of Miniscope videos or a Bruker (PrairieView) folder; several
        of them (joined in time, in the order given; frame shapes must
        agree); or an in-memory array of shape ``(T, d1, d2)`` or ``(T, d1,
        d2, d3)``.
    var_name_hdf5 : str
        Dataset (HDF5) or array (zarr group) holding the movie; for NWB
        files, the series name when ``nwb_series`` is not given.
    check_nan : bool
        Scan the movie once and raise if any frame holds a NaN.
    plane, channel : int, optional
        Plane and channel (0-based) of a multi-plane / multi-channel
        recording (ScanImage, ImageJ hyperstack, Bruker, Scanbox). None
        reads every plane as a volume ``(T, Z, Y, X)``; a recording with
        several channels needs ``channel``. Other files accept only 0.
    nwb_series : str, optional
        The TwoPhotonSeries/OnePhotonSeries of an NWB file (default: the
        only one).

    Returns
    -------
    MovieSource
        With ``shape``, ``dims``, ``n_frames``, ``dtype``, ``read(start,
        stop)``, ``iter_chunks(n)``, ``metadata`` (``fr`` and ``fr_source``
        when the file records a frame rate; ``n_planes``, ``n_channels``);
        close it (or use ``with``) when done.

    Raises
    ------
    MovieError
        A file is missing, unreadable, truncated, of an unknown format, not
        3-D/4-D, empty; files disagree in frame shape; a plane or channel
        is out of range; or (``check_nan``) a frame holds a NaN, named by
        its index.
    OptionalDependencyError
        The reader's package is not installed (the message names the extra).
    """
    select = {"plane": plane, "channel": channel, "nwb_series": nwb_series}
    if isinstance(fnames, (list, tuple)):
        if not fnames:
            raise MovieError("fnames: the list of movie files is empty")
        _warn_lexical_order(fnames)
        parts: list[MovieSource] = []
        try:
            for item in fnames:
                parts.append(_one(item, var_name_hdf5, select))
                if len(fnames) > 1:
                    parts[-1].close()  # reopened on demand: bounds open files
            source = parts[0] if len(parts) == 1 else ConcatSource(parts)
        except BaseException:
            for p in parts:
                p.close()
            raise
    else:
        source = _one(fnames, var_name_hdf5, select)
    if check_nan:
        try:
            source.check_nan()
        except BaseException:
            source.close()
            raise
    return source


def _frame_indices(subindices, n_frames: int, name: str):
    """``subindices`` as a (start, stop) range or an index array."""
    if subindices is None:
        return 0, n_frames
    if isinstance(subindices, range):
        subindices = slice(subindices.start, subindices.stop, subindices.step)
    if isinstance(subindices, slice):
        start, stop, step = subindices.indices(n_frames)
        if step == 1:
            return start, max(start, stop)
        return np.arange(start, stop, step)
    if isinstance(subindices, (int, np.integer)):
        raise ParameterError(f"subindices: expected a slice, range or sequence of frame "
                             f"indices for {name}, got the integer {subindices}")
    return np.asarray(subindices)


def _raise_on_nan(frames: np.ndarray, frame_index: np.ndarray, name: str) -> None:
    if frames.dtype.kind != "f" or not frames.size:
        return
    bad = np.isnan(frames.reshape(frames.shape[0], -1)).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise MovieError(f"{name}: frame {int(frame_index[i])} contains NaN values "
                         f"({int(np.isnan(frames[i]).sum())} pixels); it is the first "
                         "loaded frame with NaNs")


def load_movie(fnames, subindices=None, var_name_hdf5: str = "mov", check_nan: bool = False,
               outtype=np.float32, plane: int | None = None, channel: int | None = None,
               nwb_series: str | None = None) -> np.ndarray:
    """Read a movie (or some of its frames) into memory.

    Parameters
    ----------
    fnames
        As for :func:`open_movie`.
    subindices : slice, range or sequence of int, optional
        Frames to load (CaImAn's ``subindices``); all by default.
    var_name_hdf5 : str
        Dataset (HDF5) or array (zarr) holding the movie.
    check_nan : bool
        Raise :class:`MovieError` naming the first loaded frame with a NaN
        (its index in the whole movie).
    outtype : dtype or None
        Dtype of the result (float32, as CaImAn's ``load``); None keeps the
        stored dtype. Frames are converted chunk by chunk, so the stored
        dtype never needs a second full-size copy.

    Returns
    -------
    np.ndarray
        ``(n, d1, d2[, d3])``.
    """
    with open_movie(fnames, var_name_hdf5=var_name_hdf5, plane=plane, channel=channel,
                    nwb_series=nwb_series) as source:
        sel = _frame_indices(subindices, source.n_frames, source.name)
        dtype = source.dtype if outtype is None else np.dtype(outtype)
        if isinstance(sel, tuple):
            start, stop = sel
            if not 0 <= start <= stop <= source.n_frames:
                raise ParameterError(f"subindices: {start}:{stop} is outside the "
                                     f"{source.n_frames} frames of {source.name}")
            out = np.empty((stop - start,) + source.dims, dtype)
            for t0, chunk in source.iter_chunks(start=start, stop=stop):
                if check_nan:
                    _raise_on_nan(chunk, np.arange(t0, t0 + chunk.shape[0]), source.name)
                out[t0 - start:t0 - start + chunk.shape[0]] = chunk
        else:
            out = source.take(sel)
            if check_nan:
                idx = np.flatnonzero(sel) if sel.dtype == bool else \
                    np.where(sel < 0, sel + source.n_frames, sel)
                _raise_on_nan(out, idx, source.name)
            out = out.astype(dtype, copy=False)
    return out


def movie_info(fnames, var_name_hdf5: str = "mov", **select) -> dict:
    """Shape, dims, frame count, dtype and the file's metadata (``fr``,
    ``n_planes``, ...) of a movie without reading frames; ``select``:
    ``plane``, ``channel``, ``nwb_series`` as for :func:`open_movie`."""
    with open_movie(fnames, var_name_hdf5=var_name_hdf5, **select) as source:
        return {"shape": source.shape, "dims": source.dims, "n_frames": source.n_frames,
                "dtype": source.dtype, "name": source.name, "metadata": source.metadata}


__all__: Sequence[str] = ["open_movie", "load_movie", "movie_info"]
