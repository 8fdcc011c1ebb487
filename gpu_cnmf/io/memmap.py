"""CaImAn-style memory-mapped movies: ``Yr``, pixels x time.

After motion correction a movie lives on disk as one float32 matrix ``Yr``
of shape ``(d, T)``, ``d = d1*d2*d3`` pixels, with each frame flattened in
Fortran order (pixel ``i + j*d1 + k*d1*d2``). The file name carries the
shape, so nothing else is needed to map it back::

    <base>_d1_<d1>_d2_<d2>_d3_<d3>_order_<C|F>_frames_<T>_.mmap

``order='C'`` stores ``Yr`` row by row (a pixel's whole trace is
contiguous: what CNMF's per-pixel and ``Y C'`` products want);
``order='F'`` stores it column by column (each frame contiguous: what
motion correction writes fastest). Files written by CaImAn load here and
the other way round.

:class:`MemmapWriter` fills such a file chunk of frames by chunk under a
temporary name and renames it only once every frame is written, so an
interrupted run never leaves a file that looks complete.
"""
from __future__ import annotations

import os
import re
import uuid
from typing import Sequence

import numpy as np

from ..backend import count_movie_io, frames_per_chunk, host_budget
from ..errors import MovieError, ParameterError

_MMAP_RE = re.compile(
    r"^(?P<base>.*)_d1_(?P<d1>\d+)_d2_(?P<d2>\d+)_d3_(?P<d3>\d+)"
    r"_order_(?P<order>[CF])_frames_(?P<T>\d+)_?\.mmap$")


def _check_dims(dims: Sequence[int]) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in dims)
    except TypeError as err:
        raise ParameterError(f"dims: expected (d1, d2) or (d1, d2, d3), got {dims!r}") from err
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise ParameterError(f"dims: expected 2 or 3 positive sizes (d1, d2[, d3]), got {dims}")
    return dims


def _check_order(order: str) -> str:
    if order not in ("C", "F"):
        raise ParameterError(f"order: expected 'C' or 'F', got {order!r}")
    return order


def mmap_name(base_name: str | os.PathLike, dims: Sequence[int], n_frames: int,
              order: str = "C") -> str:
    """The CaImAn file name for a movie of frame shape ``dims`` and
    ``n_frames`` frames: ``<base>_d1_.._d2_.._d3_.._order_.._frames_.._.mmap``."""
    dims = _check_dims(dims)
    d3 = dims[2] if len(dims) == 3 else 1
    return (f"{os.fspath(base_name)}_d1_{dims[0]}_d2_{dims[1]}_d3_{d3}"
            f"_order_{_check_order(order)}_frames_{int(n_frames)}_.mmap")


def parse_mmap_name(path: str | os.PathLike) -> dict:
    """Read the shape that a CaImAn memmap file name encodes.

    Returns
    -------
    dict
        ``base`` (the path before ``_d1_``), ``d1``, ``d2``, ``d3``,
        ``order`` ('C' or 'F'), ``T``, and ``dims``: ``(d1, d2)`` when
        ``d3 == 1``, else ``(d1, d2, d3)``, as CaImAn's ``load_memmap``.

    Raises
    ------
    MovieError
        The name does not follow the convention.
    """
    path = os.fspath(path)
    m = _MMAP_RE.match(os.path.basename(path))
    if m is None:
        raise MovieError(f"{path}: not a CaImAn memmap name; expected "
                         "<base>_d1_<d1>_d2_<d2>_d3_<d3>_order_<C|F>_frames_<T>_.mmap")
    d1, d2, d3, T = (int(m[k]) for k in ("d1", "d2", "d3", "T"))
    base = os.path.join(os.path.dirname(path), m["base"])
    return {"base": base, "d1": d1, "d2": d2, "d3": d3, "order": m["order"], "T": T,
            "dims": (d1, d2) if d3 == 1 else (d1, d2, d3)}


