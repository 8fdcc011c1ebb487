"""The ``gpu-cnmf run`` / ``report`` command line and the pipeline behind it:
every user error is one clear line with no traceback and no output left
behind; a full run on a synthetic movie finds the true neurons."""
import json
import os
import sys
import tempfile

import numpy as np
import pytest
import tifffile
import torch

from gpu_cnmf.cli import main
from gpu_cnmf.io.results import load_results
from gpu_cnmf.params import CNMFParams

# CNMF on 64x64 patches of 41x41 (rf=20) with overlaps of 8: a quick, reliable
# setting for the 10 neurons of the test movie (gSig ~ their radius)
RUN_PARAMS = {"p": 1, "nb": 1, "gSig": [5, 5], "rf": 20, "stride": 8, "K": 4,
              "merge_thr": 0.85, "max_shifts": [6, 6], "strides": [32, 32],
              "overlaps": [12, 12]}


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc, err, *names, after_stages=False):
    """One line, ``gpu-cnmf: error: ...`` naming ``names``; with
    ``after_stages`` (an error only a stage's pass over the movie finds,
    e.g. a NaN frame) the stages' progress lines may come before it."""
    assert rc != 0
    lines = err.strip().splitlines()
    if after_stages:
        assert all("gpu-cnmf" in line for line in lines[:-1]), err
        lines = lines[-1:]
    assert len(lines) == 1, err
    assert lines[0].startswith("gpu-cnmf: error: ")
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.fixture
def small_tif(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, rng.random((20, 24, 24)).astype(np.float32))
    return path


def _listing(folder):
    return sorted(os.listdir(folder))


