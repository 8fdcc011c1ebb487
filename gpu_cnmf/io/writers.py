"""Writing a whole movie ``(T, d1, d2[, d3])`` to a file, by extension:
TIFF, HDF5 (``var_name_hdf5`` dataset, ``fr`` attribute), ``.npy``,
``.npz`` and CaImAn's ``.mmap`` (the name then carries the shape). Files are
written under a temporary name and renamed when complete."""
from __future__ import annotations

import os

import numpy as np

from ..errors import ParameterError
from .results import atomic_write

__all__ = ["save_movie", "MOVIE_WRITE_EXTENSIONS"]

MOVIE_WRITE_EXTENSIONS = (".tif", ".tiff", ".h5", ".hdf5", ".npy", ".npz", ".mmap")


def save_movie(frames, path, fr=None, var_name_hdf5="mov", order="F", to32=True) -> str:
    """Write ``frames`` to ``path``; returns the path written (for ``.mmap``
    the CaImAn name ``<stem>_d1_.._frames_.._.mmap`` in ``order``)."""
    arr = np.asarray(frames)
    if arr.ndim not in (3, 4):
        raise ParameterError(f"save_movie: expected (T, d1, d2[, d3]) frames, got {arr.shape}")
    if to32 and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".tif", ".tiff"):
        import tifffile

        return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, arr, bigtiff=arr.nbytes > 2**31,
                                                                 photometric="minisblack"))
    if ext in (".h5", ".hdf5"):
        import h5py

        def write(tmp):
            with h5py.File(tmp, "w") as h5:
                h5.create_dataset(var_name_hdf5, data=arr)
                if fr is not None:
                    h5[var_name_hdf5].attrs["fr"] = float(fr)
        return atomic_write(path, write)
    if ext in (".npy", ".npz"):
        def write(tmp):
            with open(tmp, "wb") as fh:   # a file object: numpy adds no suffix
                if ext == ".npy":
                    np.save(fh, arr)
                else:
                    np.savez(fh, input_arr=arr, fr=np.nan if fr is None else float(fr))
        return atomic_write(path, write)
    if ext == ".mmap":
        from .memmap import save_memmap
        return save_memmap(arr, os.path.splitext(path)[0], order=order)
    raise ParameterError(f"{path}: cannot write movies as {ext or 'files without an extension'}; "
                         f"expected one of {', '.join(MOVIE_WRITE_EXTENSIONS)}")
