"""Parallel patches (threads, Dask) and batches of recordings on a Dask cluster."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_cnmf.cnmf import CNMF
from gpu_cnmf.cnmf.dispatch import map_patches, movie_handle
from gpu_cnmf.io import load_memmap, save_memmap
from gpu_cnmf.metrics import roi_f1
from gpu_cnmf.params import CNMFParams
from gpu_cnmf.synthetic import make_movie

ROOT = Path(__file__).resolve().parents[1]
DIMS = (48, 48)


def _params(**groups):
    p = CNMFParams()
    p.change_params({"init": {"K": 5, "gSig": [3, 3]}, "temporal": {"p": 1},
                     "patch": {"rf": 12, "stride": 6, "only_init": False}})
    if groups:
        p.change_params(groups)
    return p


@pytest.fixture(scope="module")
def small_movie():
    mov, truth = make_movie("2p", dims=DIMS, n_frames=200, n_neurons=10, p=1, seed=1)
    return np.ascontiguousarray(mov, dtype=np.float32), truth


# ---------------------------------------------------------------------------
# map_patches on this machine

def _probe(task):
    import threading
    return task, threading.get_ident(), torch.get_num_threads()


def test_map_patches_threads_keep_order_and_split_cores():
    cores = torch.get_num_threads()
    out = map_patches(_probe, list(range(6)), n_processes=2)
    assert [o[0] for o in out] == list(range(6))
    assert all(o[2] == max(1, cores // 2) for o in out)
    assert torch.get_num_threads() == cores          # restored for the caller
    serial = map_patches(_probe, [0, 1], n_processes=1)
    assert {o[1] for o in serial} == {__import__("threading").get_ident()}


def test_movie_handle_reads_memmap_by_path(tmp_path, small_movie):
    mov, _ = small_movie
    fname = save_memmap([mov], base_name=str(tmp_path / "m"), order="C")
    Yr, dims, T = load_memmap(fname)
    images = np.reshape(Yr.T, [T] + list(dims), order="F")
    h = movie_handle(images, by_path=True)
    assert h.array is None and h.path == str(Path(fname)) and h._tmp_dir is None
    src, d = h.open()
    np.testing.assert_array_equal(np.asarray(src), np.asarray(Yr))
    assert d == tuple(dims)
    # an in-memory movie is written to a temporary memory map, removed after
    h2 = movie_handle(mov, by_path=True)
    src2, d2 = h2.open()
    assert d2 is None
    np.testing.assert_array_equal(np.asarray(src2), mov)
    h2.cleanup()
    assert not Path(h2.path).exists()


_SCRIPT = """
import numpy as np
from gpu_cnmf.cnmf import CNMF
from gpu_cnmf.params import CNMFParams
from gpu_cnmf.synthetic import make_movie
mov, _ = make_movie("2p", dims=(48, 48), n_frames=150, n_neurons=8, p=1, seed=2)
p = CNMFParams()
p.change_params({"init": {"K": 4, "gSig": [3, 3]}, "temporal": {"p": 1},
                 "patch": {"rf": 12, "stride": 6, "only_init": True}})
est = CNMF(n_processes=2, params=p).fit(mov).estimates
print("K", est.A.shape[1])
"""


@pytest.mark.parametrize("how", ["script", "-c"])
def test_parallel_patches_need_no_main_guard(tmp_path, how):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    if how == "script":
        script = tmp_path / "plain.py"
        script.write_text(_SCRIPT)
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-c", _SCRIPT]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "K " in res.stdout and int(res.stdout.split("K ")[1]) > 0


def test_threaded_patches_equal_serial(small_movie):
    mov, truth = small_movie
    p = _params()
    seq = CNMF(1, params=p).fit(mov).estimates
    par = CNMF(2, params=p).fit(mov).estimates
    assert roi_f1(seq.A, par.A, DIMS)["f1"] >= 0.99
    assert roi_f1(truth.A, par.A, DIMS)["f1"] >= 0.6