@pytest.fixture
def bad_inputs(tmp_path):
    """Files that must each be refused, by name."""
    rng = np.random.default_rng(1)
    (tmp_path / "notes.txt").write_text("not a movie")
    (tmp_path / "garbage.tif").write_bytes(b"garbage, not a TIFF")
    (tmp_path / "zero.tif").write_bytes(b"")
    np.save(tmp_path / "empty.npy", np.zeros((0, 24, 24), np.float32))
    tifffile.imwrite(tmp_path / "one.tif", rng.random((1, 24, 24)).astype(np.float32))
    nan = rng.random((30, 24, 24)).astype(np.float32)
    nan[17, 3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    np.save(tmp_path / "flat.npy", rng.random((30, 24)).astype(np.float32))
    return tmp_path


@pytest.mark.parametrize("name, expect", [
    ("missing.tif", "not found"),
    ("notes.txt", "unsupported movie format"),
    ("garbage.tif", "TIFF"),
    ("zero.tif", "TIFF"),
    ("empty.npy", "empty"),
    ("one.tif", "1 frame"),
    ("nan.tif", "frame 17"),
    ("flat.npy", "dimensions"),
])
def test_bad_movie(bad_inputs, capsys, name, expect):
    before = _listing(bad_inputs)
    out = bad_inputs / "r.hdf5"
    rc, stdout, err = run_cli(capsys, "run", bad_inputs / name, "--out", out)
    # NaN frames are found by motion correction's pass, not by a pass of
    # their own before it
    assert_user_error(rc, err, name, expect, after_stages=name == "nan.tif")
    assert _listing(bad_inputs) == before


def test_second_movie_bad(bad_inputs, small_tif, capsys):
    rc, _, err = run_cli(capsys, "run", small_tif, bad_inputs / "nan.tif",
                         "--out", bad_inputs / "r.hdf5")
    assert_user_error(rc, err, "nan.tif", "frame 17", after_stages=True)
    assert not (bad_inputs / "r.hdf5").exists()


@pytest.mark.parametrize("text, names", [
    ('{"fr": 30,', ["p.json", "not valid JSON"]),
    ('[1, 2]', ["p.json", "JSON object"]),
    ('{"gsig": [3, 3]}', ["p.json", "gsig", "gSig"]),
    ('{"init": {"K": "many"}}', ["p.json", "init.K"]),
    ('{"fr": -5}', ["p.json", "data.fr"]),
    ('{"motion": {"max_shift": [4, 4]}}', ["p.json", "max_shift"]),
])
def test_bad_params_file(tmp_path, small_tif, capsys, text, names):
    (tmp_path / "p.json").write_text(text)
    before = _listing(tmp_path)
    rc, _, err = run_cli(capsys, "run", small_tif, "--params", tmp_path / "p.json",
                         "--out", tmp_path / "r.hdf5")
    assert_user_error(rc, err, *names)
    assert _listing(tmp_path) == before


def test_missing_params_file(tmp_path, small_tif, capsys):
    rc, _, err = run_cli(capsys, "run", small_tif, "--params", tmp_path / "nope.json")
    assert_user_error(rc, err, "nope.json", "not found")


def test_params_dims_mismatch(tmp_path, small_tif, capsys):
    (tmp_path / "p.json").write_text('{"dims": [30, 30]}')
    rc, _, err = run_cli(capsys, "run", small_tif, "--params", tmp_path / "p.json",
                         "--out", tmp_path / "r.hdf5")
    assert_user_error(rc, err, "data.dims", "small.tif")


def test_output_folder_missing(tmp_path, small_tif, capsys):
    rc, _, err = run_cli(capsys, "run", small_tif, "--out", tmp_path / "no" / "r.hdf5")
    assert_user_error(rc, err, "r.hdf5", "does not exist")


def test_output_would_overwrite_input(tmp_path, small_tif, capsys):
    rc, _, err = run_cli(capsys, "run", small_tif, "--out", small_tif)
    assert_user_error(rc, err, "small.tif", "overwrite")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU is there")
def test_use_cuda_without_gpu(tmp_path, small_tif, capsys):
    rc, _, err = run_cli(capsys, "run", small_tif, "--use-cuda", "--out", tmp_path / "r.hdf5")
    assert_user_error(rc, err, "use_cuda")
    assert not (tmp_path / "r.hdf5").exists()


def test_report_errors(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    rc, _, err = run_cli(capsys, "report", tmp_path / "missing.hdf5")
    assert_user_error(rc, err, "missing.hdf5", "not found")
    (tmp_path / "text.hdf5").write_text("no")
    rc, _, err = run_cli(capsys, "report", tmp_path / "text.hdf5")
    assert_user_error(rc, err, "text.hdf5")


def test_report_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    rc, _, err = run_cli(capsys, "report", tmp_path / "r.hdf5", "--out-dir", tmp_path / "pics")
    assert_user_error(rc, err, "gpu_cnmf[report]")
    assert _listing(tmp_path) == []


def test_failure_mid_pipeline_leaves_nothing(tmp_path, small_tif, monkeypatch):
    """A crash inside a stage: no results file, the temporary memmaps gone."""
    from gpu_cnmf.cnmf import CNMF
    from gpu_cnmf.pipeline import run_pipeline

    def boom(self, images, *a, **k):
        raise RuntimeError("simulated crash in CNMF")

    monkeypatch.setattr(CNMF, "fit", boom)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(RuntimeError, match="simulated"):
        run_pipeline(small_tif, CNMFParams(params_dict={"gSig": [2, 2], "K": 2}),
                     tmp_path / "r.hdf5", progress=False, work_dir=work)
    assert not (tmp_path / "r.hdf5").exists()
    assert _listing(work) == []
    assert _listing(tmp_path) == ["small.tif", "work"]


# ---------------------------------------------------------------------------
# end to end

@pytest.fixture(scope="module")
def truth_run(tmp_path_factory):
    """``gpu-cnmf run`` on a synthetic 2p movie with rigid motion."""
    from gpu_cnmf.synthetic import make_movie

    folder = tmp_path_factory.mktemp("e2e")
    movie, truth = make_movie("2p", dims=(64, 64), n_frames=300, n_neurons=10,
                              motion="rigid", seed=0)
    tif = folder / "movie.tif"
    tifffile.imwrite(tif, movie)
    params = dict(RUN_PARAMS, fr=truth.fr, decay_time=truth.decay_time)
    (folder / "p.json").write_text(json.dumps(params))
    work = folder / "tmp"
    work.mkdir()
    old = tempfile.tempdir
    tempfile.tempdir = str(work)        # where run_pipeline makes its temporary folder
    try:
        rc = main(["run", str(tif), "--params", str(folder / "p.json"), "--quiet"])
    finally:
        tempfile.tempdir = old
    return folder, truth, rc, work


def test_run_end_to_end(truth_run, capsys):
    from gpu_cnmf.metrics import roi_f1

    folder, truth, rc, work = truth_run
    assert rc == 0
    out = folder / "movie_results.hdf5"
    assert out.is_file()
    assert _listing(work) == []                                    # memmaps removed
    assert not [f for f in os.listdir(folder) if f.endswith(".mmap")]
    res = load_results(out)
    est = res["estimates"]
    good = est["idx_components"]
    assert len(good) + len(est["idx_components_bad"]) == est["A"].shape[1]
    score = roi_f1(truth.A, est["A"][:, good], est["dims"])
    assert score["f1"] >= 0.8, score
    # registration accuracy is test_motion's business; here: the shifts made it
    shifts = res["motion"]["shifts_rig"]
    assert shifts.shape == (300, 2) and np.isfinite(shifts).all()
    assert res["motion"]["pw_rigid"] is False
    assert res["params"].data["fnames"] == [str(folder / "movie.tif")]
    assert res["params"].init["gSig"] == [5, 5]
    assert est["Cn"].shape == (64, 64)
    assert set(res["extra"]["summary_images"]) == {"mean", "max", "std"}


def test_report_end_to_end(truth_run, capsys):
    pytest.importorskip("matplotlib")
    folder, *_ = truth_run
    pics = folder / "pics"
    rc, out, err = run_cli(capsys, "report", folder / "movie_results.hdf5", "--out-dir", pics)
    assert rc == 0, err
    paths = out.split()
    assert len(paths) == 2 and all(p.endswith(".png") for p in paths)
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(pics)) == ["movie_results_contours.png", "movie_results_traces.png"]


def test_keep_memmap(tmp_path, capsys):
    from gpu_cnmf.io import load_memmap
    from gpu_cnmf.synthetic import make_movie

    movie, truth = make_movie("2p", dims=(48, 48), n_frames=120, n_neurons=4, seed=1)
    tif = tmp_path / "m.tif"
    tifffile.imwrite(tif, movie)
    (tmp_path / "p.json").write_text(json.dumps(dict(RUN_PARAMS, rf=None, K=4)))
    rc, stdout, err = run_cli(capsys, "run", tif, "--params", tmp_path / "p.json",
                              "--out", tmp_path / "r.h5", "--keep-memmap")
    assert rc == 0, err
    assert "accepted" in stdout and "rejected" in stdout
    params = load_results(tmp_path / "r.h5")["params"]
    Yr, dims, T = load_memmap(params.data["mmap_C"])
    assert dims == (48, 48) and T == 120
    assert os.path.dirname(params.data["mmap_C"]) == str(tmp_path)
    assert "[6/6] save" in err          # a line per stage on stderr
