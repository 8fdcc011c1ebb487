"""Device choice, array exchange and memory budgets.

This is the one module that knows about devices. Everything above it asks
here for the torch device (:func:`get_device`), for how many frames fit in
memory (:func:`frames_per_chunk`), and for moving arrays between host and
device (:func:`to_tensor`, :func:`to_numpy`, :func:`pinned_empty`), or
between torch and CuPy (:func:`to_cupy`, :func:`from_cupy`, both by DLPack,
without a copy). Code above it is written once for torch tensors and runs on
``cpu`` and ``cuda`` alike.

It also holds the memory budgets (:func:`host_budget`, :func:`device_budget`,
:func:`set_memory_limit`; the formula is in the notes above
:func:`parse_bytes`) and the out-of-memory retry every device stage goes
through (:func:`oom_retry`, with the test hook :func:`inject_oom`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Sequence

import numpy as np
import torch

from .errors import DeviceError, MemoryBudgetError

log = logging.getLogger("gpu_cnmf")

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
    """Free memory in bytes on ``device``.

    For the CPU this is the smaller of ``MemAvailable`` and what the
    process's cgroup (a container, a batch job's slot) still allows.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    room = _cgroup_room()
    return int(avail if room is None else min(avail, room))


def _cgroup_room() -> int | None:
    """Bytes the cgroup (v2 or v1) still allows, or None without a limit."""
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_f) as fh:
                text = fh.read().strip()
            if text == "max":
                return None
            limit = int(text)
            if limit >= 1 << 60:      # cgroup v1 spells "no limit" as a huge number
                return None
            with open(usage_f) as fh:
                usage = int(fh.read().strip())
            return max(0, limit - usage)
        except (OSError, ValueError):
            continue
    return None


# ----------------------------------------------------------------------------
# Memory budgets.
#
# Two budgets, set here and nowhere else: the host budget (RAM) and one per
# device (GPU memory). A streaming stage asks :func:`frames_per_chunk` (or
# :func:`host_budget` / :func:`device_budget`) how much it may hold at once.
#
# The user's limit ``L`` (``params.patch['memory_limit']``, ``gpu-cnmf run
# --memory-limit``, :func:`set_memory_limit`) caps the process's anonymous
# memory apart from the results:
#
#     peak anonymous memory <= L + results
#     results = A (pixels x K, sparse: 12 bytes per nonzero) + K x T traces
#               (C, S, YrA, F_dff: 4 x 4 bytes x K x T) + b, f
#
# "Anonymous" is what the kernel reports as RssAnon + RssShmem in
# /proc/PID/status, summed over the process and its worker processes: the
# page cache of memory-mapped movies is not counted (the kernel drops it
# under pressure). Of ``L``, the process already holds some when a stage
# plans its chunks: the interpreter and its libraries (about 0.2 GB with
# torch when the limit is set), and, as the run goes on, what the earlier
# steps keep (the components so far, compiled deconvolution code, thread
# pools: a one-photon run grew by 0.15 GB). Each plan takes what is held at
# that moment (at least the baseline measured when the limit was set), and
# the stages plan with the rest, less a small allowance for libraries loaded
# later and allocator slack:
#
#     host_budget() = L - held - slack
#
# The slack (64 MiB; ``GPU_CNMF_MEMORY_SLACK`` bytes) is what libraries take
# at run time after the limit is set and no stage plans for: numba's JIT
# compiler, FFT plans, thread pools and allocator arenas. A test that warms
# those up first measures a tighter baseline and sets it smaller.
#
# Without a limit the host budget is DEFAULT_MEMORY_FRACTION of the free
# memory (cgroup-aware), capped at _HOST_BUDGET_CAP; the device budget is
# that fraction of the device's free memory. The environment variable
# ``GPU_CNMF_MEMORY_BUDGET`` (bytes) sets the planning budget of every device
# directly (no baseline subtracted); tests use it to force chunking.

_UNITS = {"": 1, "b": 1,
          "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
          "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_HOST_SLACK = 64 * 1024**2
_LIMITS: dict[str, int] = {}        # "cpu" / "cuda:0" -> bytes the user allows
_SCALE: dict[str, float] = {}       # budget shrink after out-of-memory retries
_BASELINE: dict[str, int] = {}      # "cpu" -> anonymous bytes held when the limit was set


def parse_bytes(value, name: str = "memory_limit") -> int:
    """Bytes from an int, a float or a string such as ``"4GB"`` or ``"512 MiB"``.

    Decimal units (kB, MB, GB, TB: powers of 1000) and binary ones (KiB, MiB,
    GiB, TiB: powers of 1024) as dask and most tools spell them.

    Raises
    ------
    ParameterError
        ``value`` is not a positive size; the message names ``name``.
    """
    from .errors import ParameterError
    if isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name} = {value!r}: expected a size in bytes such as "
                             "4000000000 or '4GB'")
    if isinstance(value, (int, np.integer, float, np.floating)):
        nbytes = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m is None or m.group(2).lower() not in _UNITS:
            raise ParameterError(f"{name} = {value!r}: expected a size such as '4GB', "
                                 "'512MiB' or a number of bytes")
        nbytes = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise ParameterError(f"{name} = {value!r}: expected a size in bytes (int) or a "
                             f"string such as '4GB', got {type(value).__name__}")
    if not np.isfinite(nbytes) or nbytes < 1:
        raise ParameterError(f"{name} = {value!r}: expected a positive size")
    return int(nbytes)


