"""CaImAn's ``caiman.cluster``: ``setup_cluster`` and ``stop_server``.

gpu_cnmf needs no ipyparallel or multiprocessing pool, so no
``if __name__ == '__main__':`` guard is ever needed. What each ``backend``
does:

- ``'multiprocessing'``, ``'local'``, ``'single'`` (or ``single_thread=True``):
  returns ``(None, None, n_processes)``. ``dview`` is None; pass
  ``n_processes`` to ``CNMF(n_processes=...)``, which fits patches that many
  at a time. ``'single'``/``single_thread`` give ``n_processes = 1``.
- ``'dask'`` (also ``'distributed'``): a ``dask.distributed`` ``LocalCluster``
  of ``n_processes`` single-threaded workers in this process (threads, so
  still no main guard) and its ``Client`` as ``dview``; returns
  ``(cluster, client, n_processes)``. Needs ``dask[distributed]``.
- ``'ipyparallel'``, ``'SLURM'``: NotImplementedError (use ``'dask'``, or a
  ``dask.distributed.Client`` of your own cluster as ``dview``).
"""
from __future__ import annotations

import logging
import os

from ..errors import ParameterError

log = logging.getLogger(__name__)

__all__ = ["setup_cluster", "stop_server"]

_LOCAL = ("multiprocessing", "local", "single")
_DASK = ("dask", "distributed")


def _default_processes():
    n = os.cpu_count() or 1
    return max(1, n - 1)


def setup_cluster(backend="multiprocessing", n_processes=None, single_thread=False,
                  ignore_preexisting=False, maxtasksperchild=None):
    """Parallel workers the CaImAn way: returns ``(c, dview, n_processes)``
    (see the module docstring for each ``backend``). ``ignore_preexisting``
    and ``maxtasksperchild`` concern process pools and have nothing to act on
    here."""
    if n_processes is not None and (int(n_processes) != n_processes or n_processes < 1):
        raise ParameterError(f"n_processes: expected a positive integer or None, got "
                             f"{n_processes!r}")
    if backend in ("ipyparallel", "SLURM"):
        raise NotImplementedError(f"setup_cluster(backend={backend!r}) is not supported; "
                                  "nearest: backend='dask', or pass a dask.distributed.Client "
                                  "connected to your cluster as dview")
    if backend not in _LOCAL + _DASK:
        raise ParameterError(f"backend: expected one of {', '.join(map(repr, _LOCAL + _DASK))}, "
                             f"got {backend!r}")
    if single_thread or backend == "single":
        return None, None, 1
    n = int(n_processes) if n_processes is not None else _default_processes()
    if backend in _DASK:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as err:
            raise ParameterError("setup_cluster(backend='dask') needs dask[distributed]: "
                                 "pip install 'dask[distributed]'") from err
        # threads (no main guard); the dashboard on a free port, not 8787
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=False,
                               dashboard_address=":0")
        return cluster, Client(cluster), n
    return None, None, n


def stop_server(ipcluster="ipcluster", pdir=None, profile=None, dview=None):
    """Close what :func:`setup_cluster` started: a dask ``Client`` given as
    ``dview`` is closed together with its cluster. With ``dview=None`` there
    is nothing to stop (no server runs)."""
    if dview is None:
        return
    close = getattr(dview, "close", None)
    cluster = getattr(dview, "cluster", None)
    if callable(close):
        close()
    if cluster is not None and callable(getattr(cluster, "close", None)):
        cluster.close()
    terminate = getattr(dview, "terminate", None)   # a multiprocessing pool, if one was passed
    if callable(terminate) and not callable(close):
        terminate()
