"""CaImAn's ``caiman.utils.utils``: ``download_demo``.

This engine does not download anything (it runs where there may be no
network). ``download_demo`` returns the path of a demo file that is
already in place, where CaImAn would have saved it, and otherwise says
where to put it.
"""
from __future__ import annotations

import os

from ...errors import MovieError
from ..paths import caiman_datadir

__all__ = ["download_demo"]


def download_demo(name: str = 'Sue_2x_3000_40_-46.tif', save_folder: str = '') -> str:
    """Path of CaImAn's demo movie ``name``:
    ``<caiman_datadir()>/example_movies/<save_folder>/<name>``.

    Raises
    ------
    MovieError
        The file is not there; nothing is downloaded (no network access).
        Copy the file there (or set ``CAIMAN_DATA``), or pass your movie's
        path to ``cm.load`` directly.
    """
    folder = os.path.join(caiman_datadir(), "example_movies", save_folder)
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        return path
    raise MovieError(
        f"download_demo: {name!r} is not at {path}, and gpu_cnmf does not download demo "
        "data (no network access). Copy the file to that path (CaImAn's demo files are "
        "listed in its documentation), set CAIMAN_DATA to the folder holding "
        "example_movies/, or pass your movie's path directly")
