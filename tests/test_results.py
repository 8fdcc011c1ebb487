"""gpu_cnmf.io.results: exact save/load round trips, CaImAn's layout, atomic
writes, reading CaImAn-written files, NWB export."""
import math
import os
import sys

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from gpu_cnmf.errors import GpuCnmfError, MovieError, ParameterError
from gpu_cnmf.io import results
from gpu_cnmf.io.results import (OptionalDependencyError, export_nwb, load_results,
                                 save_results)
from gpu_cnmf.params import GROUPS, CNMFParams

DIMS = (12, 10)
K, T = 4, 25


def assert_same(a, b, where="value"):
    """Exact equality: same type, dtype, shape and values (NaN == NaN)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if sp.issparse(a):
        assert a.format == b.format and a.shape == b.shape, where
        assert a.data.dtype == b.data.dtype, where
        for part in ("data", "indices", "indptr"):
            x, y = getattr(a, part, None), getattr(b, part, None)
            if x is not None:
                assert x.dtype == y.dtype and np.array_equal(x, y), f"{where}.{part}"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape}"
        if a.dtype.kind == "O":
            for i, (x, y) in enumerate(zip(a.ravel(), b.ravel())):
                assert_same(x, y, f"{where}[{i}]")
        else:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and (a == b or (a != a and b != b)), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def make_estimates(seed=0):
    rng = np.random.default_rng(seed)
    d = DIMS[0] * DIMS[1]
    A = sp.random(d, K, density=0.2, format="csc", dtype=np.float32, random_state=seed)
    A64 = A.copy()
    A64.indices, A64.indptr = A.indices.astype(np.int64), A.indptr.astype(np.int64)
    C = rng.random((K, T)).astype(np.float32)
    C[1, 3] = np.nan
    return {
        "A": A,
        "A_int64": A64,
        "W": sp.random(d, d, density=0.01, format="csr", dtype=np.float64, random_state=1),
        "C": C,
        "S": rng.random((K, T)),
        "YrA": np.asfortranarray(rng.standard_normal((K, T)).astype(np.float32)),
        "b": rng.random((d, 1)).astype(np.float32),
        "f": rng.random((1, T)).astype(np.float32),
        "sn": rng.random(d).astype(np.float32),
        "g": rng.random((K, 2)),
        "bl": rng.random(K), "c1": rng.random(K), "neurons_sn": rng.random(K),
        "lam": np.float64(0.25), "count": np.int32(7), "flag": np.bool_(True),
        "idx_components": np.array([0, 2], dtype=np.int64),
        "idx_components_bad": np.array([1, 3], dtype=np.int32),
        "SNR_comp": np.array([3.0, np.inf, -np.inf, np.nan]),
        "cnn_preds": np.zeros(0),
        "empty2d": np.zeros((0, 3), np.float32),
        "scalar0d": np.array(5, dtype=np.uint16),
        "movie_u16": rng.integers(0, 65535, (3, *DIMS)).astype(np.uint16),
        "mask": rng.random(DIMS) > 0.5,
        "cplx": (rng.random(3) + 1j * rng.random(3)).astype(np.complex64),
        "labels": np.array(["soma", "dendrite", "ü"]),
        "dims": DIMS,
        "Cn": rng.random(DIMS).astype(np.float32),
        "F_dff": None,
        "merged_ROIs": [[0, 1], [2, 3, 5]],
        "coordinates": [{"CoM": np.array([1.5, 2.5]), "id": 1}, {"CoM": np.array([3.0, 4.0]), "id": 2}],
        "timings": {"fit": 1.25, "refit": 0.5},
        "mixed": [1, 2.5, None, "x", True, (1, 2)],
        "names": ["a", "b"],
        "flags": (True, False),
        "empty_list": [], "empty_tuple": (), "empty_dict": {},
        "big_int": 2 ** 40, "neg": -3, "pi": math.pi, "nan": float("nan"), "yes": False,
        "z": 1 + 2j, "text": "", "blob": b"\x00\x01abc",
        "window": slice(None, 10, 2),
        "objects": np.array([np.arange(3), None], dtype=object),
    }


def rich_params():
    return CNMFParams(params_dict={
        "fr": 15.5, "decay_time": 0.7, "dims": DIMS, "gSig": (3, 3), "gSiz": [7, 7],
        "rf": 6, "stride": 3, "K": 4, "p": 1, "nb": 2, "merge_thr": 0.9,
        "max_shifts": (4, 5), "strides": (48, 48), "overlaps": (12, 12), "pw_rigid": True,
        "num_splits_to_process_els": [5, None], "indices": (slice(1, 11), slice(None, None, 1)),
        "sn": np.linspace(0.1, 1.0, DIMS[0] * DIMS[1], dtype=np.float32),
        "se": np.ones((3, 3), dtype=np.uint8), "medw": (3, 3),
        "options_local_NMF": {"alpha": 0.5, "window": (2, 2), "nested": {"x": None}},
        "max_merge_area": float("inf"), "s_min": -2.0, "solvers": ["ECOS", "SCS"],
        "fnames": ["a.tif", "b.tif"], "use_cnn": False, "min_mov": None,
    })


@pytest.fixture
def saved(tmp_path):
    est = make_estimates()
    params = rich_params()
    motion = {"shifts_rig": np.random.default_rng(3).standard_normal((T, 2)),
              "x_shifts_els": np.zeros((T, 4)), "y_shifts_els": np.ones((T, 4)),
              "total_template_rig": np.ones(DIMS, np.float32), "pw_rigid": True,
              "patch_grid": (2, 2)}
    extra = {"summary_images": {"mean": np.ones(DIMS, np.float32)}, "note": "hello"}
    path = save_results(tmp_path / "r.hdf5", params, est, motion=motion, extra=extra)
    return path, params, est, motion, extra


# ---------------------------------------------------------------------------
# round trip

def test_round_trip_every_array_and_value(saved):
    path, params, est, motion, extra = saved
    out = load_results(path)
    assert_same(est, out["estimates"], "estimates")
    assert_same(motion, out["motion"], "motion")
    assert_same(extra, out["extra"], "extra")


def test_round_trip_parameters_exact(saved):
    path, params, *_ = saved
    loaded = load_results(path)["params"]
    assert isinstance(loaded, CNMFParams)
    assert loaded == params
    # types that JSON alone would lose
    assert loaded.motion["max_shifts"] == (4, 5) and type(loaded.motion["max_shifts"]) is tuple
    assert loaded.motion["indices"] == (slice(1, 11), slice(None, None, 1))
    assert loaded.preprocess["sn"].dtype == np.float32
    assert loaded.init["options_local_NMF"]["nested"] == {"x": None}
    assert loaded.merge["max_merge_area"] == float("inf")
    assert loaded.motion["num_splits_to_process_els"] == [5, None]
    assert loaded.to_json() == params.to_json()


def test_params_as_dict_and_estimates_object(tmp_path):
    from gpu_cnmf.cnmf.estimates import Estimates

    params = rich_params()
    e = Estimates(A=make_estimates()["A"], C=np.ones((K, T), np.float32), dims=DIMS)
    e.timings = {"fit": 2.0}
    e._private = object()        # private attributes are not saved
    path = save_results(tmp_path / "e.h5", params.to_dict(), e)
    out = load_results(path)
    assert out["params"] == params
    assert_same({k: v for k, v in vars(e).items() if not k.startswith("_")}, out["estimates"])
    assert out["motion"] is None and out["extra"] is None


def test_overwrites_existing_file(tmp_path):
    path = tmp_path / "r.hdf5"
    save_results(path, CNMFParams(), {"C": np.zeros((1, 3))})
    save_results(path, CNMFParams(), {"C": np.ones((2, 3))})
    assert load_results(path)["estimates"]["C"].shape == (2, 3)
    assert sorted(os.listdir(tmp_path)) == ["r.hdf5"]


# ---------------------------------------------------------------------------
# CaImAn's layout

def test_caiman_layout(saved):
    path, params, est, *_ = saved
    with h5py.File(path, "r") as h5:
        from gpu_cnmf.params import CAIMAN_GROUP_NAMES, CAIMAN_KEY_NAMES
        for group, table in GROUPS.items():
            for name in table:
                # under CaImAn's names (merging/merge_thr, block_size_spat, ...)
                where = (f"params/{CAIMAN_GROUP_NAMES.get(group, group)}/"
                         f"{CAIMAN_KEY_NAMES.get((group, name), name)}")
                assert where in h5, where
        assert h5["params/data/fr"][()] == 15.5
        assert list(h5["params/init/gSig"][()]) == [3, 3]
        assert list(h5["params/motion/max_shifts"][()]) == [4, 5]
        assert h5["params/motion/min_mov"][()] == b"NoneType"
        assert [s.decode() for s in h5["params/temporal/solvers"][()]] == ["ECOS", "SCS"]
        assert h5["params/patch/rf"][()] == 6
        assert list(h5["dims"][()]) == list(DIMS)
        assert set(h5["estimates/A"]) == {"data", "indices", "indptr", "shape"}
        # a reader that knows only CaImAn's conventions rebuilds A
        g = h5["estimates/A"]
        A = sp.csc_matrix((g["data"][()], g["indices"][()], g["indptr"][()]),
                          shape=tuple(g["shape"][()]))
        assert (A != est["A"]).nnz == 0
        assert np.array_equal(h5["estimates/C"][()], est["C"], equal_nan=True)
        assert h5["estimates/F_dff"][()] == b"NoneType"
        for field in ("C", "S", "YrA", "b", "f", "sn", "g", "bl", "c1", "neurons_sn",
                      "idx_components", "idx_components_bad", "SNR_comp", "Cn", "dims"):
            assert isinstance(h5[f"estimates/{field}"], h5py.Dataset), field
        for field in ("shifts_rig", "x_shifts_els", "y_shifts_els", "total_template_rig"):
            assert isinstance(h5[f"motion/{field}"], h5py.Dataset), field
        assert h5.attrs["format"] == results.RESULTS_FORMAT


def test_reads_caiman_written_file(tmp_path):
    """A file in CaImAn's conventions only (no type attributes, no JSON)."""
    path = tmp_path / "caiman.hdf5"
    A = sp.random(DIMS[0] * DIMS[1], 3, density=0.2, format="csc", random_state=4)
    C = np.random.default_rng(0).random((3, T))
    with h5py.File(path, "w") as h5:
        h5["params/data/fr"] = 20.0
        h5["params/data/decay_time"] = 0.5
        h5["params/data/dims"] = np.array(DIMS)
        h5["params/init/gSig"] = np.array([4, 4])
        h5["params/init/K"] = 7
        h5["params/motion/max_shifts"] = np.array([8, 8])
        h5["params/motion/pw_rigid"] = True
        h5["params/temporal/s_min"] = "NoneType"
        h5["params/temporal/solvers"] = np.bytes_(["ECOS", "SCS"])
        h5["params/init/not_a_param"] = 3
        for part in ("data", "indices", "indptr", "shape"):
            h5[f"estimates/A/{part}"] = getattr(A, part) if part != "shape" else A.shape
        h5["estimates/C"] = C
        h5["estimates/idx_components"] = np.array([0, 2])
        h5["estimates/F_dff"] = "NoneType"
        h5["dims"] = np.array(DIMS)
        h5["dview"] = "NoneType"
    out = load_results(path)
    est = out["estimates"]
    assert isinstance(est["A"], sp.csc_matrix) and (est["A"] != A).nnz == 0
    assert np.array_equal(est["C"], C)
    assert est["F_dff"] is None
    assert est["dims"] == DIMS
    p = out["params"]
    assert p.data["fr"] == 20.0 and p.init["gSig"] == [4, 4] and p.init["K"] == 7
    assert list(p.motion["max_shifts"]) == [8, 8] and p.motion["pw_rigid"] is True
    assert p.temporal["solvers"] == ["ECOS", "SCS"]
    assert out["skipped_params"] == ["init.not_a_param"]


