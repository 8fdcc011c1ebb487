"""Multi-plane and multi-channel TIFF recordings: ScanImage, ImageJ
hyperstacks and Bruker (PrairieView) folders.

Each is read as 2-D pages addressed by (time, plane, channel); a movie is
one channel of one plane ``(T, Y, X)``, or one channel of every plane as a
volume ``(T, Z, Y, X)`` when no plane is chosen. A file with several
channels needs one chosen (``channel``, 0-based); a plane or channel out of
range is an error naming the file and what it holds.

ScanImage (2016 and later; 5.x spells keys ``scanimage.SI.``)
    Metadata is read with tifffile: ``TiffFile.scanimage_metadata``
    (``FrameData``, from the BigTIFF header ScanImage writes) or, when that
    header is absent, the same ``SI.*`` key = value lines of the first page's
    Software tag (or ImageDescription), parsed with ``tifffile.matlabstr2py``.
    Pages are interleaved channel fastest, then plane, then time. Used:
    ``SI.hChannels.channelSave`` (channels), ``SI.hStackManager.actualNumSlices``
    (else ``numSlices``; 1 when the stack and fast-z are disabled),
    ``SI.hRoiManager.scanFrameRate`` (single plane) or ``scanVolumeRate``
    (multi-plane: the rate of each plane), ``SI.hRoiManager.scanZoomFactor``.
    Flyback frames are assumed discarded (ScanImage's default); slow stacks
    (``framesPerSlice > 1`` with several slices) are not supported. Pages
    of an incomplete last volume (an aborted acquisition) are left out.

ImageJ hyperstacks (and OME-TIFF series)
    The axes tifffile reads (``T``, ``Z``, ``C`` in any order before ``YX``)
    give the page of each (t, z, c); the frame rate is ``1 / finterval``
    (or ``fps``) from the ImageJ description when present. A stack whose
    only axis is ``C`` (``channels=N`` alone: what ``tifffile.imwrite(...,
    imagej=True)`` writes for a plain 3-D array) is read as N frames.

Bruker (PrairieView)
    A folder with the ``.xml`` file PrairieView writes (root ``PVScan``)
    and one TIFF per frame and channel. Documented subset: every
    ``<Sequence>`` lists ``<Frame>`` elements whose ``<File channel=..
    filename=.. [page=..]/>`` children name the file of each channel; a
    sequence whose ``type`` contains ``ZSeries`` is one volume (its frames
    are the planes, in order), otherwise its frames are time points. The
    frame rate is ``1 / framePeriod`` (the ``PVStateValue`` of that key)
    divided by the number of planes; ``opticalZoom`` gives the zoom.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from ..errors import MovieError
from .source import MovieSource, select_index


class _KeyedSource(MovieSource):
    """Frames gathered from 2-D images by a ``keys[t, z, c]`` table; the
    subclass reads a flat list of keys (``_load``)."""

    def _select(self, keys: np.ndarray, plane, channel, meta: dict, page_shape, dtype,
                hint: str = "") -> None:
        T, Z, C = keys.shape
        if channel is None:
            if C > 1:
                raise MovieError(f"{self.path}: the file holds {C} channels; pick one with "
                                 f"channel (data.channel, --channel) 0..{C - 1}{hint}")
            channel = 0
        self.channel = select_index(self.path, "channel", channel, C, hint)
        if plane is None and Z > 1:
            self.plane = None
            self._keys = keys[:, :, self.channel]
            dims = (Z,) + tuple(page_shape)
        else:
            self.plane = select_index(self.path, "plane", 0 if plane is None else plane, Z, hint)
            self._keys = keys[:, self.plane:self.plane + 1, self.channel]
            dims = tuple(page_shape)
        self._setup((T,) + dims, dtype, self.path)
        meta.update(n_planes=Z, n_channels=C, plane=self.plane, channel=self.channel)
        self._meta = meta

    def _read(self, start: int, stop: int) -> np.ndarray:
        keys = self._keys[start:stop].ravel()
        return self._load(keys).reshape((stop - start,) + self.dims)

    def _load(self, keys: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class TiffPagesSource(_KeyedSource):
    """Pages of one TIFF file addressed by (time, plane, channel)."""

    _handle_attrs = ("_tif",)

    def __init__(self, path: str, keys: np.ndarray, page_shape, dtype, meta: dict,
                 plane=None, channel=None, flags: dict | None = None):
        self.path = path
        self._tif = None
        self._flags = dict(flags or {})
        self._select(keys, plane, channel, meta, page_shape, dtype)

    def _handle(self):
        if self._tif is None:
            import tifffile
            self._tif = tifffile.TiffFile(self.path, **self._flags)
        return self._tif

    def _load(self, keys: np.ndarray) -> np.ndarray:
        pages = self._handle().pages
        return np.stack([pages[int(k)].asarray() for k in keys])


# ---------------------------------------------------------------------------
# ScanImage

def scanimage_framedata(tif) -> dict | None:
    """ScanImage's non-varying frame data (``SI.*`` keys), or None."""
    import tifffile

    page = tif.pages.first
    if not page.is_scanimage:
        return None
    meta = tif.scanimage_metadata or {}
    fd = meta.get("FrameData")
    if fd:
        return dict(fd)
    for text in (page.software, page.description):
        if "SI." not in text:
            continue
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln[len("scanimage."):] if ln.startswith("scanimage.") else ln for ln in lines]
        lines = [ln for ln in lines if ln.startswith("SI.") and "=" in ln]
        try:
            fd = tifffile.matlabstr2py("\n".join(lines))
        except (ValueError, TypeError, SyntaxError):
            continue
        if isinstance(fd, dict) and fd:
            return fd
    return None


