"""The parameters one fit reads, with their fit-time defaults filled in.

Both CNMF (two-photon) and CNMF-E (one-photon) take a plain-dict snapshot of
the parameter groups from :func:`fit_config` at the start of a fit, so the
defaults CaImAn fills in at fit time (``medw``, ``se``, ``ss``, and ``gSiz``
from ``gSig``) are derived here and nowhere else.
"""
from __future__ import annotations

import copy

import numpy as np

from ..params import default_gsiz

GROUPS = ("data", "patch", "preprocess", "init", "spatial", "temporal", "merge", "quality")

MEDW = (3, 3)   # the median filter's window before a footprint is thresholded


def structure_3x3():
    """The 3x3 closing (``se``) and connectivity (``ss``) structure CaImAn
    uses when none is given."""
    return np.ones((3, 3), dtype=np.uint8)


def fit_config(params):
    """Plain-dict snapshot of the groups a fit reads, with CaImAn's fit-time
    defaults: ``spatial.medw`` (3, 3), ``spatial.se``/``ss`` 3x3 ones,
    ``init.gSiz`` = :func:`gpu_cnmf.params.default_gsiz` of ``gSig``.

    Parameters
    ----------
    params : CNMFParams

    Returns
    -------
    dict of dict
    """
    cfg = {g: copy.deepcopy(params.get_group(g)) for g in GROUPS}
    s = cfg["spatial"]
    if s["medw"] is None:
        s["medw"] = MEDW
    if s["se"] is None:
        s["se"] = structure_3x3()
    if s["ss"] is None:
        s["ss"] = structure_3x3()
    ini = cfg["init"]
    if ini["gSiz"] is None:
        ini["gSiz"] = default_gsiz(ini["gSig"])
    return cfg
