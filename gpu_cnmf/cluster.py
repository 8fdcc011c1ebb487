"""Dask clusters for batches and patches: :func:`cluster_client`.

``dask[distributed]`` is an optional extra (``pip install "gpu_cnmf[dask]"``);
nothing here imports it at package import time. :func:`cluster_client`
connects to a scheduler the user started (``dask scheduler`` /
``dask worker``, dask-jobqueue, dask-cloudprovider: any address), or starts
one on this machine: a ``LocalCUDACluster`` (one worker per visible GPU)
when asked for CUDA and ``dask-cuda`` is installed, else a ``LocalCluster``
of worker processes, each with one task at a time and ``cores // workers``
torch threads.

Worker processes are started with ``multiprocessing``'s ``spawn``, which
re-runs the parent's script in each worker unless it is guarded by
``if __name__ == "__main__":``. So that a plain script can call
``run_batch`` (the script would otherwise run again in every worker), the
local cluster runs with ``__main__``'s file hidden from the workers (while
the batch runs, no code of the script does): they import gpu_cnmf, never
the user's script.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

from .errors import OptionalDependencyError, ParameterError

log = logging.getLogger("gpu_cnmf")

__all__ = ["have_dask", "require_dask", "cluster_client", "dashboard_link", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "gpu_cnmf[dask]"'


def have_dask() -> bool:
    """Whether ``dask.distributed`` can be imported."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def require_dask(what: str):
    """The ``distributed`` module, or an error saying how to install it."""
    try:
        import distributed
    except ImportError as err:
        raise OptionalDependencyError(f"{what} needs dask.distributed: {INSTALL_HINT}") from err
    return distributed


def dashboard_link(client) -> str | None:
    """The Dask dashboard's address, or None when the cluster has none."""
    try:
        return client.dashboard_link
    except Exception:   # no bokeh, or a scheduler without a dashboard
        return None


@contextlib.contextmanager
def _workers_skip_main():
    """Hide ``__main__.__file__`` (a plain script's path) while worker
    processes start, so that ``spawn`` does not re-run the script in them."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if main is None or path is None or spec is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def local_threads(n_workers: int) -> int:
    """Torch threads per local worker: the cores shared evenly."""
    return max(1, (os.cpu_count() or 1) // max(1, int(n_workers)))


def _local_cluster(n_workers, use_cuda):
    distributed = require_dask("a local Dask cluster")
    if use_cuda:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            log.warning("dask-cuda is not installed (pip install dask-cuda): starting a plain "
                        "LocalCluster; its workers share the visible GPUs")
        else:
            return LocalCUDACluster(threads_per_worker=1)
    if n_workers is None:
        n_workers = os.cpu_count() or 1
    n_workers = int(n_workers)
    if n_workers < 1:
        raise ParameterError(f"workers: expected 1 or more worker processes, got {n_workers}")
    n = str(local_threads(n_workers))
    env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
           "NUMBA_NUM_THREADS": n}
    return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                    env=env, dashboard_address=":0")


@contextlib.contextmanager
def cluster_client(scheduler=None, n_workers=None, use_cuda=False):
    """A ``dask.distributed.Client`` for the duration of a ``with`` block.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) or a scheduler
        file (``.json``); the cluster is the user's and stays up.
    n_workers : int, optional
        Without ``scheduler``: worker processes on this machine (default:
        one per core).
    use_cuda : bool
        Without ``scheduler``: one worker per visible GPU (dask-cuda's
        ``LocalCUDACluster``).

    The cluster started here is closed on leaving the block, also on
    Ctrl-C or an error.
    """
    distributed = require_dask("running on a Dask cluster")
    if scheduler is not None:
        try:
            if str(scheduler).endswith(".json"):
                client = distributed.Client(scheduler_file=str(scheduler), timeout="30s")
            else:
                client = distributed.Client(str(scheduler), timeout="30s")
        except OSError as err:
            raise ParameterError(f"--scheduler {scheduler}: cannot connect ({err})") from err
        try:
            yield client
        finally:
            client.close()
        return
    # hidden for the cluster's whole life: a worker restarted after a crash
    # is spawned again
    with _workers_skip_main():
        cluster = _local_cluster(n_workers, use_cuda)
        try:
            client = distributed.Client(cluster)
        except BaseException:
            cluster.close()
            raise
        try:
            yield client
        finally:
            client.close()
            cluster.close()
