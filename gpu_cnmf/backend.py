"""Device choice, array exchange and memory budgets.

This is the one module that knows about devices. Everything above it asks
here for the torch device (:func:`get_device`), for how many frames fit in
memory (:func:`frames_per_chunk`), and for moving arrays between host and
device (:func:`to_tensor`, :func:`to_numpy`, :func:`pinned_empty`), or
between torch and CuPy (:func:`to_cupy`, :func:`from_cupy`, both by DLPack,
without a copy). Code above it is written once for torch tensors and runs on
``cpu`` and ``cuda`` alike.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from .errors import DeviceError

# Fraction of free memory a stage may plan to use; the rest is headroom for
# the framework's allocator, FFT plans and temporaries we do not count.
DEFAULT_MEMORY_FRACTION = 0.5
# Host budgets are capped so a streaming stage never plans to fill RAM.
_HOST_BUDGET_CAP = 4 * 1024**3


def cuda_available() -> bool:
    """True when torch sees at least one usable CUDA device."""
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def get_device(use_cuda: bool | str | torch.device = False) -> torch.device:
    """Resolve ``use_cuda`` to a torch device.

    Parameters
    ----------
    use_cuda : bool, str or torch.device
        False for the CPU, True for the current CUDA device; a string such
        as ``"cuda:1"`` or a device is taken as given.

    Raises
    ------
    DeviceError
        ``use_cuda`` asks for a GPU that torch cannot use.
    """
    if isinstance(use_cuda, torch.device):
        device = use_cuda
    elif isinstance(use_cuda, str):
        try:
            device = torch.device(use_cuda)
        except RuntimeError as err:
            raise DeviceError(f"use_cuda: {use_cuda!r} is not a device name "
                              "(expected True, False, 'cpu' or 'cuda[:N]')") from err
    elif isinstance(use_cuda, (bool, np.bool_)) or use_cuda is None:
        device = torch.device("cuda" if use_cuda else "cpu")
    else:
        raise DeviceError(f"use_cuda: expected a bool or a device name, got {use_cuda!r}")
    if device.type == "cuda":
        if not cuda_available():
            raise DeviceError(
                "use_cuda=True but no CUDA GPU is usable here "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "set use_cuda=False to run on the CPU")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"use_cuda: {device} requested but only "
                              f"{torch.cuda.device_count()} CUDA device(s) exist")
        device = torch.device("cuda", index)
    return device


def free_memory(device: torch.device | str = "cpu") -> int:
    """Free memory in bytes on ``device`` (available RAM for the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def memory_budget(device: torch.device | str = "cpu",
                  fraction: float = DEFAULT_MEMORY_FRACTION,
                  memory_fact: float = 1.0) -> int:
    """Bytes a streaming stage may plan to hold on ``device`` at once.

    ``memory_fact`` is CaImAn's knob to grow (>1) or shrink (<1) the budget.
    The environment variable ``GPU_CNMF_MEMORY_BUDGET`` (bytes) overrides it,
    which tests use to force chunking on small movies.
    """
    env = os.environ.get("GPU_CNMF_MEMORY_BUDGET")
    if env:
        return int(float(env))
    device = torch.device(device)
    budget = free_memory(device) * fraction
    if device.type == "cpu":
        budget = min(budget, _HOST_BUDGET_CAP)
    return int(budget * memory_fact)


def frames_per_chunk(frame_shape: Sequence[int], *, itemsize: int = 4,
                     copies: float = 4.0, device: torch.device | str = "cpu",
                     budget: int | None = None, max_frames: int | None = None) -> int:
    """How many frames of ``frame_shape`` fit in the memory budget.

    Parameters
    ----------
    frame_shape : sequence of int
        Shape of one frame, e.g. ``(512, 512)``.
    itemsize : int
        Bytes per element of the working dtype (4 for float32).
    copies : float
        How many frame-sized buffers the stage holds per frame (input,
        FFTs, output, ...); the budget is divided by this.
    device, budget
        The budget is ``budget`` bytes if given, else :func:`memory_budget`.
    max_frames : int, optional
        Upper bound, e.g. the movie length.

    Returns
    -------
    int
        At least 1.
    """
    if budget is None:
        budget = memory_budget(device)
    per_frame = int(np.prod(frame_shape)) * itemsize * copies
    n = max(1, int(budget // max(per_frame, 1)))
    if max_frames is not None:
        n = max(1, min(n, int(max_frames)))
    return n


def to_tensor(array, device: torch.device | str = "cpu",
              dtype: torch.dtype | None = torch.float32,
              non_blocking: bool = False) -> torch.Tensor:
    """Host array (or tensor) to a tensor on ``device``, cast to ``dtype``.

    Integer movies (uint16, int16) are converted on the device after the
    copy, which halves the bytes that cross the bus.
    """
    if isinstance(array, torch.Tensor):
        t = array
    else:
        a = np.asarray(array)
        if a.dtype == np.uint16 or a.dtype == np.uint32:
            # torch has no unsigned 16/32-bit arithmetic: widen on the host.
            a = a.astype(np.int32 if a.dtype == np.uint16 else np.int64)
        if not a.flags.writeable or not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
            if not a.flags.writeable:
                a = a.copy()
        t = torch.from_numpy(a)
    t = t.to(torch.device(device), non_blocking=non_blocking)
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t


def to_numpy(tensor) -> np.ndarray:
    """Tensor on any device (or array) to a host numpy array."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().numpy()
    cp = _cupy()
    if cp is not None and isinstance(tensor, cp.ndarray):
        return cp.asnumpy(tensor)
    return np.asarray(tensor)


def pinned_empty(shape: Sequence[int], dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Host buffer for streaming to ``device``: page-locked when it is a GPU,
    so copies from it can run asynchronously and overlap compute."""
    pin = torch.device(device).type == "cuda"
    return torch.empty(tuple(shape), dtype=dtype, pin_memory=pin)


def _cupy():
    try:
        import cupy  # noqa: F401
    except Exception:  # ImportError, or a CuPy whose CUDA libraries are missing
        return None
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports and sees a GPU."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def to_cupy(tensor: torch.Tensor):
    """CUDA tensor to a CuPy array sharing its memory (DLPack, no copy)."""
    cp = _cupy()
    if cp is None:
        raise DeviceError("CuPy is not installed: install gpu_cnmf[cuda12] "
                          "(or the extra for your CUDA major version)")
    if tensor.device.type != "cuda":
        raise DeviceError(f"to_cupy needs a CUDA tensor, got one on {tensor.device}")
    return cp.from_dlpack(tensor.detach())


def from_cupy(array) -> torch.Tensor:
    """CuPy array to a CUDA tensor sharing its memory (DLPack, no copy)."""
    return torch.from_dlpack(array)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU); for timings."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device | str) -> str:
    """One line naming the device, for logs and result summaries."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU ({torch.get_num_threads()} threads)"
