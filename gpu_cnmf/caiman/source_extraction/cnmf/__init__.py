"""CaImAn's ``caiman.source_extraction.cnmf``: modules ``cnmf`` (``CNMF``,
``load_CNMF``), ``params`` (``CNMFParams``), ``estimates`` (``Estimates``),
``deconvolution`` (``constrained_foopsi``), and ``CNMF`` itself."""
from . import cnmf, deconvolution, estimates, params
from .cnmf import CNMF, load_CNMF

__all__ = ["cnmf", "params", "estimates", "deconvolution", "CNMF", "load_CNMF"]