def _si_planes(fd: dict) -> int:
    flags = [fd[k] for k in ("SI.hFastZ.enable", "SI.hStackManager.enable") if k in fd]
    if flags and not any(bool(f) for f in flags):
        return 1
    for key in ("SI.hStackManager.actualNumSlices", "SI.hStackManager.numSlices"):
        v = fd.get(key)
        if v is not None and np.size(v) == 1 and np.isfinite(float(np.ravel(v)[0])):
            return max(1, int(np.ravel(v)[0]))
    return 1


def scanimage_layout(path: str, fd: dict, n_pages: int) -> tuple[np.ndarray, dict]:
    """``keys[t, z, c]`` (page indices) and metadata of a ScanImage file."""
    save = fd.get("SI.hChannels.channelSave", 1)
    C = max(1, int(np.size(save)))
    Z = _si_planes(fd)
    T = n_pages // (Z * C)
    if T == 0:
        raise MovieError(f"{path}: {n_pages} pages hold no complete volume of {Z} plane(s) x "
                         f"{C} channel(s) (from the ScanImage metadata)")
    keys = np.arange(T * Z * C).reshape(T, Z, C)
    name = os.path.basename(path)
    meta = {"format": "scanimage", "channels_saved": [int(v) for v in np.ravel(save)]}
    rate = fd.get("SI.hRoiManager.scanVolumeRate" if Z > 1 else "SI.hRoiManager.scanFrameRate")
    if rate is None and Z == 1:
        rate = fd.get("SI.hRoiManager.scanVolumeRate")
    if rate is not None and float(rate) > 0:
        meta.update(fr=float(rate), fr_source=f"ScanImage metadata of {name}")
    zoom = fd.get("SI.hRoiManager.scanZoomFactor")
    if zoom is not None:
        meta["zoom"] = float(zoom)
    if n_pages != T * Z * C:
        meta["pages_left_out"] = n_pages - T * Z * C
    return keys, meta


# ---------------------------------------------------------------------------
# ImageJ hyperstacks / OME series

def axes_layout(path: str, series) -> tuple[np.ndarray, dict] | None:
    """``keys[t, z, c]`` from a series whose axes name T, Z and C, or None
    when its axes hold anything else (samples, tiles...)."""
    axes, shape = series.axes, tuple(series.shape)
    if not axes.endswith("YX"):
        return None
    lead, lead_shape = axes[:-2], shape[:-2]
    if not lead or set(lead) - set("TZC") or len(set(lead)) != len(lead):
        return None
    n_pages = len(series.pages)
    if int(np.prod(lead_shape)) != n_pages:
        return None
    grid = np.arange(n_pages).reshape(lead_shape)
    order = [lead.index(a) if a in lead else None for a in "TZC"]
    for i, a in enumerate("TZC"):
        if order[i] is None:
            grid = grid[..., None]
            order[i] = grid.ndim - 1
    keys = np.transpose(grid, order)
    return keys, {"format": "imagej" if series.kind == "imagej" else series.kind}


def _imagej_rate(tif) -> float | None:
    meta = tif.imagej_metadata or {}
    finterval = meta.get("finterval")
    if finterval and float(finterval) > 0:
        return 1.0 / float(finterval)
    fps = meta.get("fps")
    return float(fps) if fps and float(fps) > 0 else None


def tiff_rate(tif, path: str) -> dict:
    """``fr`` and ``fr_source`` from an ImageJ TIFF's metadata, or {}."""
    rate = _imagej_rate(tif) if tif.is_imagej else None
    if rate is None:
        return {}
    return {"fr": rate, "fr_source": f"ImageJ metadata of {os.path.basename(path)}"}


