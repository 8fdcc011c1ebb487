"""CaImAn-compatible façade over gpu_cnmf.

``import gpu_cnmf.caiman as cm`` lets a script written for CaImAn run with only
its imports changed: ``cm.load``, ``cm.movie``, ``cm.save_memmap``,
``cm.load_memmap``, ``cm.cluster.setup_cluster``, ``cm.stop_server``,
``cm.motion_correction.MotionCorrect``,
``cm.source_extraction.cnmf.{cnmf, params, estimates, deconvolution}``, ...

This package only adapts names and call signatures; every algorithm lives in
the core ``gpu_cnmf`` modules, and nothing in the core imports this package.
A CaImAn call or argument we do not support raises NotImplementedError
naming the nearest thing we have.
"""
from importlib import import_module

from . import cluster
from .base.movies import concatenate, load, load_movie_chain, movie
from .cluster import stop_server
from .mmapping import load_memmap, save_memmap, save_memmap_join

__all__ = ["load", "load_movie_chain", "concatenate", "movie", "save_memmap", "load_memmap",
           "save_memmap_join", "stop_server", "cluster", "local_correlations",
           "motion_correction", "source_extraction", "summary_images"]

_LAZY = {"motion_correction": "gpu_cnmf.caiman.motion_correction",
         "source_extraction": "gpu_cnmf.caiman.source_extraction",
         "summary_images": "gpu_cnmf.caiman.summary_images",
         "utils": "gpu_cnmf.caiman.utils",
         "base": "gpu_cnmf.caiman.base",
         "paths": "gpu_cnmf.caiman.paths",
         "mmapping": "gpu_cnmf.caiman.mmapping"}


def __getattr__(name):
    if name in _LAZY:
        return import_module(_LAZY[name])
    if name == "local_correlations":
        return import_module("gpu_cnmf.caiman.summary_images").local_correlations
    raise AttributeError(f"module 'gpu_cnmf.caiman' has no attribute {name!r}")
