"""Frame access shared by training and inference: one reader for arrays,
tensors, MovieSources and file names, and a one-chunk read-ahead thread so
the disk read of chunk i+1 overlaps the device work on chunk i."""
from __future__ import annotations

import os
import queue
import threading
from typing import Iterator

import numpy as np
import torch

from ..errors import MovieError


class FrameReader:
    """Uniform ``read(start, stop) -> (n, d1, d2)`` over the inputs we accept.

    Parameters
    ----------
    movie : ndarray, torch.Tensor, MovieSource or path
        (T, d1, d2) frames. A path or list of paths is opened with
        :func:`gpu_cnmf.io.open_movie`; any object with ``read`` and
        ``shape`` (a MovieSource) is read range by range.
    """

    def __init__(self, movie):
        if isinstance(movie, (str, os.PathLike, list, tuple)):
            from ..io import open_movie  # only file input needs the io layer
            movie = open_movie(movie)
        self._src = movie
        if isinstance(movie, (np.ndarray, torch.Tensor)):
            shape = tuple(movie.shape)
        elif hasattr(movie, "read") and hasattr(movie, "shape"):
            shape = tuple(movie.shape)
        else:
            raise MovieError(
                "movie: expected a (T, d1, d2) array, tensor, MovieSource or file "
                f"name, got {type(movie).__name__}")
        if len(shape) != 3:
            raise MovieError(
                f"movie: the Ring-CNN works on 2-D frames, expected (T, d1, d2), got shape {shape}")
        if shape[0] < 1:
            raise MovieError("movie: has no frames")
        self.n_frames = int(shape[0])
        self.dims = (int(shape[1]), int(shape[2]))
        self.in_memory = isinstance(movie, (np.ndarray, torch.Tensor))

    def read(self, start: int, stop: int):
        """Frames ``start:stop`` as float32 numpy (or the input tensor's slice)."""
        src = self._src
        if isinstance(src, torch.Tensor):
            out = src[start:stop]
            if out.dtype != torch.float32:
                out = out.float()
            bad = not bool(torch.isfinite(out).all())
        else:
            out = src[start:stop] if isinstance(src, np.ndarray) else src.read(start, stop)
            out = np.asarray(out)
            bad = out.dtype.kind == "f" and not np.isfinite(out).all()
        if bad:
            raise MovieError(f"movie: frames {start}..{stop - 1} contain NaN or inf values")
        return out


def prefetch(reader: FrameReader, spans, depth: int = 1) -> Iterator:
    """Yield ``(start, stop, frames)`` for each span, reading one span ahead
    in a background thread (reads release the GIL: file I/O, memmap copies)."""
    spans = list(spans)
    if len(spans) <= 1 or reader.in_memory:
        for a, b in spans:
            yield a, b, reader.read(a, b)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop_flag = threading.Event()

    def work():
        for a, b in spans:
            if stop_flag.is_set():
                return
            try:
                item = (a, b, reader.read(a, b))
            except BaseException as err:  # re-raised in the consumer
                q.put(err)
                return
            q.put(item)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        for _ in spans:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop_flag.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)


def spans_of(n_frames: int, chunk: int):
    """Consecutive (start, stop) ranges of at most ``chunk`` frames."""
    chunk = max(1, int(chunk))
    return [(a, min(a + chunk, n_frames)) for a in range(0, n_frames, chunk)]