# Element types a memmap may hold, told apart by the file's size: CaImAn's
# float32, and the half-size store (``motion.memmap_dtype='float16'``).
MEMMAP_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
FLOAT16_MAX = float(np.finfo(np.float16).max)


def load_memmap(path: str | os.PathLike, mode: str = "r", dtype=None):
    """Map a CaImAn memmap file.

    Parameters
    ----------
    path : str or path
        A file named by :func:`mmap_name`.
    mode : {'r', 'r+', 'c'}
        As for ``np.memmap``.
    dtype
        Element type; by default float32 (CaImAn's files) or float16 (the
        half-size store), whichever the file's size matches.

    Returns
    -------
    Yr : np.memmap, shape (d, T)
        Pixels x time, pixel index ``i + j*d1 (+ k*d1*d2)``.
    dims : tuple
    T : int

    Raises
    ------
    MovieError
        The file is missing, its name does not encode a shape, or its size
        does not match that shape (a truncated or foreign file).
    """
    path = os.fspath(path)
    info = parse_mmap_name(path)
    if not os.path.isfile(path):
        raise MovieError(f"{path}: memmap file not found")
    d = info["d1"] * info["d2"] * info["d3"]
    size = os.path.getsize(path)
    if dtype is None:
        dtype = next((t for t in MEMMAP_DTYPES if size == d * info["T"] * t.itemsize),
                     MEMMAP_DTYPES[0])
    expected = d * info["T"] * np.dtype(dtype).itemsize
    if size != expected:
        what = "truncated" if size < expected else "larger than its name says"
        raise MovieError(f"{path}: file is {what}: {size} bytes, but its name says "
                         f"{d} pixels x {info['T']} frames of {np.dtype(dtype).name} = "
                         f"{expected} bytes")
    if info["T"] == 0:
        raise MovieError(f"{path}: the movie is empty (0 frames)")
    Yr = np.memmap(path, mode=mode, dtype=dtype, shape=(d, info["T"]), order=info["order"])
    return Yr, info["dims"], info["T"]