def format_bytes(nbytes: float) -> str:
    """``1.5 GiB``-style text for messages and logs."""
    nbytes = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.2f} GiB"


def _key(device) -> str:
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        return f"cuda:{0 if device.index is None else device.index}"
    return device.type


def anon_memory(pid: int | str = "self") -> int:
    """Anonymous memory of one process in bytes: RssAnon + RssShmem.

    File-backed pages (memory-mapped movies, shared libraries) are left out:
    the kernel can drop them. 0 where /proc is not available.
    """
    total = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("RssAnon:", "RssShmem:")):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def set_memory_limit(limit, device=None) -> None:
    """Set the memory limit process-wide (``None`` removes it).

    Parameters
    ----------
    limit : int, float, str or None
        Bytes, or a string such as ``"4GB"`` (see :func:`parse_bytes`).
    device : torch.device or str, optional
        ``None`` or ``"cpu"``: the host limit, the process's anonymous memory
        apart from the results. A CUDA device: the bytes stages may plan to
        hold on that GPU.
    """
    key = _key(device)
    if limit is None:
        _LIMITS.pop(key, None)
        _BASELINE.pop(key, None)
        return
    nbytes = parse_bytes(limit, "memory_limit" if key == "cpu" else "device_memory_limit")
    _LIMITS[key] = nbytes
    if key == "cpu":
        return_freed_memory(fix_thresholds=True)
        _BASELINE[key] = anon_memory()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks from this size get their own mapping, returned to the system when freed.
_MMAP_THRESHOLD = 4 << 20


def return_freed_memory(fix_thresholds: bool = False) -> None:
    """Give memory the allocator holds but no longer uses back to the system.

    glibc raises its mmap threshold up to 32 MB after large blocks are freed,
    after which chunk-sized buffers come from heap arenas (one per thread)
    that keep freed memory: a limited run then sat 0.6 GB above what it
    used. ``fix_thresholds`` pins the threshold at 4 MiB (a memory limit
    is set: blocks of that size are mapped and unmapped, never kept);
    glibc's ``malloc_trim`` returns what the arenas hold now. Without glibc,
    nothing happens.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        if fix_thresholds:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _MMAP_THRESHOLD)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def get_memory_limit(device=None) -> int | None:
    """The user's limit for ``device`` (None: none set)."""
    return _LIMITS.get(_key(device))


@contextlib.contextmanager
def memory_limits(host=None, device_limit=None, device=None):
    """Set the host (and a device's) limit for a block, restoring them after.

    ``None`` leaves the current setting as it is.
    """
    saved = {k: (_LIMITS.get(k), _BASELINE.get(k)) for k in ("cpu", _key(device))}
    try:
        if host is not None:
            set_memory_limit(host)
        if device_limit is not None and device is not None and _key(device) != "cpu":
            set_memory_limit(device_limit, device)
        yield
    finally:
        for k, (lim, base) in saved.items():
            for table, v in ((_LIMITS, lim), (_BASELINE, base)):
                if v is None:
                    table.pop(k, None)
                else:
                    table[k] = v


def _slack() -> int:
    env = os.environ.get("GPU_CNMF_MEMORY_SLACK")
    return parse_bytes(env, "GPU_CNMF_MEMORY_SLACK") if env else _HOST_SLACK


def _env_budget() -> int | None:
    env = os.environ.get("GPU_CNMF_MEMORY_BUDGET")
    if env:
        return parse_bytes(env, "GPU_CNMF_MEMORY_BUDGET")
    return None


def host_budget() -> int:
    """Bytes of host memory a stage may plan to hold at once.

    The user's limit wins (less what the process holds now, at least the
    baseline measured when the limit was set; see the module notes), then
    ``GPU_CNMF_MEMORY_BUDGET``, then DEFAULT_MEMORY_FRACTION of the free
    memory capped at _HOST_BUDGET_CAP. At least 1.
    """
    return max(1, int(_host_budget() * _SCALE.get("cpu", 1.0)))


