"""Where the patches of one movie are fitted: :func:`map_patches`.

Both patch drivers (two-photon CNMF in ``patches.py`` and CNMF-E) hand their
per-patch work here as a module-level function and a list of small, picklable
tasks (a :class:`MovieHandle` naming the movie, a region, the configuration:
never the movie itself), and get the results back in task order.

How the patches run
-------------------
- ``dview`` a ``dask.distributed.Client``: one task per patch on the
  cluster's workers (retried on another worker if one dies). Each worker
  opens the movie by path from a :class:`MovieHandle`, so the movie never
  travels through the scheduler; the memory map must therefore be on a
  filesystem the workers share (an in-memory movie is first written to a
  temporary memory map in ``tempfile.gettempdir()``).
- ``dview`` a ``multiprocessing`` pool or an ipyparallel view (what CaImAn
  users pass): its ``imap``/``map_sync``/``map``.
- otherwise ``n_processes > 1``: **threads in this process**, each patch's
  torch ops (which release the GIL) and numba kernels limited to
  ``cores // n_processes`` threads, so ``n_processes`` chooses how the cores
  are split between patches rather than starting processes.

Why threads and not processes: a ``spawn`` pool re-imports the user's
``__main__`` in every worker, which dies with ``BrokenProcessPool`` in a
script without an ``if __name__ == "__main__":`` guard and cannot pickle a
function defined in a notebook; a ``fork`` pool copies a process whose
OpenMP runtimes (torch's and numba's GNU OpenMP) are documented as not
fork-safe, and whose other threads (a notebook kernel's, a Dask client's)
may hold locks at the fork, and it does not exist on Windows (and is unsafe
on macOS). Threads need neither a guard nor pickling and share the movie
without copying it. Measured on the 2-core dev box under load
(``benchmarks/bench_patches.py``, 16 patches of a 128x128x400 movie,
figures in ``benchmarks/RESULTS.md``): one patch at a time with torch's two
threads 59 s, two threads of one torch thread each 13.6 s, a fork pool of
two processes 9.9 s. The fork pool was faster (the threads share the GIL
for the Python parts of a patch fit), but we chose threads because they
cannot crash or hang in any of the settings above. When numba's only
threading layer is ``workqueue`` (which aborts on concurrent calls) patches
run one after the other instead.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..backend import host_budget
from ..progress import progress

log = logging.getLogger("gpu_cnmf")

__all__ = ["map_patches", "MovieHandle", "movie_handle", "is_dask_client"]

# a worker process that dies mid-task (killed, out of memory) has its patch
# re-run this many times on another worker
DASK_RETRIES = 2


# ---------------------------------------------------------------------------
# the movie, by reference

@dataclass
class MovieHandle:
    """How a patch worker finds the movie: a memory-mapped file by path
    (``path``, byte ``offset``, ``dtype``, ``shape``), or, inside this
    process only, the array itself (``array``).

    ``layout`` is ``'pixels'`` for the (d, T) pixels x time matrix (then
    ``dims`` is the frame shape) or ``'frames'`` for a (T, d1, d2) movie.
    """

    layout: str
    dims: tuple
    path: str | None = None
    offset: int = 0
    dtype: str = "float32"
    shape: tuple = ()
    array: object = None
    _tmp_dir: str | None = None

    def open(self):
        """``(source, dims)`` for ``MovieMatrix(source, ..., dims=dims)``:
        ``dims`` is None for a (T, d1, d2) source."""
        if self.array is not None:
            src = self.array
        else:
            src = np.memmap(self.path, mode="r", dtype=np.dtype(self.dtype),
                            shape=tuple(self.shape), offset=int(self.offset), order="C")
        return src, (tuple(self.dims) if self.layout == "pixels" else None)

    def __getstate__(self):
        if self.array is not None:
            raise TypeError("MovieHandle: an in-memory movie cannot leave this process; "
                            "make it with movie_handle(..., by_path=True)")
        return self.__dict__.copy()

    def cleanup(self):
        """Remove the temporary memory map written for a cluster, if any."""
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None


def _file_view(arr):
    """``(path, offset)`` when C-contiguous ``arr`` lies in a memory-mapped
    file, else None."""
    if not arr.flags.c_contiguous:
        return None
    base = arr
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
        if not isinstance(base, np.ndarray):
            return None
    if getattr(base, "filename", None) is None:
        return None
    start = base.__array_interface__["data"][0]
    here = arr.__array_interface__["data"][0]
    if here < start or here + arr.nbytes > start + base.nbytes:
        return None
    return os.fspath(base.filename), int(base.offset) + (here - start)


def movie_handle(images, by_path=False, tmp_dir=None):
    """A :class:`MovieHandle` for ``images`` (what ``CNMF.fit`` received).

    Parameters
    ----------
    images : (T, d1, d2) array or memory map, or the Fortran-ordered view
        of a pixels x T memory map
    by_path : bool
        The handle must work in another process: a movie not already in a
        memory-mapped file is written to a temporary one (removed by
        :meth:`MovieHandle.cleanup`).
    tmp_dir : str, optional
        Where that temporary file goes (default ``tempfile.gettempdir()``;
        on a multi-machine cluster, a shared folder).
    """
    from .products import as_pixel_matrix

    src, layout, dims, T = as_pixel_matrix(images)
    at = _file_view(src)
    if at is not None:
        return MovieHandle(layout, tuple(dims), path=at[0], offset=at[1],
                           dtype=src.dtype.str, shape=tuple(src.shape))
    if not by_path:
        return MovieHandle(layout, tuple(dims), array=src)
    folder = tempfile.mkdtemp(prefix="gpu_cnmf_patches_", dir=tmp_dir)
    path = os.path.join(folder, "movie.npy")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=src.shape)
    step = max(1, (1 << 26) // max(1, int(np.prod(src.shape[1:])) * 4))
    for a in range(0, src.shape[0], step):   # 64 MiB at a time, never a whole copy
        out[a:a + step] = src[a:a + step]
    out.flush()
    offset = int(out.offset)
    del out
    log.info("patches: in-memory movie written to %s for the cluster's workers", path)
    return MovieHandle(layout, tuple(dims), path=path, offset=offset, dtype="<f4",
                       shape=tuple(src.shape), _tmp_dir=folder)


# ---------------------------------------------------------------------------
# mapping

def is_dask_client(obj) -> bool:
    """True for a ``dask.distributed.Client`` (checked without importing dask)."""
    return type(obj).__name__ == "Client" and type(obj).__module__.startswith("distributed")


def _threads_usable() -> bool:
    """False when numba would run its parallel kernels on the ``workqueue``
    layer, which aborts the process on concurrent calls from two threads."""
    try:
        import numba
        from numba.np.ufunc import parallel
        parallel._launch_threads()
        return numba.threading_layer() != "workqueue"
    except Exception:   # no numba, or an unknown layer: nothing to guard
        return True


class _Limited:
    """``fn`` run with torch's and numba's threads limited to ``n`` in the
    calling thread (both settings are per thread under OpenMP)."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, int(n)

    def __call__(self, task):
        import torch
        torch.set_num_threads(self.n)
        try:
            import numba
            numba.set_num_threads(min(self.n, numba.config.NUMBA_NUM_THREADS))
        except Exception:
            pass
        return self.fn(task)