# ---------------------------------------------------------------------------
# atomic writes and errors

def _folder(tmp_path):
    return sorted(os.listdir(tmp_path))


def test_unsupported_value_leaves_nothing(tmp_path):
    est = make_estimates()
    est["bad"] = object()            # the last field: fails after most was written
    with pytest.raises(ParameterError, match=r"estimates\.bad"):
        save_results(tmp_path / "r.hdf5", CNMFParams(), est)
    assert _folder(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "r.hdf5"
    save_results(path, CNMFParams(), {"C": np.arange(6.0).reshape(2, 3)})
    before = path.read_bytes()

    real, calls = results._write, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(results, "_write", failing)
    with pytest.raises(type(exc)):
        save_results(path, rich_params(), make_estimates())
    assert calls["n"] == 10
    assert path.read_bytes() == before
    assert _folder(tmp_path) == ["r.hdf5"]
    assert load_results(path)["estimates"]["C"].shape == (2, 3)


def test_missing_folder(tmp_path):
    with pytest.raises(ParameterError, match="does not exist"):
        save_results(tmp_path / "nope" / "r.hdf5", CNMFParams(), {"C": np.zeros(2)})


def test_bad_params_fail_before_writing(tmp_path):
    with pytest.raises(ParameterError, match="gsig"):
        save_results(tmp_path / "r.hdf5", {"init": {"gsig": [3, 3]}}, {"C": np.zeros(2)})
    assert _folder(tmp_path) == []


def test_load_errors(tmp_path):
    with pytest.raises(MovieError, match="not found"):
        load_results(tmp_path / "missing.hdf5")
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(MovieError, match="text.hdf5"):
        load_results(tmp_path / "text.hdf5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = 1
    with pytest.raises(MovieError, match="not a results file"):
        load_results(tmp_path / "other.h5")


# ---------------------------------------------------------------------------
# NWB

def test_nwb_without_pynwb_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynwb", None)     # import pynwb -> ImportError
    with pytest.raises(OptionalDependencyError, match=r"gpu_cnmf\[formats\]") as info:
        export_nwb(tmp_path / "r.nwb", make_estimates(), CNMFParams())
    assert isinstance(info.value, ImportError) and isinstance(info.value, GpuCnmfError)
    assert _folder(tmp_path) == []


def test_nwb_export(tmp_path):
    pynwb = pytest.importorskip("pynwb")
    est = make_estimates()
    est["C"] = np.nan_to_num(est["C"])
    path = export_nwb(tmp_path / "r.nwb", est, CNMFParams(fr=15.0))
    with pynwb.NWBHDF5IO(path, "r") as io:
        nwb = io.read()
        ophys = nwb.processing["ophys"]
        planes = ophys["ImageSegmentation"]["PlaneSegmentation"]
        masks = np.asarray(planes["image_mask"].data[:])
        A = est["A"].toarray()
        for k in range(K):
            assert np.allclose(masks[k], A[:, k].reshape(DIMS, order="F"))
        assert list(planes["accepted"].data[:]) == [True, False, True, False]
        C = np.asarray(ophys["Fluorescence"]["RoiResponseSeries"].data[:])
        assert np.allclose(C, est["C"].T)
