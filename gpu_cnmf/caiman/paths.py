"""CaImAn's ``caiman.paths``: where example data and temporary files go.

CaImAn's conventions: the data folder is ``$CAIMAN_DATA`` when set, else
``~/caiman_data``; temporary files go to ``$CAIMAN_TEMP`` when it names a
folder, else ``<data folder>/temp`` (made on first use).
"""
from __future__ import annotations

import os
import warnings

__all__ = ["caiman_datadir", "caiman_datadir_exists", "get_tempdir", "fn_relocated"]


def caiman_datadir() -> str:
    """The data folder: ``$CAIMAN_DATA``, else ``~/caiman_data``."""
    if os.environ.get("CAIMAN_DATA"):
        return os.environ["CAIMAN_DATA"]
    return os.path.join(os.path.expanduser("~"), "caiman_data")


def caiman_datadir_exists() -> bool:
    """Whether the data folder exists."""
    return os.path.isdir(caiman_datadir())


def get_tempdir() -> str:
    """Folder for temporary files: ``$CAIMAN_TEMP`` when it is a folder
    (a warning otherwise), else ``<data folder>/temp``, made if missing."""
    tmp = os.environ.get("CAIMAN_TEMP")
    if tmp:
        if os.path.isdir(tmp):
            return tmp
        warnings.warn(f"CAIMAN_TEMP is set to {tmp!r}, which is not a folder; using the "
                      "default temporary folder", stacklevel=2)
    path = os.path.join(caiman_datadir(), "temp")
    os.makedirs(path, exist_ok=True)
    return path


def fn_relocated(fn: str, force_temp: bool = False) -> str:
    """A bare file name placed in :func:`get_tempdir`; a name with a folder
    part is returned unchanged (unless ``force_temp``, which keeps only the
    file name and places it in the temporary folder)."""
    fn = os.fspath(fn)
    if force_temp or os.path.basename(fn) == fn:
        return os.path.join(get_tempdir(), os.path.basename(fn))
    return fn
