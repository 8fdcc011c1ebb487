"""Lazy, frame-addressable movies.

A :class:`MovieSource` is a movie of shape ``(T, d1, d2)`` or
``(T, d1, d2, d3)`` that reads only the frames asked for: ``read(start,
stop)`` returns those frames as a fresh numpy array and ``iter_chunks``
walks the movie in pieces sized by the memory budget of
:mod:`gpu_cnmf.backend`. Every reader in :mod:`gpu_cnmf.io.formats`
subclasses it and supplies one method, ``_read``. This module also holds
the in-memory source (:class:`ArraySource`) and the one that joins several
sources in time (:class:`ConcatSource`).
"""
from __future__ import annotations

import operator
from typing import Iterator, Sequence

import numpy as np

from ..backend import frames_per_chunk
from ..errors import MovieError, ParameterError


def select_index(name: str, what: str, value, n: int, hint: str = "") -> int:
    """Check a plane or channel index against the ``n`` the file holds.

    Raises
    ------
    MovieError
        ``value`` is not an integer in ``0..n-1``; the message names the
        file (``name``), what was asked and what the file holds.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise MovieError(f"{name}: {what} must be an integer index (0-based), got {value!r}")
    value = int(value)
    if not 0 <= value < n:
        plural = what if n == 1 else what + "s"
        raise MovieError(f"{name}: {what} {value} is out of range: the file holds {n} {plural} "
                         f"(expected {what} 0{'' if n == 1 else f'..{n - 1}'}){hint}")
    return value


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order (big-endian TIFFs exist)."""
    if array.dtype.byteorder not in ("=", "|") and not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