def _map_threads(fn, tasks, n, desc):
    import torch

    cores = max(1, torch.get_num_threads())
    per = max(1, cores // n)
    out = [None] * len(tasks)
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="gpu_cnmf_patch") as ex:
        futs = {ex.submit(_Limited(fn, per), t): i for i, t in enumerate(tasks)}
        try:
            with progress(total=len(tasks), desc=desc, unit="patch") as bar:
                from concurrent.futures import as_completed
                for f in as_completed(futs):
                    out[futs[f]] = f.result()
                    bar.update()
        except BaseException:
            for f in futs:
                f.cancel()
            raise
        finally:
            # torch.set_num_threads also moves the process-wide pool size
            torch.set_num_threads(cores)
    return out


def _map_dask(client, fn, tasks, desc):
    from distributed import as_completed

    tag = uuid.uuid4().hex[:8]
    name = desc.replace(" ", "-").lower()
    futs = [client.submit(fn, t, key=f"{name}-{i}-{tag}", pure=False, retries=DASK_RETRIES)
            for i, t in enumerate(tasks)]
    index = {f.key: i for i, f in enumerate(futs)}
    out = [None] * len(tasks)
    try:
        with progress(total=len(tasks), desc=desc, unit="patch") as bar:
            for f in as_completed(futs):
                out[index[f.key]] = f.result()
                bar.update()
    except BaseException:
        client.cancel(futs)
        raise
    return out


def _map_pool(pool, fn, tasks, desc):
    if hasattr(pool, "imap"):                      # multiprocessing.Pool
        it = pool.imap(fn, tasks)
    elif hasattr(pool, "map_sync"):                # ipyparallel view
        it = pool.map_sync(fn, tasks)
    else:
        it = pool.map(fn, tasks)
    return list(progress(it, total=len(tasks), desc=desc, unit="patch"))


def map_patches(fn, tasks, *, n_processes=1, dview=None, desc="CNMF patches",
                task_bytes=None):
    """``[fn(t) for t in tasks]``, in order, with a progress bar and log lines.

    Parameters
    ----------
    fn : callable
        A module-level function (so that it pickles) of one task.
    tasks : list
        Small picklable descriptions of each patch's work.
    n_processes : int
        How many patches run at once on this machine (threads sharing the
        cores, see the module docstring).
    dview : optional
        A ``dask.distributed.Client``, a ``multiprocessing`` pool or an
        ipyparallel view to run the patches on; None runs them here.
    desc : str
        The stage's name in the bar and the log.
    task_bytes : int, optional
        Host memory one task holds at its peak: at most as many tasks run
        at once here as the memory budget holds (at least one).
    """
    tasks = list(tasks)
    if not tasks:
        return []
    if dview is not None:
        if is_dask_client(dview):
            return _map_dask(dview, fn, tasks, desc)
        return _map_pool(dview, fn, tasks, desc)
    n = min(int(n_processes or 1), len(tasks))
    if n > 1 and task_bytes:
        fit = max(1, int(host_budget() // max(int(task_bytes), 1)))
        if fit < n:
            log.info("%s: %d at a time (the memory budget holds %d of %.0f MB each)",
                     desc, fit, fit, task_bytes / 1e6)
            n = fit
    if n > 1 and _threads_usable():
        return _map_threads(fn, tasks, n, desc)
    return [fn(t) for t in progress(tasks, total=len(tasks), desc=desc, unit="patch")]
