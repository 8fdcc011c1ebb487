"""CaImAn's ``caiman.source_extraction.cnmf.deconvolution``:
``constrained_foopsi`` (one trace; CaImAn's signature and returns ``c, bl,
c1, g, sn, sp, lam``), ``estimate_time_constant``, ``GetSn``."""
from ....deconvolution import constrained_foopsi, estimate_noise, estimate_time_constant

__all__ = ["constrained_foopsi", "estimate_time_constant", "GetSn"]


def GetSn(fluor, range_ff=(0.25, 0.5), method="logmexp"):
    """Noise standard deviation of a trace from its power spectrum (CaImAn's
    name for :func:`gpu_cnmf.deconvolution.estimate_noise`)."""
    import numpy as np
    sn = estimate_noise(np.asarray(fluor, dtype=np.float64)[None], noise_range=tuple(range_ff),
                        noise_method=method)
    return float(np.ravel(sn)[0])