def frames_view(Yr_block: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """View of a pixels x n block of ``Yr`` as frames ``(n, *dims)``.

    No data moves: the Fortran pixel order makes the split of the pixel
    axis a pure stride change for both file orders, so assigning to the
    view writes straight into the memmap.
    """
    n = Yr_block.shape[1]
    view = Yr_block.reshape(tuple(dims) + (n,), order="F")
    if Yr_block.size and not np.may_share_memory(view, Yr_block):
        raise RuntimeError("internal: Yr block could not be viewed as frames")
    return np.moveaxis(view, -1, 0)


# Size of the tile through which frames move into or out of a C-order Yr:
# small enough to stay in cache while it is transposed.
_TILE_BYTES = 2**20
_TILE_FRAMES = 64


def _tiles(frames_shape: Sequence[int], itemsize: int):
    """Tiles ``(t0, t1, k, j0, j1)`` of a (n, d1, d2[, d3]) chunk: frames
    ``t0:t1`` of columns ``j0:j1`` of plane ``k`` (0 for 2-D movies). Each
    covers whole pixel rows ``p = i + j*d1 + k*d1*d2`` of ``Yr``."""
    n, d1, d2 = frames_shape[:3]
    d3 = frames_shape[3] if len(frames_shape) == 4 else 1
    nt = min(n, _TILE_FRAMES)
    nj = max(1, _TILE_BYTES // (d1 * nt * itemsize))
    # frames innermost: a block of pixel rows is finished before the next, so
    # a file page is dirtied once per chunk rather than once per tile
    for k in range(d3):
        for j0 in range(0, d2, nj):
            for t0 in range(0, n, nt):
                yield t0, min(n, t0 + nt), k, j0, min(d2, j0 + nj)


def write_frames(Yr: np.ndarray, start: int, frames: np.ndarray, order: str) -> None:
    """Store ``frames`` (n, *dims) as columns ``start:start+n`` of ``Yr``.

    For order F each frame is one contiguous column. For order C each pixel
    row receives a run of n values; the transposition goes tile by tile
    through a small contiguous buffer, so that the file is written in row
    segments rather than element by element with a stride of T, and the
    frames are read in cache-sized pieces (3-4x faster than one strided
    assignment on large chunks).
    """
    n, dims = frames.shape[0], frames.shape[1:]
    if order == "F" or n == 1:
        frames_view(Yr[:, start:start + n], dims)[...] = frames
        return
    d1, d2 = dims[0], dims[1]
    planes = frames if frames.ndim == 4 else frames[..., None]
    for t0, t1, k, j0, j1 in _tiles(frames.shape, Yr.itemsize):
        tile = np.ascontiguousarray(planes[t0:t1, :, j0:j1, k].transpose(2, 1, 0),
                                    dtype=Yr.dtype)
        p0 = k * d1 * d2 + j0 * d1
        Yr[p0:p0 + tile.shape[0] * d1, start + t0:start + t1] = tile.reshape(-1, t1 - t0)
        del tile  # so that two tiles never coexist


def read_frames(Yr: np.ndarray, start: int, stop: int, dims: Sequence[int],
                order: str) -> np.ndarray:
    """Columns ``start:stop`` of ``Yr`` as a new C-contiguous (n, *dims) array
    (the reverse of :func:`write_frames`, tile by tile for order C)."""
    dims = tuple(dims)
    n = stop - start
    if order == "F" or n == 1:
        return np.ascontiguousarray(frames_view(Yr[:, start:stop], dims))
    out = np.empty((n,) + dims, Yr.dtype)
    planes = out if out.ndim == 4 else out[..., None]
    d1, d2 = dims[0], dims[1]
    for t0, t1, k, j0, j1 in _tiles(out.shape, Yr.itemsize):
        p0 = k * d1 * d2 + j0 * d1
        tile = np.array(Yr[p0:p0 + (j1 - j0) * d1, start + t0:start + t1])  # row segments
        planes[t0:t1, :, j0:j1, k] = tile.reshape(j1 - j0, d1, t1 - t0).transpose(2, 1, 0)
        del tile  # so that two tiles never coexist
    return out


class MemmapWriter:
    """Write a CaImAn memmap chunk of frames by chunk.

    Parameters
    ----------
    base_name : str or path
        Path prefix of the file; the shape is appended (:func:`mmap_name`).
    dims : (d1, d2) or (d1, d2, d3)
        Frame shape.
    n_frames : int
        ``T``; every frame must be written before :meth:`close`.
    order : {'C', 'F'}
        Storage order of ``Yr`` (see the module docstring).
    dtype
        Element type (float32 for CaImAn compatibility).
    buffer_frames : int, 'auto' or None
        Order C only: collect up to this many consecutive frames in RAM and
        write them as one block of time (a T-block). A C-order file holds
        each pixel's trace contiguously, so a write of n frames touches every
        pixel row for n values: small chunks (a motion-correction batch of
        16 frames is 64 bytes per row) dirty every page of the file many
        times over; a T-block of ~1,000 frames writes whole pages.
        ``'auto'`` sizes it from half the host memory budget
        (:func:`gpu_cnmf.backend.host_budget`).

    Notes
    -----
    Data go to ``<final name>.<random>.part`` and are renamed to the final
    name by :meth:`close`. Leaving a ``with`` block by an exception, calling
    :meth:`abort`, or dropping the writer unclosed removes the partial file.

    Examples
    --------
    >>> with MemmapWriter("Yr", (64, 64), 100) as w:          # doctest: +SKIP
    ...     for t0, frames in source.iter_chunks():
    ...         w.write(t0, frames)
    >>> w.path                                                 # doctest: +SKIP
    'Yr_d1_64_d2_64_d3_1_order_C_frames_100_.mmap'
    """

    def __init__(self, base_name: str | os.PathLike, dims: Sequence[int], n_frames: int,
                 order: str = "C", dtype=np.float32, buffer_frames=None):
        self.dims = _check_dims(dims)
        self.order = _check_order(order)
        self.n_frames = int(n_frames)
        if self.n_frames < 1:
            raise ParameterError(f"n_frames: expected a positive number of frames, "
                                 f"got {n_frames}")
        self.dtype = np.dtype(dtype)
        self.path = mmap_name(base_name, self.dims, self.n_frames, self.order)
        self._tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.part"
        d = int(np.prod(self.dims))
        try:
            self._Yr = np.memmap(self._tmp, mode="w+", dtype=self.dtype,
                                 shape=(d, self.n_frames), order=self.order)
        except OSError as err:
            self._remove_tmp()
            raise MovieError(f"{self.path}: cannot create the memmap file: {err}") from err
        self._written = np.zeros(self.n_frames, bool)
        self.closed = False
        if buffer_frames == "auto":
            buffer_frames = frames_per_chunk(self.dims, itemsize=self.dtype.itemsize, copies=1,
                                             budget=host_budget() // 2,
                                             max_frames=self.n_frames)
        self._buf_frames = int(buffer_frames or 0) if self.order == "C" else 0
        self._buf = None          # (buffer_frames, *dims), allocated on first use
        self._buf_start = 0       # frame of the file where the buffer starts
        self._buf_n = 0           # frames in the buffer

    @property
    def Yr(self) -> np.memmap:
        """The pixels x T matrix being written (read it only after writing)."""
        return self._Yr

    def write(self, start: int, frames) -> None:
        """Write ``frames`` (n, *dims) (or one frame, dims) at frame ``start``;
        numpy arrays or torch tensors on any device."""
        if self.closed:
            raise ParameterError(f"{self.path}: writer is already closed")
        if hasattr(frames, "detach"):  # torch tensor, possibly on the GPU
            frames = frames.detach().cpu().numpy()
        frames = np.asarray(frames)
        if frames.shape == self.dims:
            frames = frames[None]
        if frames.shape[1:] != self.dims:
            raise ParameterError(f"frames: expected shape (n, {', '.join(map(str, self.dims))}) "
                                 f"for {self.path}, got {frames.shape}")
        n = frames.shape[0]
        start = int(start)
        if self.dtype == np.float16 and frames.size:
            peak = float(np.nanmax(np.abs(frames)))
            if peak > FLOAT16_MAX:
                raise ParameterError(
                    f"{self.path}: the movie reaches {peak:.6g}, beyond float16's "
                    f"{FLOAT16_MAX:.0f}: store it as float32 (motion.memmap_dtype='float32')")
        count_movie_io(written=frames.size)
        if not 0 <= start <= start + n <= self.n_frames:
            raise ParameterError(f"start: frames {start}:{start + n} do not fit in the "
                                 f"{self.n_frames} frames of {self.path}")
        if self._buf_frames > 1:
            self._buffered(start, frames)
        else:
            write_frames(self._Yr, start, frames, self.order)
        self._written[start:start + n] = True

    def _buffered(self, start, frames):
        """Append to the T-block buffer; write it out when full or when the
        next frames do not follow on."""
        while frames.shape[0]:
            if self._buf_n and start != self._buf_start + self._buf_n:
                self.flush()
            if self._buf is None:
                self._buf = np.empty((self._buf_frames,) + self.dims, self.dtype)
            if not self._buf_n:
                self._buf_start = start
            k = min(frames.shape[0], self._buf_frames - self._buf_n)
            self._buf[self._buf_n:self._buf_n + k] = frames[:k]
            self._buf_n += k
            start, frames = start + k, frames[k:]
            if self._buf_n == self._buf_frames:
                self.flush()

    def flush(self) -> None:
        """Write the buffered T-block (if any) to the file."""
        if self._buf_n:
            write_frames(self._Yr, self._buf_start, self._buf[:self._buf_n], self.order)
            self._buf_n = 0

    def close(self) -> str:
        """Flush, check that every frame was written, rename; returns the path."""
        if self.closed:
            return self.path
        missing = np.flatnonzero(~self._written)
        if missing.size:
            self.abort()
            raise MovieError(f"{self.path}: only {self.n_frames - missing.size} of "
                             f"{self.n_frames} frames were written (first missing: "
                             f"{int(missing[0])}); the partial file was removed")
        try:
            self.flush()
            self._buf = None
            self._Yr.flush()
            self._Yr = None
            os.replace(self._tmp, self.path)
        except OSError as err:
            self.abort()
            raise MovieError(f"{self.path}: cannot finish writing: {err}") from err
        self.closed = True
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        self._Yr = None
        self._buf = None
        self.closed = True
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        try:
            os.remove(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):
        if not getattr(self, "closed", True):
            self.abort()


def save_memmap(movie_or_source, base_name: str | os.PathLike = "Yr", order: str = "C",
                chunk_frames: int | None = None, dtype=np.float32, *,
                var_name_hdf5: str = "mov", add_to_movie: float = 0.0,
                border_to_0: int = 0) -> str:
    """Write a movie as a CaImAn memmap, chunk of frames by chunk.

    Parameters
    ----------
    movie_or_source : array, MovieSource, path or list of paths
        Anything :func:`gpu_cnmf.io.open_movie` opens.
    base_name : str or path
        Prefix of the output file. A bare name (no folder) is placed next to
        the first input file when the input is a file, else in the current
        folder.
    order : {'C', 'F'}
        Storage order of ``Yr``.
    chunk_frames : int, optional
        Frames per chunk; by default what the memory budget allows
        (:func:`gpu_cnmf.backend.frames_per_chunk`).
    dtype
        Element type of the file (float32 for CaImAn).
    var_name_hdf5 : str
        Dataset to read from HDF5 inputs.
    add_to_movie : float
        Constant added to every pixel (CaImAn's way to keep movies positive).
    border_to_0 : int
        Pixels at each edge of the frame (in d1 and d2) set to zero, e.g. the
        margin motion correction filled in.

    Returns
    -------
    str
        Path of the finished file (written under a temporary name, renamed
        at the end; nothing is left behind on error).
    """
    # imported here: movie.py reads .mmap files through this module
    from .movie import open_movie
    from .source import MovieSource

    own = not isinstance(movie_or_source, MovieSource)
    source = open_movie(movie_or_source, var_name_hdf5=var_name_hdf5) if own else movie_or_source
    try:
        base = os.fspath(base_name)
        first = movie_or_source[0] if isinstance(movie_or_source, (list, tuple)) \
            else movie_or_source
        if not os.path.dirname(base) and isinstance(first, (str, os.PathLike)):
            base = os.path.join(os.path.dirname(os.path.abspath(first)), base)
        if chunk_frames is None:
            chunk_frames = frames_per_chunk(source.dims, itemsize=4, copies=4,
                                            max_frames=source.n_frames)
        border_to_0 = int(border_to_0)
        from ..progress import progress
        bar = progress(total=source.n_frames, desc="memmap", unit="frame")
        with MemmapWriter(base, source.dims, source.n_frames, order, dtype) as writer:
            for t0, frames in source.iter_chunks(chunk_frames):
                bar.update(frames.shape[0])
                frames = frames.astype(dtype, copy=False)
                if add_to_movie:
                    frames += add_to_movie
                if border_to_0 > 0:
                    b = border_to_0
                    frames[:, :b] = 0
                    frames[:, -b:] = 0
                    frames[:, :, :b] = 0
                    frames[:, :, -b:] = 0
                writer.write(t0, frames)
        bar.close()
        return writer.path
    finally:
        if own:
            source.close()


__all__ = ["mmap_name", "parse_mmap_name", "load_memmap", "frames_view", "write_frames",
           "read_frames", "MemmapWriter", "save_memmap"]
