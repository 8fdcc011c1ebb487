"""CaImAn's ``caiman.source_extraction.cnmf.estimates``: ``Estimates``
(:class:`gpu_cnmf.cnmf.estimates.Estimates`)."""
from ....cnmf.estimates import Estimates

__all__ = ["Estimates"]
