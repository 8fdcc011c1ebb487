"""CaImAn's ``caiman.mmapping``: ``save_memmap``, ``load_memmap``,
``save_memmap_join`` over :mod:`gpu_cnmf.io` (same file-name convention,
``<base>_d1_<d1>_d2_<d2>_d3_<d3>_order_<C|F>_frames_<T>_.mmap``)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import ParameterError
from ..io import load_memmap as _load_memmap
from ..io import save_memmap as _save_memmap

__all__ = ["save_memmap", "load_memmap", "save_memmap_join"]


def _as_list(filenames):
    if isinstance(filenames, (str, os.PathLike)) or isinstance(filenames, np.ndarray):
        return [filenames]
    return list(filenames)


def _transform(frames, resize_fact, remove_init, idx_xy, xy_shifts, slices, is_3D):
    """The in-memory edits CaImAn's save_memmap makes before writing."""
    from ..motion.warp import shift_rigid_cubic
    from .. import movie_ops
    import torch

    arr = np.asarray(frames, dtype=np.float32)
    if xy_shifts is not None:
        sh = np.asarray(xy_shifts, dtype=np.float32)
        if sh.shape != (arr.shape[0], arr.ndim - 1):
            raise ParameterError(f"xy_shifts: expected ({arr.shape[0]}, {arr.ndim - 1}) shifts "
                                 f"(one per frame), got {sh.shape}")
        arr = shift_rigid_cubic(torch.as_tensor(arr), torch.as_tensor(sh),
                                border_nan="copy").numpy()
    if slices is not None:
        arr = arr[tuple(slices)]
    if remove_init:
        arr = arr[int(remove_init):]
    if idx_xy is not None:
        arr = arr[(slice(None),) + tuple(idx_xy)]
    rf = tuple(resize_fact)
    if any(f != 1 for f in rf):
        fx, fy, fz = (rf + (1, 1, 1))[:3]
        # CaImAn's resize_fact is (fx, fy, ft) for 2-D movies
        arr = movie_ops.resize(arr, fx=fx, fy=fy, fz=1, ft=fz) if is_3D else \
            movie_ops.resize(arr, fx=fx, fy=fy, fz=fz)
    return np.ascontiguousarray(arr)


def save_memmap(filenames, base_name="Yr", resize_fact=(1, 1, 1), remove_init=0, idx_xy=None,
                order="F", var_name_hdf5="mov", xy_shifts=None, is_3D=False, add_to_movie=0,
                border_to_0=0, dview=None, n_chunks=100, slices=None):
    """Write movie file(s) (or arrays) as one CaImAn memmap, pixels x time.

    Parameters are CaImAn's. Several files are joined in time into one file.
    ``resize_fact`` is ``(fx, fy, ft)`` (``(fx, fy, fz)`` plus no time
    resizing for ``is_3D``); ``remove_init`` drops the first frames;
    ``idx_xy`` is a tuple of slices cropping the frame; ``xy_shifts`` (T, 2)
    rigid shifts applied first (CaImAn's convention); ``slices`` indexes
    (time, rows, columns); ``add_to_movie`` is added to every pixel;
    ``border_to_0`` zeroes that many pixels at each edge. ``dview`` and
    ``n_chunks`` are accepted; the writing streams in memory-budget chunks.
    A bare ``base_name`` lands next to the first input file.

    Returns
    -------
    str
        The memmap's path.
    """
    files = _as_list(filenames)
    if not files:
        raise ParameterError("filenames: the list of movie files is empty")
    edits = (tuple(resize_fact) != (1, 1, 1) and any(f != 1 for f in resize_fact)) or \
        remove_init or idx_xy is not None or xy_shifts is not None or slices is not None
    if not edits:
        return _save_memmap(files if len(files) > 1 else files[0], base_name, order=order,
                            var_name_hdf5=var_name_hdf5, add_to_movie=float(add_to_movie),
                            border_to_0=int(border_to_0))
    from ..io import load_movie
    frames = load_movie(files, var_name_hdf5=var_name_hdf5)
    arr = _transform(frames, resize_fact, remove_init, idx_xy, xy_shifts, slices, is_3D)
    base = os.fspath(base_name)
    first = files[0]
    if not os.path.dirname(base) and isinstance(first, (str, os.PathLike)):
        base = os.path.join(os.path.dirname(os.path.abspath(first)), base)
    return _save_memmap(arr, base, order=order, add_to_movie=float(add_to_movie),
                        border_to_0=int(border_to_0))


def load_memmap(filename, mode="r", in_memory=False):
    """``(Yr, dims, T)`` of a CaImAn memmap: ``Yr`` pixels x T (frames
    flattened in Fortran order), mapped (or read, with ``in_memory``)."""
    if os.path.splitext(os.fspath(filename))[1] != ".mmap":
        raise ParameterError(f"{filename}: load_memmap expects a .mmap file (CaImAn's "
                             "<base>_d1_.._order_.._frames_.._.mmap)")
    Yr, dims, T = _load_memmap(filename, mode=mode)
    if in_memory:
        Yr = np.array(Yr)
    return Yr, dims, T


def save_memmap_join(mmap_fnames, base_name=None, n_chunks=20, dview=None, add_to_mov=0):
    """Join memmaps in time into one C-order memmap; returns its path. With
    no ``base_name`` it is the first file's base followed by ``-#-<n>``."""
    files = _as_list(mmap_fnames)
    if not files:
        raise ParameterError("mmap_fnames: the list of memmap files is empty")
    if base_name is None:
        first = os.fspath(files[0])
        cut = first.find("_d1_")
        base_name = (first[:cut] if cut >= 0 else os.path.splitext(first)[0]) + \
            f"-#-{len(files)}"
    return _save_memmap(files, base_name, order="C", add_to_movie=float(add_to_mov))
