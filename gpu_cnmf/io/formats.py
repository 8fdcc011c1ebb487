"""Movie readers, one :class:`~gpu_cnmf.io.source.MovieSource` per format.

Each reader checks the file when it is opened (exists, parses, has a movie's
shape, is as long as its header says) and then reads only the frames asked
for:

- TIFF (tifffile): an uncompressed, contiguous series is memory-mapped;
  otherwise only the pages holding the requested frames are decoded.
  Files written one frame per ``write`` call (one "shaped" series per page)
  are read as a single movie.
- HDF5 (h5py): dataset ``var_name_hdf5`` sliced along its first axis.
- ``.npy``: memory-mapped with ``np.load(mmap_mode='r')``.
- ``.mmap``: CaImAn's pixels x time files (:mod:`gpu_cnmf.io.memmap`).
- zarr (optional dependency): an array, or array ``var_name_hdf5`` of a group.
- video (``.avi``, ``.mkv``, ``.mp4``; extra ``video``): :mod:`.video`,
  also a folder of Miniscope AVIs joined in numeric order;
- Scanbox ``.sbx`` with its ``.mat`` header: :mod:`.sbx`;
- NWB (extra ``formats``): an imaging series, :mod:`.nwb`;
- multi-plane/multi-channel TIFFs (ScanImage, ImageJ hyperstacks) and
  Bruker folders: :mod:`.multitiff`.

Where a file records a frame rate, the reader puts it in the source's
``metadata`` (``fr``, ``fr_source``).
"""
from __future__ import annotations

import logging
import os
import struct
from contextlib import contextmanager

import numpy as np

from ..errors import MovieError
from .memmap import load_memmap, parse_mmap_name, read_frames
from .source import MovieSource, select_index
from .video import VIDEO_EXTENSIONS

TIFF_EXTENSIONS = (".tif", ".tiff", ".btf")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf")
NWB_EXTENSIONS = (".nwb",)
SUPPORTED_EXTENSIONS = (TIFF_EXTENSIONS + HDF5_EXTENSIONS + NWB_EXTENSIONS +
                        (".npy", ".mmap", ".zarr", ".sbx") + VIDEO_EXTENSIONS)

# tifffile logs (rather than raises) what it skips in a damaged file; these
# messages mean pages or data are missing, so the movie would come out short.
_TIFF_FATAL = ("invalid page offset", "invalid offset", "failed to reshape", "corrupted",
               "truncated", "failed to read")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextmanager
def _tifffile_errors():
    logger = logging.getLogger("tifffile")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _frame_shape(series) -> tuple:
    return tuple(series.shape) if len(series.shape) == 2 else tuple(series.shape[1:])


def _pages_uniform(series) -> bool:
    """Every series is made of whole 2-D pages of one shape and dtype."""
    ref = (tuple(series[0].shape[-2:]), series[0].dtype)
    return all((tuple(s.shape[-2:]), s.dtype) == ref and
               len(s.pages) == int(np.prod(s.shape[:-2])) for s in series)