def _host_budget() -> int:
    limit = _LIMITS.get("cpu")
    if limit is not None:
        held = max(_BASELINE.get("cpu", 0), anon_memory())
        return max(1, limit - held - _slack())
    env = _env_budget()
    if env is not None:
        return env
    return max(1, int(min(free_memory("cpu") * DEFAULT_MEMORY_FRACTION, _HOST_BUDGET_CAP)))


def device_budget(device: torch.device | str = "cpu") -> int:
    """Bytes a stage may plan to hold at once on ``device``.

    The CPU's budget is :func:`host_budget`. For a GPU: the limit set for it
    (:func:`set_memory_limit`), then ``GPU_CNMF_MEMORY_BUDGET``, then
    DEFAULT_MEMORY_FRACTION of its free memory.
    """
    key = _key(device)
    if key == "cpu":
        return host_budget()
    limit = _LIMITS.get(key)
    if limit is None:
        limit = _env_budget()
    if limit is None:
        limit = int(free_memory(device) * DEFAULT_MEMORY_FRACTION)
    return max(1, int(limit * _SCALE.get(key, 1.0)))


def memory_budget(device: torch.device | str = "cpu",
                  fraction: float = DEFAULT_MEMORY_FRACTION,
                  memory_fact: float = 1.0) -> int:
    """:func:`device_budget` scaled by CaImAn's ``memory_fact`` (>1 grows it).

    ``fraction`` is kept for callers that pass it; the budgets already hold
    headroom, so it only matters relative to the default 0.5.
    """
    scale = float(fraction) / DEFAULT_MEMORY_FRACTION * float(memory_fact)
    return max(1, int(device_budget(device) * scale))


def require_budget(needed: int, *, stage: str, device: torch.device | str = "cpu",
                   budget: int | None = None) -> None:
    """Fail before any work when ``needed`` bytes (one chunk) exceed the budget.

    Raises
    ------
    MemoryBudgetError
        Naming the stage, the budget and the minimum it needs.
    """
    key = _key(device)
    from_limit = budget is None and key in _LIMITS
    if budget is None:
        budget = device_budget(device)
    if needed > budget:
        what = "memory_limit" if key == "cpu" else "device_memory_limit"
        extra, minimum = "", needed
        if from_limit:
            held = _LIMITS[key] - budget     # what the process holds, and slack
            if held > 0:
                extra = (f" (memory_limit {format_bytes(_LIMITS[key])} less the "
                         f"{format_bytes(held)} the process and its libraries hold)")
            minimum = needed + max(held, 0)
        raise MemoryBudgetError(
            f"{stage}: the memory budget on {key}, {format_bytes(budget)}{extra}, cannot hold "
            f"even one chunk, which needs {format_bytes(needed)}; raise {what} to at least "
            f"{format_bytes(minimum)}")


