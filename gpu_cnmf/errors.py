"""Exceptions raised for user mistakes.

Each one subclasses the builtin a caller would naturally catch (``ValueError``
for bad values, ``RuntimeError`` for the device), so code that does not know
gpu_cnmf still handles them; the command line catches :class:`GpuCnmfError`
and prints its message without a traceback.
"""


class GpuCnmfError(Exception):
    """Base class of every error gpu_cnmf raises on purpose."""


class ParameterError(GpuCnmfError, ValueError):
    """A parameter is unknown, of the wrong type, or out of range."""


class MovieError(GpuCnmfError, ValueError):
    """A movie file or array cannot be used: missing, unreadable, truncated,
    the wrong number of dimensions, or NaN frames."""


class DeviceError(GpuCnmfError, RuntimeError):
    """The requested device cannot be used (no GPU, out of memory)."""


class MemoryBudgetError(ParameterError):
    """The memory budget cannot hold even one chunk of a stage; raised before
    any work starts, naming the budget and the minimum the stage needs."""


class OptionalDependencyError(GpuCnmfError, ImportError):
    """An optional extra (``gpu_cnmf[formats]``, ``gpu_cnmf[report]``) is
    needed for this feature and is not installed."""


class MotionWarning(UserWarning):
    """Motion correction finished but its result is suspect, e.g. many
    frames needed more than ``max_shifts`` (``warnings.simplefilter`` can
    silence or escalate it by this class)."""