def open_layout_tiff(path: str, plane=None, channel=None) -> MovieSource | None:
    """A :class:`TiffPagesSource` for a ScanImage file, or an ImageJ/OME
    hyperstack with channels (or with a plane or channel asked for); None
    for every other TIFF (read by :class:`~gpu_cnmf.io.formats.TiffSource`)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        first = tif.pages.first
        fd = scanimage_framedata(tif)
        if fd is not None:
            n_pages = len(tif.pages)
            keys, meta = scanimage_layout(path, fd, n_pages)
            # always by pages: tifffile's own grouping of ScanImage pages
            # (slices x framesPerSlice x channels) need not match the recording
            return TiffPagesSource(path, keys, first.shape, first.dtype, meta, plane, channel)
        if not (tif.is_imagej or tif.is_ome) or not tif.series:
            return None
        found = axes_layout(path, tif.series[0])
        if found is None:
            return None
        keys, meta = found
        if keys.shape[:2] == (1, 1):
            return None       # channels only: how tifffile writes a plain stack (time)
        if keys.shape[2] == 1 and plane is None and channel in (None, 0):
            return None       # no channels to pick: volumes stay as the general reader reads them
        meta.update(tiff_rate(tif, path))
        page = tif.series[0].pages[0]
        offset = tif.pages.index(page) if hasattr(tif.pages, "index") else 0
        return TiffPagesSource(path, keys + offset, page.shape, page.dtype, meta, plane,
                               channel)


# ---------------------------------------------------------------------------
# Bruker

def find_bruker_xml(folder: str) -> str | None:
    """The PrairieView ``.xml`` of ``folder`` (root element ``PVScan``), or None."""
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith(".xml"):
            continue
        path = os.path.join(folder, name)
        try:
            for _, elem in ET.iterparse(path, events=("start",)):
                if elem.tag == "PVScan":
                    return path
                break
        except ET.ParseError:
            continue
    return None


def _pv_value(root, key):
    for el in root.iter("PVStateValue"):
        if el.get("key") == key and el.get("value") is not None:
            try:
                return float(el.get("value"))
            except ValueError:
                return None
    return None


class BrukerSource(_KeyedSource):
    """A Bruker (PrairieView) recording: a folder of one-frame TIFFs and its
    ``.xml`` (see the module notes for the subset read)."""

    def __init__(self, folder: str, plane=None, channel=None, xml_path: str | None = None):
        self.path = folder
        xml_path = xml_path or find_bruker_xml(folder)
        if xml_path is None:
            raise MovieError(f"{folder}: no PrairieView .xml (root element PVScan) in the folder")
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as err:
            raise MovieError(f"{xml_path}: cannot parse the Bruker XML: {err}") from err
        sequences = root.findall("Sequence")
        if not sequences:
            raise MovieError(f"{xml_path}: the Bruker XML lists no <Sequence> of frames")
        zstack = all("ZSeries" in (s.get("type") or "") for s in sequences)
        frames = [s.findall("Frame") for s in sequences]
        channels = sorted({int(f.get("channel", 1)) for seq in frames for fr in seq
                           for f in fr.findall("File")})
        if not channels:
            raise MovieError(f"{xml_path}: the Bruker XML names no <File> of any frame")
        if zstack:
            Z = len(frames[0])
            volumes = [seq for seq in frames if len(seq) == Z]   # drop an incomplete last one
            grid = [[fr for fr in seq] for seq in volumes]
        else:
            Z = 1
            grid = [[fr] for seq in frames for fr in seq]
        self._files: list[tuple[str, int]] = []
        keys = np.empty((len(grid), Z, len(channels)), np.int64)
        base = os.path.dirname(xml_path)
        for t, planes in enumerate(grid):
            for z, fr in enumerate(planes):
                by_chan = {int(f.get("channel", 1)): f for f in fr.findall("File")}
                for c, ch in enumerate(channels):
                    f = by_chan.get(ch)
                    if f is None:
                        raise MovieError(f"{xml_path}: frame {fr.get('index')} has no file for "
                                         f"channel {ch}")
                    fname = os.path.join(base, f.get("filename", ""))
                    if not os.path.isfile(fname):
                        raise MovieError(f"{fname}: TIFF listed in {os.path.basename(xml_path)} "
                                         "is missing (expected one file per frame and channel)")
                    keys[t, z, c] = len(self._files)
                    self._files.append((fname, int(f.get("page", 1)) - 1))
        import tifffile
        with tifffile.TiffFile(self._files[0][0]) as tif:
            page = tif.pages[self._files[0][1]]
            page_shape, dtype = page.shape, page.dtype
        meta = {"format": "bruker", "xml": os.path.basename(xml_path),
                "channel_numbers": channels}
        period = _pv_value(root, "framePeriod")
        if period and period > 0:
            meta.update(fr=1.0 / (period * Z),
                        fr_source=f"framePeriod in Bruker {os.path.basename(xml_path)}")
        zoom = _pv_value(root, "opticalZoom")
        if zoom is not None:
            meta["zoom"] = zoom
        self._select(keys, plane, channel, meta, page_shape, dtype,
                     hint=f" (Bruker channels {channels})" if len(channels) > 1 else "")

    def _load(self, keys: np.ndarray) -> np.ndarray:
        import tifffile

        out = []
        for k in keys:
            fname, page = self._files[int(k)]
            try:
                out.append(tifffile.imread(fname, key=page))
            except (tifffile.TiffFileError, ValueError, OSError, IndexError) as err:
                raise MovieError(f"{fname}: cannot read the Bruker frame: {err}") from err
        return np.stack(out)


__all__ = ["TiffPagesSource", "BrukerSource", "open_layout_tiff", "scanimage_framedata",
           "scanimage_layout", "axes_layout", "find_bruker_xml"]
