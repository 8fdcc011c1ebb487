"""Movies in and out: lazy readers for TIFF, HDF5, .npy, CaImAn .mmap and
zarr, and CaImAn-style memory-mapped files.

Conventions (CaImAn's, used by every stage):

- A movie is ``(T, d1, d2)`` or, for volumes, ``(T, d1, d2, d3)``; ``dims``
  is the frame shape.
- A frame flattens in Fortran order: pixel ``p = i + j*d1 (+ k*d1*d2)``.
- ``Yr`` is the pixels x T matrix of a movie, stored as
  ``<base>_d1_<d1>_d2_<d2>_d3_<d3>_order_<C|F>_frames_<T>_.mmap``.

Main entry points: :func:`open_movie` (a :class:`MovieSource` that reads
frame ranges on demand), :func:`load_movie`, :func:`save_memmap`,
:class:`MemmapWriter`, :func:`load_memmap`, :func:`parse_mmap_name`.
"""
from .formats import (SUPPORTED_EXTENSIONS, HDF5Source, MmapSource, NpySource, TiffSource,
                      ZarrSource, open_file)
from .memmap import (MemmapWriter, frames_view, load_memmap, mmap_name, parse_mmap_name,
                     read_frames, save_memmap, write_frames)
from .movie import load_movie, movie_info, open_movie
from .results import OptionalDependencyError, export_nwb, load_results, save_results
from .source import ArraySource, ConcatSource, MovieSource

__all__ = [
    "save_results", "load_results", "export_nwb", "OptionalDependencyError",
    "open_movie", "load_movie", "movie_info", "open_file", "MovieSource", "ArraySource",
    "ConcatSource", "TiffSource", "HDF5Source", "NpySource", "MmapSource", "ZarrSource",
    "SUPPORTED_EXTENSIONS", "save_memmap", "MemmapWriter", "load_memmap", "parse_mmap_name",
    "mmap_name", "frames_view", "read_frames", "write_frames",
]
