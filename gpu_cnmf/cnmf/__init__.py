"""CNMF source extraction for two-photon movies (CaImAn's CNMF, batched).

``CNMF(params=...).fit(images)`` / ``.refit(images)`` with results in
``Estimates`` (A, C, S, b, f, YrA, sn, g, bl, c1, neurons_sn, dims).
Modules: products (block-wise A'Y, YC'), preprocessing, initialization,
spatial, temporal, background, merging, patches, engine, cnmf.
"""
from .cnmf import CNMF, load_CNMF
from .estimates import Estimates

__all__ = ["CNMF", "Estimates", "load_CNMF"]