def frames_per_chunk(frame_shape: Sequence[int], *, itemsize: int = 4,
                     copies: float = 4.0, device: torch.device | str = "cpu",
                     budget: int | None = None, max_frames: int | None = None,
                     min_frames: int = 1, stage: str | None = None) -> int:
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
        The budget is ``budget`` bytes if given, else :func:`device_budget`.
    max_frames : int, optional
        Upper bound, e.g. the movie length.
    min_frames : int
        The fewest frames the stage can work with.
    stage : str, optional
        When given, a budget too small for ``min_frames`` frames raises
        :class:`~gpu_cnmf.errors.MemoryBudgetError` naming the stage (else
        the answer is just ``min_frames``).

    Returns
    -------
    int
        At least ``min_frames`` (and 1).
    """
    if budget is None:
        budget = device_budget(device)
    per_frame = int(np.prod(frame_shape)) * itemsize * copies
    if stage is not None:
        require_budget(int(per_frame * min_frames), stage=stage, device=device, budget=budget)
    n = max(1, int(min_frames), int(budget // max(per_frame, 1)))
    if max_frames is not None:
        n = max(1, min(n, int(max_frames)))
    return n


# ----------------------------------------------------------------------------
# Out-of-memory on the device: retry with half the chunk.

def run_stage(fn, *, stage: str, device, floor: int = 64 * 1024**2):
    """Run a whole stage ``fn()``; on a device out-of-memory error run it
    again with its memory budget halved (every chunk the stage sizes from
    :func:`device_budget` halves with it), down to ``floor`` bytes.

    Raises
    ------
    DeviceError
        Still out of memory with a budget of ``floor``: names the stage and
        the memory it needed.
    """
    key = _key(device)
    mib = 1024**2
    full = max(1, device_budget(device) // mib)        # the budget in MiB
    saved = _SCALE.get(key)

    def attempt(budget_mib):
        _SCALE[key] = (saved or 1.0) * budget_mib / full
        return fn()
    try:
        out, _ = oom_retry(attempt, full, stage=stage, floor=max(1, min(full, floor // mib)),
                           nbytes=mib, unit="MiB of budget")
    finally:
        if saved is None:
            _SCALE.pop(key, None)
        else:
            _SCALE[key] = saved
    return out


# Reads and writes of the movie, in elements (pixels x frames), so that a
# stage's passes over the movie are counted whatever the dtype: the
# pipeline divides the change over a stage by pixels x T.
_IO = {"read": 0, "written": 0}


def count_movie_io(read: int = 0, written: int = 0) -> None:
    """Record ``read`` / ``written`` movie elements (readers and writers of
    the movie call this; :func:`movie_io` reports the totals)."""
    _IO["read"] += int(read)
    _IO["written"] += int(written)


def movie_io() -> dict:
    """Totals so far: ``{'read': elements, 'written': elements}``."""
    return dict(_IO)


_INJECT: dict[str, int] = {}


def inject_oom(stage: str, times: int = 1) -> None:
    """Make the next ``times`` calls of ``stage`` under :func:`oom_retry` raise
    ``torch.cuda.OutOfMemoryError`` before they run (``stage="*"``: any stage).

    A fault-injection hook for tests on machines without a GPU; the
    environment variable ``GPU_CNMF_INJECT_OOM="stage:N,other:M"`` does the
    same in a child process. ``times=0`` clears it.
    """
    if times <= 0:
        _INJECT.pop(stage, None)
    else:
        _INJECT[stage] = int(times)


def _load_env_injections() -> None:
    env = os.environ.pop("GPU_CNMF_INJECT_OOM", "")
    for item in filter(None, (x.strip() for x in env.split(","))):
        stage, _, n = item.rpartition(":")
        if stage and n.isdigit():
            inject_oom(stage, int(n))


def _maybe_inject(stage: str) -> None:
    _load_env_injections()
    for key in (stage, "*"):
        left = _INJECT.get(key, 0)
        if left > 0:
            _INJECT[key] = left - 1
            if left == 1:
                _INJECT.pop(key)
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (injected for stage {stage!r})")


def is_oom(err: BaseException) -> bool:
    """True for a device out-of-memory error from torch or CuPy."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    cp = _cupy()
    if cp is not None:
        try:
            if isinstance(err, cp.cuda.memory.OutOfMemoryError):
                return True
        except AttributeError:
            pass
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def empty_cache() -> None:
    """Give cached device memory back (torch's and CuPy's pools)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cp = _cupy()
    if cp is not None:
        try:
            cp.get_default_memory_pool().free_all_blocks()
        except Exception:
            pass


def _asked(err) -> str:
    """The allocation an out-of-memory message names ("Tried to allocate 2.00 GiB")."""
    m = re.search(r"[Tt]ried to allocate ([0-9.]+ ?[KMGT]i?B)", str(err))
    return f" (its last allocation asked for {m.group(1)})" if m else ""


def oom_retry(fn, chunk: int, *, stage: str, floor: int = 1, nbytes=None, unit: str = ""):
    """Call ``fn(chunk)``; on a device out-of-memory error halve ``chunk`` and retry.

    Parameters
    ----------
    fn : callable
        Takes the chunk size (frames, pixels, components: the caller's unit)
        and does the work for it.
    chunk : int
        The first chunk size to try (from the budget).
    stage : str
        The stage's name, for the error message and fault injection.
    floor : int
        The smallest chunk worth trying.
    nbytes : callable or number, optional
        Device bytes a chunk needs: ``nbytes(chunk)``, or bytes per unit of
        chunk. Used in the error message.
    unit : str
        What ``chunk`` counts ("frames", "pixels"), for the messages.

    Returns
    -------
    (result, chunk_used)

    Raises
    ------
    DeviceError
        Still out of memory at ``floor``: names the stage and the bytes needed.
    """
    chunk = max(int(chunk), 1)
    floor = max(1, min(int(floor), chunk))
    while True:
        try:
            _maybe_inject(stage)
            return fn(chunk), chunk
        except Exception as err:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(err):
                raise
            empty_cache()
            if chunk <= floor:
                need = None
                if callable(nbytes):
                    need = nbytes(chunk)
                elif nbytes is not None:
                    need = float(nbytes) * chunk
                needed = f"about {format_bytes(need)}" if need is not None else "more than was free"
                u = f" {unit}" if unit else ""
                raise DeviceError(
                    f"{stage}: out of device memory even at the smallest chunk ({chunk}{u}); "
                    f"it needed {needed}{_asked(err)}. Free the GPU (other processes hold "
                    "memory on it), or run on the CPU (use_cuda=False)") from err
            new = max(floor, chunk // 2)
            log.warning("%s: out of device memory at chunk %d%s; retrying with %d", stage,
                        chunk, f" {unit}" if unit else "", new)
            chunk = new


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
