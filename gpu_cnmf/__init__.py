"""gpu_cnmf: calcium-imaging analysis (NoRMCorre motion correction, CNMF and
CNMF-E source extraction, OASIS deconvolution, component evaluation) on the
GPU or the CPU, with CaImAn's parameters and names.

The public names are imported lazily so that ``import gpu_cnmf`` stays quick
and a stage's heavy imports happen only when it is used.
"""
from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "CNMFParams": "gpu_cnmf.params",
    "MotionCorrect": "gpu_cnmf.motion",
    "CNMF": "gpu_cnmf.cnmf",
    "load_CNMF": "gpu_cnmf.cnmf",
    "load_movie": "gpu_cnmf.io",
    "save_memmap": "gpu_cnmf.io",
    "load_memmap": "gpu_cnmf.io",
    "open_movie": "gpu_cnmf.io",
    "make_movie": "gpu_cnmf.synthetic",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'gpu_cnmf' has no attribute {name!r}")
