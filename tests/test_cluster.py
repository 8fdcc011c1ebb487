"""Parallel patches (threads, Dask) and batches of recordings on a Dask cluster."""
import json
import os
import pickle
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
DIMS = (40, 40)


def _params(**groups):
    p = CNMFParams()
    p.change_params({"init": {"K": 5, "gSig": [3, 3]}, "temporal": {"p": 1},
                     "patch": {"rf": 12, "stride": 6, "only_init": False}})
    if groups:
        p.change_params(groups)
    return p


@pytest.fixture(scope="module")
def small_movie():
    mov, truth = make_movie("2p", dims=DIMS, n_frames=150, n_neurons=8, p=1, seed=1)
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
    assert len(pickle.dumps(h)) < 1000          # what a worker receives: no pixels
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
mov, _ = make_movie("2p", dims=(36, 36), n_frames=100, n_neurons=6, p=1, seed=2)
p = CNMFParams()
p.change_params({"init": {"K": 4, "gSig": [3, 3]}, "temporal": {"p": 1},
                 "patch": {"rf": 12, "stride": 6, "only_init": True}})
est = CNMF(n_processes=2, params=p).fit(mov).estimates
print("K", est.A.shape[1])
"""


# CNMF-E on patches, two at a time
_SCRIPT_1P = """
import numpy as np
from gpu_cnmf.cnmf import CNMF
from gpu_cnmf.params import CNMFParams
from gpu_cnmf.synthetic import make_movie
mov, _ = make_movie("1p", dims=(48, 48), n_frames=200, n_neurons=8, p=1, seed=2)
p = CNMFParams()
p.change_params({"init": {"K": None, "gSig": [3, 3], "gSiz": [13, 13], "method_init": "corr_pnr",
                          "nb": 0, "min_corr": 0.8, "min_pnr": 5, "ssub_B": 2,
                          "center_psf": True},
                 "temporal": {"p": 1}, "spatial": {"update_background_components": True},
                 "patch": {"rf": 16, "stride": 8, "only_init": True,
                           "low_rank_background": None}})
