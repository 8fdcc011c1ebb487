"""NWB input: an imaging series of an NWB 2 file, read lazily.

pynwb (extra ``gpu_cnmf[formats]``) opens the file once to find the series:
the ``TwoPhotonSeries`` or ``OnePhotonSeries`` (or any other ``ImageSeries``
subtype holding frames) named by the user, among the file's acquisition
and processing modules; without a name, the only such series. Its ``data``
is an HDF5 dataset of shape ``(frames, x, y)`` (or ``(frames, x, y, z)``),
returned with the axes as stored, and frames are then sliced straight from
that dataset with h5py (so a reader reopens quickly, e.g. in a worker).

The frame rate is the series' ``rate``; a series with ``timestamps``
instead gives ``1 / median(diff(timestamps))``.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import MovieError
from .results import require_extra
from .formats import HDF5Source

_IMAGING = ("TwoPhotonSeries", "OnePhotonSeries")


def _series_in(nwbfile):
    """``{name: series}`` of every ImageSeries that holds frames in the file."""
    from pynwb.image import ImageSeries

    found = {}
    for obj in nwbfile.objects.values():
        if isinstance(obj, ImageSeries):
            found.setdefault(obj.name, obj)
    return found


def _describe(series: dict) -> str:
    if not series:
        return "none"
    return ", ".join(f"{name} ({type(s).__name__})" for name, s in sorted(series.items()))


def _rate(series, path: str):
    rate = getattr(series, "rate", None)
    if rate:
        return float(rate)
    ts = getattr(series, "timestamps", None)
    if ts is not None and len(ts) > 1:
        step = float(np.median(np.diff(np.asarray(ts[:min(len(ts), 10000)]))))
        if step > 0:
            return 1.0 / step
    return None


class NWBSource(HDF5Source):
    """The frames of one imaging series of an NWB file.

    Parameters
    ----------
    path : str
        The ``.nwb`` file (HDF5 backend).
    series : str, optional
        Name of the series (e.g. ``"TwoPhotonSeries"``); None picks the only
        TwoPhotonSeries/OnePhotonSeries (or the only image series) there is.

    Frames are read by :class:`HDF5Source` from the series' dataset; only
    finding the series needs pynwb.
    """

    def __init__(self, path: str, series: str | None = None):
        pynwb = require_extra("pynwb", "formats", "reading NWB movies")
        self.path = path
        self._file = None
        try:
            io = pynwb.NWBHDF5IO(path, "r", load_namespaces=True)
        except Exception as err:   # pynwb/hdmf/h5py raise many types for a bad file
            raise MovieError(f"{path}: cannot read as NWB: {err}") from err
        try:
            try:
                nwbfile = io.read()
            except Exception as err:
                raise MovieError(f"{path}: cannot read as NWB: {err}") from err
            found = _series_in(nwbfile)
            chosen = self._choose(found, series)
            data = chosen.data
            if not hasattr(data, "name") or not hasattr(data, "shape"):
                raise MovieError(f"{path}: series {chosen.name!r} stores no frames in the file "
                                 "(external_file or empty data); expected an HDF5 dataset")
            self.var_name = data.name   # HDF5Source reads this dataset lazily
            self.series = chosen.name
            self._setup(data.shape, data.dtype, f"{path}:{chosen.name}")
            self._meta = {"format": "nwb", "series": chosen.name,
                          "series_type": type(chosen).__name__}
            fr = _rate(chosen, path)
            if fr is not None:
                self._meta.update(fr=fr, fr_source=f"the rate of NWB series {chosen.name!r} in "
                                                  f"{os.path.basename(path)}")
        finally:
            io.close()

    def _choose(self, found: dict, name: str | None):
        if name is not None:
            if name not in found:
                raise MovieError(f"{self.path}: no image series named {name!r} (data.nwb_series); "
                                 f"the file holds: {_describe(found)}")
            return found[name]
        imaging = {k: s for k, s in found.items() if type(s).__name__ in _IMAGING}
        pool = imaging or found
        if len(pool) != 1:
            what = "no TwoPhotonSeries or OnePhotonSeries" if not pool else \
                f"{len(pool)} image series"
            raise MovieError(f"{self.path}: {what}; name the series to read with nwb_series "
                             f"(data.nwb_series); the file holds: {_describe(found)}")
        return next(iter(pool.values()))


__all__ = ["NWBSource"]
