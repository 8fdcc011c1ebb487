"""Hardware limits the stages are measured against, each measured once.

- host memory bandwidth: a large NumPy copy (bytes read + bytes written per
  second, best of a few repeats);
- device memory bandwidth: a large device-to-device ``Tensor.copy_`` on the
  GPU, counted the same way;
- PCIe: pinned host to device and device to host copies;
- disk: a file is written in 8 MiB blocks and ``fsync``'d (write speed),
  then read back bypassing the page cache: with ``O_DIRECT`` where the file
  system allows it, else after ``posix_fadvise(POSIX_FADV_DONTNEED)`` has
  dropped it from the cache. The method used is recorded with the figure;
  "cached" means neither worked and the figure is the page cache's.

Every probe returns a plain dict (``bytes_per_s``, ``bytes``, ``seconds``,
``method``) so it goes straight into the JSON.
"""
from __future__ import annotations

import mmap
import os
import platform
import shutil
import time

import numpy as np
import torch

_BLOCK = 8 << 20


def _best(fn, repeats: int) -> float:
    """Shortest of ``repeats`` timed calls of ``fn`` (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def host_memory_bandwidth(n_bytes: int = 256 << 20, repeats: int = 3) -> dict:
    """Bytes per second of a large host copy (read + write counted)."""
    n = max(1, n_bytes // 4)
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    sec = _best(lambda: np.copyto(dst, src), repeats)
    moved = 2 * src.nbytes
    return {"bytes_per_s": moved / sec, "bytes": moved, "seconds": sec,
            "method": f"numpy copy of {src.nbytes >> 20} MiB, read + write counted, "
                      f"best of {repeats}"}


def device_memory_bandwidth(device: torch.device, n_bytes: int = 1 << 30,
                            repeats: int = 5) -> dict:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    n = max(1, n_bytes // 4)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        torch.cuda.synchronize(device)
    sec = _best(copy, repeats)
    moved = 2 * src.numel() * 4
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes_per_s": moved / sec, "bytes": moved, "seconds": sec,
            "method": f"torch device copy of {n * 4 >> 20} MiB, read + write counted, "
                      f"best of {repeats}"}


def pcie_bandwidth(device: torch.device, n_bytes: int = 512 << 20, repeats: int = 3) -> dict:
    """Pinned host <-> device copy speeds; the slower direction is the limit."""
    n = max(1, n_bytes // 4)
    host = torch.ones(n, dtype=torch.float32).pin_memory()
    dev = torch.empty(n, dtype=torch.float32, device=device)

    def h2d():
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize(device)

    def d2h():
        host.copy_(dev, non_blocking=True)
        torch.cuda.synchronize(device)
    t_in, t_out = _best(h2d, repeats), _best(d2h, repeats)
    nb = n * 4
    del host, dev
    torch.cuda.empty_cache()
    return {"bytes_per_s": nb / max(t_in, t_out), "h2d_bytes_per_s": nb / t_in,
            "d2h_bytes_per_s": nb / t_out, "bytes": nb, "seconds": max(t_in, t_out),
            "method": f"pinned {nb >> 20} MiB copies each way, best of {repeats}; "
                      "the slower direction"}


def _write_file(path: str, n_bytes: int) -> float:
    """Write ``n_bytes`` of non-zero data and fsync; seconds taken."""
    block = np.frombuffer(np.random.default_rng(0).bytes(_BLOCK), np.uint8)
    t = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        left = n_bytes
        while left > 0:
            k = min(left, _BLOCK)
            fh.write(block[:k].data)
            left -= k
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - t


def _read_direct(path: str) -> float:
    """Read the file with O_DIRECT into a page-aligned buffer; seconds."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, _BLOCK)   # anonymous maps are page aligned
    try:
        t = time.perf_counter()
        while os.readv(fd, [buf]) > 0:
            pass
        return time.perf_counter() - t
    finally:
        buf.close()
        os.close(fd)


def _read_plain(path: str) -> float:
    buf = bytearray(_BLOCK)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass
    return time.perf_counter() - t


def _drop_cache(path: str) -> bool:
    """Ask the kernel to forget the file's cached pages (clean after fsync)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def disk_speed(folder: str, n_bytes: int = 1 << 30) -> dict:
    """Write then read a file of ``n_bytes`` in ``folder``, past the page cache.

    Returns ``{"read": {...}, "write": {...}}``; the file is removed. The size
    is reduced to a quarter of the free space when the disk is small.
    """
    free = shutil.disk_usage(folder).free
    n_bytes = int(max(_BLOCK, min(n_bytes, free // 4)) // _BLOCK * _BLOCK)
    path = os.path.join(folder, f".gpu_cnmf_disk_probe_{os.getpid()}")
    try:
        t_w = _write_file(path, n_bytes)
        method = None
        t_r = None
        if hasattr(os, "O_DIRECT"):
            try:
                t_r = _read_direct(path)
                method = "O_DIRECT read in 8 MiB blocks"
            except OSError:
                t_r = None
        if t_r is None:
            dropped = _drop_cache(path)
            t_r = _read_plain(path)
            method = ("read after posix_fadvise(DONTNEED) dropped the file from the page cache"
                      if dropped else "cached: plain read, the page cache could not be bypassed")
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return {"read": {"bytes_per_s": n_bytes / t_r, "bytes": n_bytes, "seconds": t_r,
                     "method": method, "folder": os.path.abspath(folder)},
            "write": {"bytes_per_s": n_bytes / t_w, "bytes": n_bytes, "seconds": t_w,
                      "method": "8 MiB writes then fsync", "folder": os.path.abspath(folder)}}


def machine_info(device_kinds) -> dict:
    """What ran the bench: CPU, cores, RAM, torch, and the GPU when used."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "ram_bytes": _ram_total(), "cuda_available": torch.cuda.is_available(),
            # other jobs' load moves CPU figures: recorded with them
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if "cuda" in device_kinds and torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        info.update(gpu=prop.name, gpu_memory_bytes=int(prop.total_memory),
                    cuda=torch.version.cuda)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_total() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