est = CNMF(n_processes=2, params=p).fit(mov).estimates
print("K", est.A.shape[1])
"""


@pytest.mark.parametrize("how", ["script", "-c", "script-1p"])
def test_parallel_patches_need_no_main_guard(tmp_path, how):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    if how.startswith("script"):
        script = tmp_path / "plain.py"
        script.write_text(_SCRIPT_1P if how.endswith("1p") else _SCRIPT)
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-c", _SCRIPT]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "K " in res.stdout and int(res.stdout.split("K ")[1]) > 0


@pytest.fixture(scope="module")
def serial_fit(small_movie):
    return CNMF(1, params=_params()).fit(small_movie[0]).estimates


def test_threaded_patches_equal_serial(small_movie, serial_fit):
    mov, truth = small_movie
    seq = serial_fit
    par = CNMF(2, params=_params()).fit(mov).estimates
    assert roi_f1(seq.A, par.A, DIMS)["f1"] >= 0.99
    assert roi_f1(truth.A, par.A, DIMS)["f1"] >= 0.6


# ---------------------------------------------------------------------------
# Dask: one cluster for the module

distributed = pytest.importorskip("distributed")

# small, fast pipeline settings for 40x40 movies (patches are tested above)
BATCH_PARAMS = {"p": 1, "nb": 1, "gSig": [3, 3], "rf": None, "K": 6,
                "max_shifts": [4, 4], "use_cnn": False}


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def movies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_movies")
    paths = []
    for seed in range(3):
        mov, truth = make_movie("2p", dims=(40, 40), n_frames=120, n_neurons=6, p=1, seed=seed)
        path = folder / f"rec{seed}.npy"
        np.save(path, mov.astype(np.float32))
        paths.append(path)
    return paths, truth.fr, truth.decay_time


def _batch_params(fr, decay_time):
    return CNMFParams(params_dict=dict(BATCH_PARAMS, fr=fr, decay_time=decay_time))


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory, client, movies):
    """A batch of three recordings; one of the workers dies (os._exit) on
    the first recording it gets."""
    from gpu_cnmf.pipeline import run_batch

    paths, fr, decay = movies
    out = tmp_path_factory.mktemp("batch_out")
    marker = out.parent / f"{out.name}_killed"
    # the workers get the fault-injection functions by value (this test
    # module need not be importable there)
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client.run(_install_killer, str(marker))
    res = run_batch(paths, _batch_params(fr, decay), out, client=client, progress_bar=False)
    client.run(_remove_killer)
    return res, out, marker


def _install_killer(marker):
    import os

    import gpu_cnmf.pipeline as pl

    orig = pl.run_pipeline

    def dying(*args, **kwargs):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return orig(*args, **kwargs)
        os.close(fd)
        os._exit(1)        # the worker process dies mid-task, once in the batch

    pl._orig_run_pipeline, pl.run_pipeline = orig, dying


def _remove_killer():
    import gpu_cnmf.pipeline as pl

    if hasattr(pl, "_orig_run_pipeline"):
        pl.run_pipeline = pl._orig_run_pipeline


def test_batch_matches_serial_runs_despite_a_killed_worker(batch_run, movies, tmp_path):
    from gpu_cnmf.io.results import load_results
    from gpu_cnmf.pipeline import run_pipeline

    res, out, marker = batch_run
    paths, fr, decay = movies
    assert marker.exists()                       # a worker did die mid-batch
    assert [r.status for r in res.rows] == ["done"] * 3, res.table()
    assert res.ok and len({r.worker for r in res.rows}) >= 1
    assert sorted(os.listdir(out)) == ["batch_summary.csv", "batch_summary.json",
                                       "rec0_results.hdf5", "rec1_results.hdf5",
                                       "rec2_results.hdf5"]
    for path, row in zip(paths, res.rows):
        serial = run_pipeline(path, _batch_params(fr, decay), tmp_path / f"{path.stem}.hdf5",
                              progress=False)
        est = load_results(out / f"{path.stem}_results.hdf5")["estimates"]
        assert row.components == serial.n_components == est["A"].shape[1]
        assert row.frames == 120 and row.accepted == serial.n_accepted
        if serial.n_components:
            assert roi_f1(serial.estimates.A, est["A"], (40, 40))["f1"] >= 0.99
    summary = json.loads((out / "batch_summary.json").read_text())
    assert [s["status"] for s in summary] == ["done"] * 3


def test_rerun_skips_finished_and_force_or_new_params_redo(batch_run, client, movies):
    from gpu_cnmf.pipeline import run_batch

    res, out, _ = batch_run
    paths, fr, decay = movies
    stamp = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out) if p.endswith(".hdf5")}
    again = run_batch(paths, _batch_params(fr, decay), out, client=client, progress_bar=False)
    assert [r.status for r in again.rows] == ["skipped"] * 3
    assert [r.components for r in again.rows] == [r.components for r in res.rows]
    assert stamp == {p: os.stat(out / p).st_mtime_ns for p in stamp}
    # a changed parameter for one recording (override table) redoes only that one
    table = out.parent / f"{out.name}_overrides.csv"
    table.write_text('recording,merge.thr\nrec1,0.9\n')
    third = run_batch(paths, _batch_params(fr, decay), out, client=client, overrides=table,
                      progress_bar=False)
    assert [r.status for r in third.rows] == ["skipped", "done", "skipped"]


def test_corrupt_movie_is_reported_and_others_complete(tmp_path, client, movies, capsys):
    from gpu_cnmf.cli import main

    paths, fr, decay = movies
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"\x93NUMPY garbage, not a movie")
    (tmp_path / "p.json").write_text(json.dumps(dict(BATCH_PARAMS, fr=fr, decay_time=decay)))
    out = tmp_path / "out"
    rc = main(["batch", str(paths[0]), str(bad), "--params", str(tmp_path / "p.json"),
               "--out-dir", str(out), "--scheduler", client.scheduler.address, "--quiet"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "broken.npy" in text and "failed" in text
    rows = {Path(r["recording"]).name: r for r in
            json.loads((out / "batch_summary.json").read_text())}
    assert rows["rec0.npy"]["status"] == "done"
    assert rows["broken.npy"]["status"] == "failed" and "broken.npy" in rows["broken.npy"]["error"]
    assert sorted(os.listdir(out)) == ["batch_summary.csv", "batch_summary.json",
                                       "rec0_results.hdf5"]


def test_cnmf_on_dask_workers_equals_serial(tmp_path, client, small_movie, serial_fit):
    mov, _ = small_movie
    fname = save_memmap([mov], base_name=str(tmp_path / "m"), order="C")
    Yr, dims, T = load_memmap(fname)
    images = np.reshape(Yr.T, [T] + list(dims), order="F")
    seq = serial_fit
    # the workers open the memory map by path (the movie is not sent)
    dist = CNMF(2, params=_params(), dview=client).fit(images).estimates
    assert dist.A.shape == seq.A.shape
    assert roi_f1(seq.A, dist.A, DIMS)["f1"] >= 0.99
    np.testing.assert_allclose(dist.C, seq.C, rtol=1e-3, atol=1e-3 * np.abs(seq.C).max())


def test_run_with_scheduler_fits_patches_on_the_cluster(tmp_path, client, movies, capsys):
    from gpu_cnmf.cli import main
    from gpu_cnmf.io.results import load_results

    paths, fr, decay = movies
    params = dict(BATCH_PARAMS, fr=fr, decay_time=decay, rf=12, stride=6, K=3)
    (tmp_path / "p.json").write_text(json.dumps(params))
    out = tmp_path / "res" / "r.hdf5"
    out.parent.mkdir()
    rc = main(["run", str(paths[1]), "--params", str(tmp_path / "p.json"), "--out", str(out),
               "--scheduler", client.scheduler.address, "--quiet"])
    assert rc == 0, capsys.readouterr().err
    # the memory map the workers read was made beside the results, then removed
    assert os.listdir(out.parent) == ["r.hdf5"]
    est = load_results(out)["estimates"]
    assert est["A"].shape[0] == 40 * 40 and est["A"].shape[1] > 0