class MovieSource:
    """A movie read lazily, frame range by frame range.

    Subclasses set the shape and dtype in ``__init__`` (through
    :meth:`_setup`) and implement ``_read(start, stop)``, which returns the
    frames ``start:stop`` as a new ``(n, *dims)`` array in native byte order.

    Attributes
    ----------
    shape : tuple of int
        ``(T, *dims)``.
    dims : tuple of int
        Frame shape, ``(d1, d2)`` or ``(d1, d2, d3)``, axes as stored.
    n_frames : int
        ``T``.
    dtype : numpy.dtype
        Dtype of the frames as stored (native byte order).
    name : str
        What the movie is (a file name) for error messages.
    """

    # attributes holding open files; dropped when pickled and reopened lazily
    _handle_attrs: tuple[str, ...] = ()

    shape: tuple[int, ...]
    dtype: np.dtype
    name: str
    # what the file says about the recording (see :attr:`metadata`)
    _meta: dict | None = None

    def _setup(self, shape: Sequence[int], dtype, name: str) -> None:
        self.name = str(name)
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (3, 4):
            raise MovieError(
                f"{self.name}: a movie has 3 dimensions (T, d1, d2) or 4 (T, d1, d2, d3), "
                f"got {len(shape)} with shape {shape}")
        if shape[0] == 0:
            raise MovieError(f"{self.name}: the movie is empty (0 frames, shape {shape})")
        if min(shape[1:]) == 0:
            raise MovieError(f"{self.name}: the frames are empty (shape {shape})")
        dtype = np.dtype(dtype)
        if dtype.kind not in "biuf":
            raise MovieError(f"{self.name}: expected a numeric movie, got dtype {dtype}")
        self.shape = shape
        self.dtype = dtype.newbyteorder("=") if not dtype.isnative else dtype

    # -- description ---------------------------------------------------------
    @property
    def dims(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def metadata(self) -> dict:
        """What the file says about the recording, where it says it.

        Keys a reader may set: ``fr`` (frames per second of this movie, i.e.
        per plane of a multi-plane recording) with ``fr_source`` (a phrase
        naming the metadata and the file, e.g. ``"ScanImage metadata of
        m.tif"``), ``n_planes``, ``n_channels``, ``plane`` and ``channel``
        (the selection read, None when all planes are read as a volume),
        ``zoom``, ``format``. Empty for formats without such metadata.
        """
        return dict(self._meta or {})

    @property
    def fr(self) -> float | None:
        """Frame rate from the file's metadata (Hz), or None."""
        return (self._meta or {}).get("fr")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    # -- reading -------------------------------------------------------------
    def _read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` as a new ``(stop - start, *dims)`` array.

        Only those frames are read. ``stop=None`` means the end of the movie;
        indices outside ``[0, T]`` raise :class:`ParameterError` rather than
        being clipped, so a wrong range is never silently shortened.
        """
        T = self.shape[0]
        stop = T if stop is None else operator.index(stop)
        start = operator.index(start)
        if not 0 <= start <= stop <= T:
            raise ParameterError(
                f"{self.name}: frame range {start}:{stop} is outside the movie's {T} frames "
                "(expected 0 <= start <= stop <= T)")
        if start == stop:
            return np.empty((0,) + self.dims, self.dtype)
        try:
            out = self._read(start, stop)
        except (MovieError, ParameterError):
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise MovieError(f"{self.name}: cannot read frames {start}:{stop}: {err}") from err
        out = _native(np.asarray(out))
        if out.shape != (stop - start,) + self.dims:
            raise MovieError(f"{self.name}: frames {start}:{stop} came back with shape "
                             f"{out.shape}, expected {(stop - start,) + self.dims}; "
                             "the file may be truncated or corrupted")
        if out.dtype != self.dtype:
            out = out.astype(self.dtype)
        return out

    def take(self, indices) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed, negative counts
        from the end), reading consecutive runs in one call each."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (self.n_frames,):
                raise ParameterError(f"{self.name}: a boolean frame mask needs {self.n_frames} "
                                     f"entries, got {idx.shape}")
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ParameterError(f"{self.name}: frame indices must be a 1-D sequence of "
                                 f"integers, got {idx.dtype} with shape {idx.shape}")
        idx = idx.astype(np.int64)
        T = self.n_frames
        bad = (idx < -T) | (idx >= T)
        if bad.any():
            raise ParameterError(f"{self.name}: frame index {int(idx[bad][0])} is outside "
                                 f"the movie's {T} frames")
        idx = np.where(idx < 0, idx + T, idx)
        out = np.empty((idx.size,) + self.dims, self.dtype)
        # runs of consecutive increasing indices are read with one call each
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        for run in np.split(np.arange(idx.size), breaks):
            if run.size:
                t0 = int(idx[run[0]])
                out[run[0]:run[-1] + 1] = self.read(t0, t0 + run.size)
        return out

    def __getitem__(self, key):
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(key, slice):
            start, stop, step = key.indices(self.n_frames)
            out = self.read(start, max(start, stop)) if step == 1 \
                else self.take(np.arange(start, stop, step))
        elif isinstance(key, (int, np.integer)):
            i = int(key)
            out = self.take([i])[0]
        else:
            out = self.take(key)
        if rest:
            out = out[(slice(None),) * (out.ndim - len(self.dims)) + rest]
        return out

    def chunk_frames(self, copies: float = 4.0, itemsize: int = 4) -> int:
        """Frames per chunk that fit the memory budget of
        :func:`gpu_cnmf.backend.frames_per_chunk` (``GPU_CNMF_MEMORY_BUDGET``
        overrides it), at most the movie length."""
        return frames_per_chunk(self.dims, itemsize=itemsize, copies=copies,
                                max_frames=self.n_frames)

    def iter_chunks(self, n_frames: int | None = None, start: int = 0,
                    stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t0, frames)`` for consecutive pieces of ``start:stop``.

        Parameters
        ----------
        n_frames : int, optional
            Frames per piece; by default :meth:`chunk_frames`. Only one piece
            is held at a time (plus what the caller keeps).
        """
        stop = self.n_frames if stop is None else int(stop)
        if n_frames is None:
            n_frames = self.chunk_frames()
        n_frames = operator.index(n_frames)
        if n_frames < 1:
            raise ParameterError(f"iter_chunks: n_frames must be >= 1, got {n_frames}")
        if not 0 <= start <= stop <= self.n_frames:
            raise ParameterError(f"{self.name}: frame range {start}:{stop} is outside the "
                                 f"movie's {self.n_frames} frames")
        for t0 in range(start, stop, n_frames):
            yield t0, self.read(t0, min(t0 + n_frames, stop))

    def first_nan_frame(self, n_frames: int | None = None) -> int | None:
        """Index of the first frame holding a NaN, or None (integer movies
        cannot hold one and are not read)."""
        if self.dtype.kind != "f":
            return None
        for t0, chunk in self.iter_chunks(n_frames):
            flat = chunk.reshape(chunk.shape[0], -1)
            bad = np.isnan(flat).any(axis=1)
            if bad.any():
                return t0 + int(np.argmax(bad))
        return None

    def check_nan(self) -> None:
        """Raise :class:`MovieError` naming the first frame that holds a NaN."""
        t = self.first_nan_frame()
        if t is not None:
            frame = self.read(t, t + 1)
            raise MovieError(f"{self.name}: frame {t} contains NaN values "
                             f"({int(np.isnan(frame).sum())} pixels); it is the first of "
                             "the movie with NaNs (replace or drop them before analysis)")

    # -- resources ------------------------------------------------------------
    def close(self) -> None:
        """Close open files; a later read reopens them."""
        for attr in self._handle_attrs:
            handle = getattr(self, attr, None)
            if handle is not None and hasattr(handle, "close"):
                handle.close()
            setattr(self, attr, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        # open files do not pickle; the reader reopens them on first use
        state = self.__dict__.copy()
        for attr in self._handle_attrs:
            state[attr] = None
        return state


class ArraySource(MovieSource):
    """An in-memory array (or anything ``np.asarray`` takes, e.g. a CPU
    tensor or an ``np.memmap``); reads return copies, so the caller may
    modify them without touching the original."""

    def __init__(self, array, name: str = "array"):
        if hasattr(array, "detach"):  # torch tensor
            array = array.detach().cpu().numpy()
        self.array = np.asarray(array)
        self._setup(self.array.shape, self.array.dtype, name)

    def _read(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.array[start:stop], dtype=self.dtype, order="C")


class ConcatSource(MovieSource):
    """Several sources joined in time (e.g. one TIFF per trial).

    Every part must have the same frame shape; dtypes are promoted to a
    common one. Parts are closed when a read moves past them, so a list of
    thousands of single-frame files never holds thousands of open files.
    """

    def __init__(self, parts: Sequence[MovieSource]):
        if not parts:
            raise MovieError("no movie given: the list of files is empty")
        self.parts = list(parts)
        dims = self.parts[0].dims
        for p in self.parts[1:]:
            if p.dims != dims:
                raise MovieError(
                    f"{p.name}: frames of shape {p.dims} do not match the frames of shape "
                    f"{dims} of {self.parts[0].name}; every file of a movie must have the "
                    "same frame shape")
        self.offsets = np.cumsum([0] + [p.n_frames for p in self.parts])
        dtype = np.result_type(*[p.dtype for p in self.parts])
        name = self.parts[0].name if len(self.parts) == 1 else \
            f"{self.parts[0].name} (+{len(self.parts) - 1} more files)"
        self._setup((int(self.offsets[-1]),) + dims, dtype, name)
        self._active: set[int] = set()
        self._meta = self.parts[0].metadata
        for p in self.parts[1:]:
            p.close()

    def _read(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop, side="left")) - 1
        touched = range(first, last + 1)
        for i in self._active - set(touched):
            self.parts[i].close()
        self._active = set(touched)
        if first == last:
            o = int(self.offsets[first])
            return self.parts[first].read(start - o, stop - o)
        out = np.empty((stop - start,) + self.dims, self.dtype)
        for i in touched:
            o = int(self.offsets[i])
            a, b = max(start, o), min(stop, int(self.offsets[i + 1]))
            out[a - start:b - start] = self.parts[i].read(a - o, b - o)
        return out

    def check_nan(self) -> None:
        """Raise :class:`MovieError` naming the first file, and its frame,
        that holds a NaN."""
        for p in self.parts:
            p.check_nan()
            p.close()

    def close(self) -> None:
        for p in self.parts:
            p.close()
        self._active = set()