class TiffSource(MovieSource):
    """A TIFF file: ``(T, d1, d2)`` pages, or ``(T, d1, d2, d3)`` volumes when
    the file's metadata (ImageJ hyperstack, tifffile shape) says so."""

    _handle_attrs = ("_tif", "_mm")

    def __init__(self, path: str):
        import tifffile

        self.path = path
        self._tif = self._mm = None
        self._flags: dict = {}
        with _tifffile_errors() as logged:
            try:
                tif = tifffile.TiffFile(path)
            except (tifffile.TiffFileError, ValueError, OSError, EOFError, struct.error) as err:
                raise MovieError(f"{path}: cannot read as TIFF: {err}") from err
            try:
                series = tif.series
                same_frames = all(_frame_shape(s) == _frame_shape(series[0]) and
                                  s.dtype == series[0].dtype for s in series)
                # series of 2-D pages that tifffile groups in differing shapes
                # (pages written in blocks of other shapes): one frame per page
                per_page = not same_frames and _pages_uniform(series)
                if len(series) > 1 and (same_frames or per_page):
                    # one series per write call (frame-by-frame or appending
                    # writers): reopen ignoring that metadata so that the pages
                    # form one uniform series
                    n_frames = sum(len(s.pages) for s in series) if per_page else \
                        sum(1 if len(s.shape) == 2 else s.shape[0] for s in series)
                    tif.close()
                    self._flags = {"is_shaped": False, "is_imagej": False}
                    tif = tifffile.TiffFile(path, **self._flags)
                    series = tif.series
                    if len(series) != 1 or series[0].shape[0] != n_frames:
                        raise MovieError(f"{path}: the TIFF's {n_frames} frames are "
                                         "stored in series that do not join into one movie")
                if not series:
                    raise MovieError(f"{path}: TIFF holds no image data")
                s = series[0]
                # walk every IFD and parse the last one: a cut file fails here
                tif.pages[len(tif.pages) - 1]
                self._describe(tif, s)
                from .multitiff import tiff_rate
                self._meta = {"format": "tiff", **tiff_rate(tif, path)}
            except MovieError:
                tif.close()
                raise
            except (tifffile.TiffFileError, ValueError, OSError, EOFError, IndexError,
                    struct.error) as err:
                tif.close()
                raise MovieError(f"{path}: cannot read as TIFF: {err}") from err
        fatal = [m for m in logged if any(k in m for k in _TIFF_FATAL)]
        if fatal:
            tif.close()
            raise MovieError(f"{path}: TIFF is truncated or corrupted ({fatal[0]})")
        if self._mode == "memmap":
            tif.close()  # the data are mapped directly; no decoder needed
        else:
            self._tif = tif

    def _describe(self, tif, s) -> None:
        shape, axes = tuple(s.shape), s.axes
        if len(shape) == 2 or axes[0] in "YX":
            T, dims = 1, shape
        else:
            T, dims = shape[0], shape[1:]
        self._setup((T,) + dims, s.dtype, self.path)
        size = os.path.getsize(self.path)
        self._series = tif.series.index(s)
        self._byteorder = tif.byteorder
        if s.dataoffset is not None:
            self._mode, self._offset = "memmap", int(s.dataoffset)
            end = self._offset + s.nbytes
        else:
            pages = s.pages
            n_pages = len(pages)
            page_size = int(np.prod(pages[0].shape))
            if n_pages % T == 0 and page_size * (n_pages // T) == int(np.prod(dims)):
                self._mode, self._ppf = "pages", n_pages // T
            else:
                # frames do not map onto whole pages (e.g. one tiled volume):
                # such a series can only be decoded as a whole
                self._mode = "whole"
            last = pages[n_pages - 1]
            end = max(o + c for o, c in zip(last.dataoffsets, last.databytecounts))
        if end > size:
            raise MovieError(f"{self.path}: TIFF is truncated: image data run to byte {end} "
                             f"but the file has {size} bytes")

    def _handle(self):
        if self._tif is None:
            import tifffile
            self._tif = tifffile.TiffFile(self.path, **self._flags)
        return self._tif

    def _read(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        if self._mode == "memmap":
            if self._mm is None:
                self._mm = np.memmap(self.path, mode="r", offset=self._offset,
                                     dtype=self.dtype.newbyteorder(self._byteorder),
                                     shape=self.shape)
            return np.array(self._mm[start:stop])
        tif = self._handle()
        if self._mode == "pages":
            key = range(start * self._ppf, stop * self._ppf)
            data = tif.asarray(key=key, series=self._series)
            return np.asarray(data).reshape((n,) + self.dims)
        data = tif.asarray(series=self._series)
        return np.array(data.reshape(self.shape)[start:stop])


class HDF5Source(MovieSource):
    """Dataset ``var_name`` of an HDF5 file (``.h5``, ``.hdf5``, ``.nwb``),
    frames along its first axis."""

    _handle_attrs = ("_file",)

    def __init__(self, path: str, var_name: str = "mov"):
        import h5py

        self.path, self.var_name = path, var_name
        self._file = None
        f = self._handle()
        try:
            ds = f.get(var_name)
            if not isinstance(ds, h5py.Dataset):
                found: list[str] = []
                f.visititems(lambda name, obj: found.append(f"{name} {obj.shape}")
                             if isinstance(obj, h5py.Dataset) else None)
                raise MovieError(
                    f"{path}: no dataset named {var_name!r} (var_name_hdf5); available "
                    f"datasets: {', '.join(found) if found else 'none'}")
            self._setup(ds.shape, ds.dtype, f"{path}:{var_name}")
        except BaseException:
            self.close()
            raise

    def _handle(self):
        if self._file is None:
            import h5py
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise MovieError(f"{self.path}: cannot read as HDF5: {err}") from err
        return self._file

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self._handle()[self.var_name][start:stop]


class ZarrSource(MovieSource):
    """A zarr array, or array ``var_name`` of a zarr group."""

    _handle_attrs = ("_array",)

    def __init__(self, path: str, var_name: str = "mov"):
        self.path, self.var_name = path, var_name
        self._array = None
        a = self._handle()
        self._setup(a.shape, a.dtype, path)

    def _handle(self):
        if self._array is not None:
            return self._array
        try:
            import zarr
        except ImportError as err:
            raise MovieError(f"{self.path}: reading zarr needs the zarr package "
                             "(pip install gpu_cnmf[formats])") from err
        try:
            node = zarr.open(self.path, mode="r")
        except Exception as err:  # zarr raises its own error types per version
            raise MovieError(f"{self.path}: cannot read as zarr: {err}") from err
        if hasattr(node, "array_keys"):  # a group
            arrays = [k for k, v in node.members(max_depth=None) if hasattr(v, "shape")]
            if self.var_name not in arrays:
                raise MovieError(f"{self.path}: zarr group has no array {self.var_name!r} "
                                 f"(var_name_hdf5); available arrays: "
                                 f"{', '.join(arrays) if arrays else 'none'}")
            node = node[self.var_name]
        self._array = node
        return node

    def _read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._handle()[start:stop])

    def close(self) -> None:
        self._array = None  # zarr arrays hold no open file


class NpySource(MovieSource):
    """A ``.npy`` file, memory-mapped."""

    _handle_attrs = ("_mm",)

    def __init__(self, path: str):
        self.path = path
        self._mm = None
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:  # format 3.0 (utf-8 header): np.load parses it
                    mm = np.load(path, mmap_mode="r", allow_pickle=False)
                    shape, dtype, header_end = mm.shape, mm.dtype, mm.offset
                    del mm
                else:
                    shape, _fortran, dtype = read_header(fh)
                    header_end = fh.tell()
        except (ValueError, OSError, EOFError, SyntaxError) as err:
            raise MovieError(f"{path}: cannot read as .npy: {err}") from err
        expected = header_end + int(np.prod(shape)) * np.dtype(dtype).itemsize
        size = os.path.getsize(path)
        if size < expected:
            raise MovieError(f"{path}: .npy file is truncated: {size} bytes, its header "
                             f"says {expected} (shape {shape}, {dtype})")
        self._setup(shape, dtype, path)

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._mm is None:
            self._mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return np.array(self._mm[start:stop], order="C")

    def close(self) -> None:
        self._mm = None  # np.memmap has no close(); dropping it unmaps


class MmapSource(MovieSource):
    """A CaImAn ``.mmap`` file (pixels x time, either order), read as frames."""

    _handle_attrs = ("_Yr",)

    def __init__(self, path: str):
        self.path = path
        Yr, dims, T = load_memmap(path)
        self._Yr = Yr
        self.order = parse_mmap_name(path)["order"]
        self._setup((T,) + tuple(dims), Yr.dtype, path)

    @property
    def Yr(self) -> np.memmap:
        """The mapped pixels x T matrix."""
        if self._Yr is None:
            self._Yr = load_memmap(self.path)[0]
        return self._Yr

    def _read(self, start: int, stop: int) -> np.ndarray:
        return read_frames(self.Yr, start, stop, self.dims, self.order)

    def close(self) -> None:
        self._Yr = None


def _single(source: MovieSource, plane, channel) -> MovieSource:
    """``source`` (one plane, one channel) after checking a plane or
    channel asked of it."""
    try:
        for what, value in (("plane", plane), ("channel", channel)):
            if value is not None:
                select_index(source.name, what, value, 1)
    except MovieError:
        source.close()
        raise
    return source


def _open_folder(path: str, plane, channel) -> MovieSource:
    from .multitiff import BrukerSource, find_bruker_xml
    from .video import open_video_folder, video_files

    if video_files(path):
        return _single(open_video_folder(path), plane, channel)
    xml = find_bruker_xml(path)
    if xml is not None:
        return BrukerSource(path, plane, channel, xml_path=xml)
    raise MovieError(f"{path}: is a folder without a movie: expected video files (Miniscope "
                     "0.avi, 1.avi, ...), a Bruker PrairieView .xml with its TIFFs, or a zarr "
                     "store")


def open_file(path: str | os.PathLike, var_name_hdf5: str = "mov", plane: int | None = None,
              channel: int | None = None, nwb_series: str | None = None) -> MovieSource:
    """The reader for one file (or recording folder), chosen by its extension.

    Parameters
    ----------
    path : path
        A movie file, a folder of Miniscope videos, a Bruker folder, or a
        zarr store.
    var_name_hdf5 : str
        Dataset (HDF5), array (zarr); for NWB, when not ``"mov"`` and
        ``nwb_series`` is None, the name of the series (CaImAn's use).
    plane, channel : int, optional
        The plane and channel of a multi-plane or multi-channel recording
        (0-based). None: all planes as a volume; a recording with several
        channels needs ``channel``.
    nwb_series : str, optional
        Series of an NWB file to read.

    Raises
    ------
    MovieError
        The file is missing, unreadable, truncated, not a movie, or of an
        unsupported format; a plane or channel is out of range.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MovieError(f"{path}: file not found")
    ext = os.path.splitext(path.rstrip("/\\"))[1].lower()
    if ext in TIFF_EXTENSIONS:
        from .multitiff import open_layout_tiff
        try:
            source = open_layout_tiff(path, plane, channel)
        except (ValueError, OSError, EOFError, IndexError, struct.error) as err:
            if isinstance(err, MovieError):
                raise
            raise MovieError(f"{path}: cannot read as TIFF: {err}") from err
        return source if source is not None else _single(TiffSource(path), plane, channel)
    if ext in NWB_EXTENSIONS:
        from .nwb import NWBSource
        series = nwb_series if nwb_series is not None else \
            (var_name_hdf5 if var_name_hdf5 != "mov" else None)
        return _single(NWBSource(path, series), plane, channel)
    if ext == ".sbx":
        from .sbx import SbxSource
        return SbxSource(path, plane, channel)
    if ext in VIDEO_EXTENSIONS:
        from .video import VideoSource
        return _single(VideoSource(path), plane, channel)
    if os.path.isdir(path) and ext != ".zarr" and not any(
            os.path.exists(os.path.join(path, m)) for m in ("zarr.json", ".zarray", ".zgroup")):
        return _open_folder(path, plane, channel)
    source = _open_plain(path, ext, var_name_hdf5)
    return _single(source, plane, channel)


def _open_plain(path: str, ext: str, var_name_hdf5: str) -> MovieSource:
    if ext in HDF5_EXTENSIONS:
        return HDF5Source(path, var_name_hdf5)
    if ext == ".npy":
        return NpySource(path)
    if ext == ".mmap":
        return MmapSource(path)
    if ext == ".zarr" or (os.path.isdir(path) and any(
            os.path.exists(os.path.join(path, m)) for m in ("zarr.json", ".zarray", ".zgroup"))):
        return ZarrSource(path, var_name_hdf5)
    raise MovieError(f"{path}: unsupported movie format {ext or '(no extension)'!r}; "
                     f"supported: {', '.join(SUPPORTED_EXTENSIONS)}")
