"""Where the patches of one movie are fitted: :func:`map_patches`.

Both patch drivers (two-photon CNMF in ``patches.py`` and CNMF-E) hand their
per-patch work here as a module-level function and a list of small, picklable
tasks (a path to the memory map, a region, the configuration: never the
movie itself), and get the results back in task order.
"""
from __future__ import annotations

from ..progress import progress

__all__ = ["map_patches"]


def map_patches(fn, tasks, *, n_processes=1, dview=None, desc="CNMF patches"):
    """``[fn(t) for t in tasks]``, in order, with a progress bar and log lines.

    Parameters
    ----------
    fn : callable
        A module-level function (so that it pickles) of one task.
    tasks : list
        Small picklable descriptions of each patch's work.
    n_processes : int
        How many patches may run at once on this machine.
    dview : optional
        A ``dask.distributed.Client`` (or CaImAn's ``dview``) to run the
        patches on; None runs them here.
    desc : str
        The stage's name in the bar and the log.
    """
    tasks = list(tasks)
    return [fn(t) for t in progress(tasks, total=len(tasks), desc=desc, unit="patch")]
