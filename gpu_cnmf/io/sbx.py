"""Scanbox (Neurolabware) ``.sbx`` movies with their ``.mat`` header.

Layout implemented (Scanbox's documented file format, as its MATLAB
``sbxread`` reads it):

- ``name.mat`` holds the struct ``info`` (read with ``scipy.io.loadmat``,
  ``squeeze_me=True, struct_as_record=False``); ``name.sbx`` holds the
  frames, nothing else (no header).
- Every frame is ``uint16``, stored inverted (stored = 65535 - intensity),
  samples interleaved channel fastest, then pixel along the line, then
  line: Fortran order ``(nchan, ncols, nrows)`` per frame, i.e. the whole
  file is ``(nchan, ncols, nrows, nplanes, nframes)`` in Fortran order.
  Frames of a volume scan cycle through the planes: frame ``k`` of the file
  is plane ``k % nplanes`` of volume ``k // nplanes``; an incomplete last
  volume is left out.

Fields of ``info`` used, and what they mean:

- ``sz`` = (lines, pixels per line): ``nrows, ncols``.
- channels: ``info.chan.nchan`` (Scanbox >= 3); older files use
  ``info.channels``: 1 = both PMTs (2 channels), 2 = PMT0 only, 3 = PMT1
  only (1 channel).
- ``scanmode``: 1 unidirectional, 0 bidirectional. Bidirectional lines are
  returned as recorded (Scanbox aligns them at acquisition; the dead columns
  at the line turn are not cut).
- planes: ``len(info.etl_table)`` when present (Scanbox >= 3 volume scans),
  else, with ``info.volscan`` set, ``len(info.otwave)`` or
  ``info.otparam[2]`` (optotune).
- frame rate per plane: ``resfreq / lines * (2 if bidirectional else 1) /
  nplanes``, with ``lines = info.config.lines`` (else ``sz[0]``).
- ``info.config.magnification`` (zoom) is reported when present.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import MovieError
from .source import MovieSource, select_index

_MAX = np.uint16(65535)


def _field(obj, name, default=None):
    return getattr(obj, name, default) if obj is not None else default


def _n(v) -> int:
    return int(np.size(v)) if v is not None and not isinstance(v, str) else 0


def read_sbx_info(path: str):
    """The ``info`` struct of the ``.mat`` header next to ``path``."""
    from scipy.io import loadmat

    mat = os.path.splitext(path)[0] + ".mat"
    if not os.path.isfile(mat):
        raise MovieError(f"{path}: its Scanbox header {os.path.basename(mat)} is missing "
                         "(expected next to the .sbx file, holding the struct 'info')")
    try:
        doc = loadmat(mat, squeeze_me=True, struct_as_record=False)
    except (ValueError, OSError, TypeError, NotImplementedError) as err:
        raise MovieError(f"{mat}: cannot read the Scanbox header: {err}") from err
    if "info" not in doc:
        raise MovieError(f"{mat}: no struct 'info' in the Scanbox header "
                         f"(variables: {', '.join(k for k in doc if not k.startswith('__'))})")
    return doc["info"], mat


def sbx_layout(info, path: str) -> dict:
    """Frame shape, channels, planes, frame rate and scan mode from ``info``."""
    sz = _field(info, "sz")
    if sz is None or np.size(sz) != 2:
        raise MovieError(f"{path}: the Scanbox header has no frame size info.sz = [lines, "
                         "pixels]")
    nrows, ncols = (int(v) for v in np.ravel(sz))
    chan = _field(info, "chan")
    if _field(chan, "nchan") is not None:
        nchan = int(chan.nchan)
    else:
        code = int(_field(info, "channels", 2))
        if code not in (1, 2, 3):
            raise MovieError(f"{path}: info.channels = {code} in the Scanbox header; expected "
                             "1 (both PMTs), 2 (PMT0) or 3 (PMT1)")
        nchan = 2 if code == 1 else 1
    nplanes = 1
    etl = _field(info, "etl_table")
    if _n(etl) and np.ndim(etl) >= 1:
        nplanes = int(np.shape(etl)[0]) if np.ndim(etl) > 1 else _n(etl)
    elif _n(_field(info, "volscan")) and bool(np.ravel(_field(info, "volscan"))[0]):
        otwave = _field(info, "otwave")
        otparam = _field(info, "otparam")
        if _n(otwave) > 1:
            nplanes = _n(otwave)
        elif _n(otparam) > 2:
            nplanes = int(np.ravel(otparam)[2])
    nplanes = max(1, nplanes)
    scanmode = int(_field(info, "scanmode", 1))
    config = _field(info, "config")
    lines = _field(config, "lines") or nrows
    resfreq = _field(info, "resfreq")
    fr = None
    if resfreq is not None and float(resfreq) > 0:
        fr = float(resfreq) / float(lines) * (2 if scanmode == 0 else 1) / nplanes
    zoom = _field(config, "magnification")
    return {"nrows": nrows, "ncols": ncols, "nchan": nchan, "nplanes": nplanes,
            "bidirectional": scanmode == 0, "fr": fr,
            "zoom": None if zoom is None else float(np.ravel(zoom)[0])}


class SbxSource(MovieSource):
    """A Scanbox ``.sbx`` file: one plane and one channel (or all planes as a
    volume ``(T, nplanes, lines, pixels)``), memory-mapped.

    Parameters
    ----------
    path : str
        The ``.sbx`` file; its ``.mat`` header lies beside it.
    plane : int, optional
        Plane of a volume scan (0-based); None reads every plane as a volume
        (a single-plane file needs none).
    channel : int, optional
        Channel (0 = first stored); required when two were recorded.
    """

    _handle_attrs = ("_mm",)

    def __init__(self, path: str, plane: int | None = None, channel: int | None = None):
        self.path = path
        self._mm = None
        info, mat = read_sbx_info(path)
        lay = sbx_layout(info, mat)
        self._lay = lay
        nrows, ncols, nchan, nplanes = lay["nrows"], lay["ncols"], lay["nchan"], lay["nplanes"]
        frame_bytes = nrows * ncols * nchan * 2
        size = os.path.getsize(path)
        if size % frame_bytes:
            raise MovieError(f"{path}: the Scanbox file is truncated: {size} bytes is not a "
                             f"whole number of frames of {frame_bytes} bytes ({nchan} channel(s) "
                             f"x {nrows} lines x {ncols} pixels, uint16; from {mat})")
        self._n_stored = size // frame_bytes
        if channel is None:
            if nchan > 1:
                raise MovieError(f"{path}: the file holds {nchan} channels; pick one with "
                                 f"channel (data.channel, --channel) 0..{nchan - 1}")
            channel = 0
        self.channel = select_index(path, "channel", channel, nchan)
        self.plane = None if plane is None and nplanes > 1 else \
            select_index(path, "plane", 0 if plane is None else plane, nplanes)
        T = self._n_stored // nplanes
        dims = (nplanes, nrows, ncols) if self.plane is None else (nrows, ncols)
        self._setup((T,) + dims, np.uint16, path)
        self._meta = {"format": "scanbox", "n_planes": nplanes, "n_channels": nchan,
                      "plane": self.plane, "channel": self.channel,
                      "bidirectional": lay["bidirectional"], "zoom": lay["zoom"]}
        if lay["fr"] is not None:
            self._meta.update(fr=lay["fr"], fr_source=f"Scanbox header {os.path.basename(mat)}")

    def _map(self) -> np.memmap:
        if self._mm is None:
            L = self._lay
            # C-order view of the Fortran (nchan, ncols, nrows, frames) file
            self._mm = np.memmap(self.path, dtype="<u2", mode="r",
                                 shape=(self._n_stored, L["nrows"], L["ncols"], L["nchan"]))
        return self._mm

    def _read(self, start: int, stop: int) -> np.ndarray:
        mm = self._map()
        nplanes = self._lay["nplanes"]
        if self.plane is None:
            raw = mm[start * nplanes:stop * nplanes, :, :, self.channel]
            raw = raw.reshape((stop - start, nplanes) + raw.shape[1:])
        else:
            raw = mm[start * nplanes + self.plane:stop * nplanes:nplanes, :, :, self.channel]
        return _MAX - np.asarray(raw, dtype=np.uint16)

    def close(self) -> None:
        self._mm = None   # np.memmap has no close(); dropping it unmaps


__all__ = ["SbxSource", "read_sbx_info", "sbx_layout"]
