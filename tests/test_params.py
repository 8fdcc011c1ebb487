"""CNMFParams: the spec's parameters and defaults, routing of flat and nested
updates, derived defaults, exact JSON round trips and clear errors."""
import ast
import json
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from gpu_cnmf.errors import DeviceError, ParameterError
from gpu_cnmf.params import EXTENSIONS, GROUPS, CNMFParams

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "caiman_parameters.md"

# Spec defaults that are not Python literals, handled one by one.
_DERIVED = object()          # computed by CNMFParams (dims from fnames)
_SPECIAL_DEFAULTS = {
    "3*1024": 3 * 1024,
    "None(?)": None,
    "(slice(None), slice(None))": (slice(None), slice(None)),
    "computed from fnames": _DERIVED,
}
_GSIZ_EXPR = "[int(round((x * 2) + 1)) for x in gSig]"
_NO_DEFAULT = object()


def _parse_spec(text):
    """{group: {name: default}} from the spec's "• name: type, default: X - text" lines.

    Every bullet line must parse; the quirks of the published text are
    handled here explicitly (see the comments).
    """
    groups, group, n_bullets, n_parsed = {}, None, 0, 0
    for line in text.splitlines():
        header = re.search(r"\(CNMFParams\.(\w+)\)", line)
        if header:
            group = groups.setdefault(header.group(1), {})
            continue
        if not line.lstrip().startswith("•"):
            continue
        n_bullets += 1
        body = line.lstrip()[1:].strip()
        # the name ends at ':' , ',' , a space, or a stray quote
        # ("compute_g':", 'upsample_factor_grid"', "num_splits_to_process_els, default")
        name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", body).group(0)
        rest = body[len(name):]
        found = re.search(r"default-?:\s*", rest)   # "default-:" once
        if found:
            tail = rest[found.end():]
            # the description follows " - "; the gSiz expression has none inside
            text_default = tail.split(" - ", 1)[0].strip().rstrip(",").strip()
            if text_default == _GSIZ_EXPR:
                default = [int(round((x * 2) + 1)) for x in group["gSig"]]
            elif text_default in _SPECIAL_DEFAULTS:
                default = _SPECIAL_DEFAULTS[text_default]
            else:
                default = ast.literal_eval(text_default)
        elif name == "memory_efficient" and rest.strip() == ": False":
            default = False              # written without "default:"
        else:
            default = _NO_DEFAULT        # the spec gives none (fnames, dxy, ...)
        assert name not in group, f"{name} listed twice in one group"
        group[name] = default
        n_parsed += 1
    assert n_bullets == n_parsed > 100, (n_bullets, n_parsed)
    return groups


def _same_default(spec, ours):
    if isinstance(spec, bool) or isinstance(ours, bool):
        return type(spec) is type(ours) and spec == ours
    if isinstance(spec, (int, float)) and isinstance(ours, (int, float)):
        return spec == ours
    if isinstance(spec, (list, tuple)):
        return type(spec) is type(ours) and len(spec) == len(ours) and \
            all(_same_default(a, b) for a, b in zip(spec, ours))
    return spec == ours


@pytest.fixture(scope="module")
def spec():
    if not SPEC.is_file():
        pytest.skip(f"parameter spec not found at {SPEC}")
    return _parse_spec(SPEC.read_text(encoding="utf-8"))


def test_every_spec_parameter_exists_with_its_default(spec):
    params = CNMFParams()
    assert set(spec) == set(GROUPS) == {"data", "patch", "preprocess", "init", "spatial",
                                        "temporal", "merge", "quality", "motion",
                                        "ring_CNN"}
    problems = []
    for group, entries in spec.items():
        ours = params.get_group(group)
        for name, default in entries.items():
            if name not in ours:
                problems.append(f"{group}.{name} missing")
            elif default is _DERIVED:
                assert ours[name] is None          # no fnames given, nothing to derive
            elif default is not _NO_DEFAULT and not _same_default(default, ours[name]):
                problems.append(f"{group}.{name}: spec {default!r}, ours {ours[name]!r}")
        extra = set(ours) - set(entries) - {n for g, n in EXTENSIONS if g == group}
        problems += [f"{group}.{name} not in the spec" for name in sorted(extra)]
    assert not problems, "\n".join(problems)


def test_spec_parser_handles_the_quirks(spec):
    assert spec["preprocess"]["compute_g"] is False
    assert spec["preprocess"]["max_num_samples_fft"] == 3072
    assert spec["motion"]["upsample_factor_grid"] == 4
    assert spec["motion"]["num_splits_to_process_els"] == [7, None]
    assert spec["motion"]["num_frames_split"] == 80
    assert spec["temporal"]["memory_efficient"] is False
    assert spec["init"]["gSiz"] == [11, 11]
    assert spec["init"]["SC_thr"] == 0
    assert spec["spatial"]["expandCore"] is None
    assert spec["data"]["fnames"] is _NO_DEFAULT
    assert spec["temporal"]["fudge_factor"] == .96


def test_defaults_chosen_where_the_spec_is_silent():
    params = CNMFParams()
    assert params.init["seed_method"] == "auto"
    assert params.data["dxy"] == (1, 1)
    assert params.patch["n_processes"] == 1
    assert params.spatial["medw"] is None and params.spatial["se"] is None
    assert params.use_cuda is False


# -- routing ---------------------------------------------------------------------

def test_flat_keys_set_every_group_that_has_them():
    params = CNMFParams(params_dict={"p": 1, "nb": 2, "noise_range": [.2, .4],
                                     "block_size": 1000, "n_pixels_per_process": 50,
                                     "fr": 15})
    assert params.preprocess["p"] == params.temporal["p"] == 1
    assert params.init["nb"] == params.spatial["nb"] == params.temporal["nb"] == 2
    assert params.preprocess["noise_range"] == params.temporal["noise_range"] == [.2, .4]
    assert params.spatial["block_size"] == params.temporal["block_size"] == 1000
    assert params.preprocess["n_pixels_per_process"] == 50
    assert params.spatial["n_pixels_per_process"] == 50
    assert params.get("data", "fr") == 15


def test_nested_dicts_set_one_group_and_kwargs_apply_last():
    params = CNMFParams(params_dict={"temporal": {"p": 1}, "motion": {"max_shifts": (8, 8)},
                                     "fr": 10}, fr=20, pw_rigid=True)
    assert params.temporal["p"] == 1 and params.preprocess["p"] == 2
    assert params.motion["max_shifts"] == (8, 8) and params.motion["pw_rigid"] is True
    assert params.data["fr"] == 20


def test_caiman_aliases():
    params = CNMFParams({"merge_thr": .85, "block_size_spat": 100, "block_size_temp": 200})
    assert params.merge["thr"] == .85
    assert params.spatial["block_size"] == 100 and params.temporal["block_size"] == 200


def test_get_group_is_a_copy_and_group_dicts_stay_live():
    params = CNMFParams()
    motion = params.motion
    copy = params.get_group("motion")
    copy["max_shifts"] = (1, 1)
    assert params.motion["max_shifts"] == (6, 6)
    params.change_params({"max_shifts": (9, 9)})
    assert motion["max_shifts"] == (9, 9)        # same dict object, updated in place
    assert params.to_dict()["motion"] == params.motion


def test_gsiz_is_derived_from_gsig_until_set():
    params = CNMFParams(gSig=[3, 4])
    assert params.init["gSiz"] == [7, 9]
    params.change_params({"gSig": [2.6, 2.6]})
    assert params.init["gSiz"] == [6, 6]          # int(round(2*2.6 + 1))
    params.change_params({"gSiz": [15, 15]})
    params.change_params({"gSig": [4, 4]})
    assert params.init["gSiz"] == [15, 15]        # explicit value sticks
    params.change_params({"gSiz": None})
    assert params.init["gSiz"] == [9, 9]


def test_change_params_is_all_or_nothing():
    params = CNMFParams()
    before = params.copy()
    with pytest.raises(ParameterError):
        params.change_params({"fr": 10, "rval_thr": 2.0})
    assert params == before and params.data["fr"] == 30
    assert params.change_params({"fr": 10}) is params and params.data["fr"] == 10
    assert params != before


def test_set_is_caimans_spelling():
    params = CNMFParams()
    params.set("quality", {"min_SNR": 3.0})
    assert params.quality["min_SNR"] == 3.0
    with pytest.raises(ParameterError, match="motoin.*did you mean 'motion'"):
        params.set("motoin", {"pw_rigid": True})


def test_paths_become_strings(tmp_path):
    params = CNMFParams(dims=(8, 8), fnames=[tmp_path / "a.tif"], path_to_model=tmp_path)
    assert params.data["fnames"] == [str(tmp_path / "a.tif")]
    assert params.ring_CNN["path_to_model"] == str(tmp_path)


# -- dims from files -------------------------------------------------------------

def test_dims_are_read_from_fnames(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    first, second = tmp_path / "a.tif", tmp_path / "b.tif"
    tifffile.imwrite(first, np.zeros((5, 20, 30), dtype=np.uint16), photometric="minisblack")
    tifffile.imwrite(second, np.zeros((4, 24, 16), dtype=np.uint16), photometric="minisblack")
    params = CNMFParams(fnames=[str(first)])
    assert params.data["dims"] == (20, 30)
    params.change_params({"fnames": [str(second)]})
    assert params.data["dims"] == (24, 16)        # derived dims follow fnames
    explicit = CNMFParams(fnames=[str(first)], dims=(7, 7))
    assert explicit.data["dims"] == (7, 7)


def test_dims_follow_fnames_through_open_movie(monkeypatch):
    """The derivation rules, with a stand-in reader that records its calls."""
    calls, closed = [], []

    class Source:
        def __init__(self, fnames, var_name_hdf5):
            calls.append((fnames, var_name_hdf5))
            self.dims = (np.int64(10), np.int64(12 + len(calls)))

        def close(self):
            closed.append(True)

    fake = types.ModuleType("gpu_cnmf.io")
    fake.open_movie = lambda fnames, var_name_hdf5="mov": Source(fnames, var_name_hdf5)
    monkeypatch.setitem(sys.modules, "gpu_cnmf.io", fake)
    params = CNMFParams(fnames=["a.h5"], var_name_hdf5="data")
    assert calls == [(["a.h5"], "data")] and closed == [True]
    assert params.data["dims"] == (10, 13) and type(params.data["dims"][0]) is int
    params.change_params({"fr": 10})
    assert len(calls) == 1                        # unrelated change: no re-read
    params.change_params({"fnames": ["b.h5"]})
    assert params.data["dims"] == (10, 14)
    params.change_params({"dims": (10, 20)})
    params.change_params({"fnames": ["c.h5"]})
    assert params.data["dims"] == (10, 20) and len(calls) == 2


def test_dims_stay_unset_while_io_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpu_cnmf.io", types.ModuleType("gpu_cnmf.io"))
    params = CNMFParams(fnames=["nowhere.tif"])
    assert params.data["dims"] is None and params.data["fnames"] == ["nowhere.tif"]


# -- JSON ------------------------------------------------------------------------

def _unusual_params():
    return CNMFParams(params_dict={
        "dims": (64, 48),
        "fnames": ["x.tif", "y.tif"],
        "sn": np.linspace(0, 1, 7, dtype=np.float32),
        "kernel": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4) / 7),
        "se": np.ones((3, 3), dtype=np.uint8),
        "ss": np.eye(3, dtype=bool),
        "medw": (3, 3),
        "indices": (slice(2, -2), slice(None, 40, 2)),
        "min_mov": float("-inf"),
        "s_min": np.float32(-0.1),
        "gSig": (3, 3), "gSiz": (13, 13),
        "noise_range": [.25, .5],
        "rf": [20, 16], "stride": 6,
        "decay_time": 0.1 + 0.2,          # a float with no short decimal form
        "options_local_NMF": {"n_comps": 3, "__type__": (1, 2), "sub": {"a": [None]}},
        "num_splits_to_process_els": [7, None],
        "lr_scheduler": math.exp,
        "border_nan": True,
    })


def test_json_round_trip_is_exact(tmp_path):
    params = _unusual_params()
    path = tmp_path / "p.json"
    params.to_json(path)
    back = CNMFParams.from_json(path)
    assert back == params
    for group in GROUPS:
        for key, value in params.get_group(group).items():
            restored = back.get(group, key)
            assert type(restored) is type(value), (group, key)
            if isinstance(value, np.ndarray):
                assert restored.dtype == value.dtype and restored.shape == value.shape
                assert restored.flags.f_contiguous == value.flags.f_contiguous
                np.testing.assert_array_equal(restored, value)
    assert back.init["gSiz"] == (13, 13) and back.motion["indices"][1] == slice(None, 40, 2)
    assert back.temporal["s_min"].dtype == np.float32
    assert back.data["decay_time"] == 0.1 + 0.2
    assert back.ring_CNN["lr_scheduler"] is math.exp
    assert CNMFParams.load(path) == params
    json.loads(path.read_text())                  # standard JSON (no NaN/Infinity tokens)
    assert not list(tmp_path.glob("*.tmp"))


def test_json_keeps_derived_defaults_derived(tmp_path):
    params = CNMFParams(gSig=[4, 4])
    back = CNMFParams.from_json_text(params.to_json())
    back.change_params({"gSig": [2, 2]})
    assert back.init["gSiz"] == [5, 5]


def test_equality_sees_types_and_array_values():
    a, b = CNMFParams(), CNMFParams()
    assert a == b
    b.change_params({"max_shifts": [6, 6]})       # list vs tuple
    assert a != b
    a.change_params({"sn": np.zeros(3)})
    c = a.copy()
    c.preprocess["sn"][1] = 1e-9
    assert a != c


def test_what_json_cannot_hold_is_refused(tmp_path):
    params = CNMFParams(lr_scheduler=lambda epoch: 0.1)
    with pytest.raises(ParameterError, match="ring_CNN.lr_scheduler"):
        params.to_json(tmp_path / "p.json")
    assert not list(tmp_path.iterdir())
    bad = tmp_path / "other.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ParameterError, match="not a gpu_cnmf parameter file"):
        CNMFParams.from_json(bad)


# -- errors ----------------------------------------------------------------------

@pytest.mark.parametrize("entry, suggestion", [
    ({"gsig": [3, 3]}, "gSig"),
    ({"max_shift": (3, 3)}, "max_shifts"),
    ({"min_snr": 2.0}, "min_SNR"),
    ({"motion": {"max_shits": (3, 3)}}, "max_shifts"),
    ({"motino": {"max_shifts": (3, 3)}}, "motion"),
])
def test_unknown_parameter_names_the_closest(entry, suggestion):
    with pytest.raises(ParameterError, match=f"unknown parameter.*did you mean '{suggestion}'"):
        CNMFParams(entry)


def test_parameter_in_the_wrong_group():
    with pytest.raises(ParameterError, match=r"motion\.K.*belongs to group init"):
        CNMFParams({"motion": {"K": 4}})


@pytest.mark.parametrize("entry, name", [
    ({"fr": "thirty"}, "data.fr"),
    ({"pw_rigid": 1}, "motion.pw_rigid"),
    ({"K": 4.5}, "init.K"),
    ({"gSig": 5}, "init.gSig"),
    ({"sn": [1.0, 2.0]}, "preprocess.sn"),
    ({"motion": 3}, "motion"),
])
def test_wrong_type(entry, name):
    with pytest.raises(ParameterError, match=re.escape(name)):
        CNMFParams(entry)


@pytest.mark.parametrize("entry, name, expected", [
    ({"fr": -30}, "data.fr", "> 0"),
    ({"gSig": [0, 4]}, "init.gSig", "> 0"),
    ({"rval_thr": 1.2}, "quality.rval_thr", "[0, 1]"),
    ({"min_cnn_thr": -0.1}, "quality.min_cnn_thr", "[0, 1]"),
    ({"thr": 1.01}, "merge.thr", "[0, 1]"),
    ({"nrgthr": 2}, "spatial.nrgthr", "[0, 1]"),
    ({"maxthr": -1}, "spatial.maxthr", "[0, 1]"),
    ({"pct": 1.5}, "ring_CNN.pct", "[0, 1]"),
    ({"p": 3}, "preprocess.p", "[0, 2]"),
    ({"temporal": {"p": -1}}, "temporal.p", "[0, 2]"),
    ({"max_shifts": (-1, 4)}, "motion.max_shifts", ">= 0"),
    ({"noise_range": [.5, .25]}, "preprocess.noise_range", "sequence of 2"),
    ({"fudge_factor": 1.5}, "temporal.fudge_factor", "(0, 1]"),
    ({"decay_time": float("nan")}, "data.decay_time", "> 0"),
])
def test_out_of_range(entry, name, expected):
    with pytest.raises(ParameterError, match=re.escape(name) + ".*" + re.escape(expected)):
        CNMFParams(entry)


@pytest.mark.parametrize("name, value", [
    ("method_init", "greedy"), ("noise_method", "average"), ("thr_method", "energy"),
    ("method_exp", "erode"), ("method_deconvolution", "foopsi"), ("loss_fn", "l1"),
    ("border_nan", "nan"), ("seed_method", "random"), ("SC_kernel", "gauss"),
])
def test_bad_choice(name, value):
    with pytest.raises(ParameterError, match=rf"\.{name} = '{value}'.*one of"):
        CNMFParams({name: value})


def test_border_nan_takes_bools_but_not_ints():
    assert CNMFParams(border_nan=False).motion["border_nan"] is False
    with pytest.raises(ParameterError, match="motion.border_nan"):
        CNMFParams(border_nan=1)


@pytest.mark.parametrize("entry, pattern", [
    ({"rf": 20, "stride": 40}, r"patch\.stride = 40 must be smaller than 2\*patch\.rf"),
    ({"rf": [20, 10], "stride": [10, 25]}, r"patch\.stride"),
    ({"overlaps": (32, 32), "strides": (32, 64)}, r"motion\.overlaps.*motion\.strides"),
    ({"gSig": [5, 5], "gSiz": [4, 11]}, r"init\.gSiz = \[4, 11\] is smaller than init\.gSig"),
    ({"gSig": [5, 5, 5], "gSiz": [11, 11]}, r"init\.gSiz.*same length"),
    ({"dims": (64, 64, 10)}, r"init\.gSig.*3 values"),
    ({"is3D": True}, r"motion\.max_shifts.*3 values"),
    ({"SNR_lowest": 3.0, "min_SNR": 2.0}, r"quality\.SNR_lowest.*quality\.min_SNR"),
])
def test_inconsistent_combinations(entry, pattern):
    with pytest.raises(ParameterError, match=pattern):
        CNMFParams(entry)


def test_consistent_3d_setup_is_accepted():
    params = CNMFParams(dims=(64, 64, 10), gSig=[4, 4, 2], is3D=True, max_shifts=(4, 4, 2),
                        strides=(24, 24, 4), overlaps=(8, 8, 2),
                        indices=(slice(None),) * 3)
    assert params.init["gSiz"] == [9, 9, 5]


def test_validate_catches_direct_edits():
    params = CNMFParams()
    params.motion["max_shifts"] = (-3, 3)
    with pytest.raises(ParameterError, match="motion.max_shifts"):
        params.validate()
    params.motion["max_shifts"] = (3, 3)
    params.motion["bogus"] = 1
    with pytest.raises(ParameterError, match="motion.bogus"):
        params.validate()


def test_get_errors():
    params = CNMFParams()
    with pytest.raises(ParameterError, match="did you mean 'max_shifts'"):
        params.get("motion", "maxshifts")
    with pytest.raises(ParameterError, match="unknown parameter group 'ringcnn'.*ring_CNN"):
        params.get_group("ringcnn")


# -- device and display ----------------------------------------------------------

def test_use_cuda_picks_the_device():
    import torch
    params = CNMFParams()
    assert params.device() == torch.device("cpu")
    params.use_cuda = True
    assert params.motion["use_cuda"] is True
    if torch.cuda.is_available():
        assert params.device().type == "cuda"
    else:
        with pytest.raises(DeviceError):
            params.device()
    with pytest.raises(ParameterError, match="motion.use_cuda"):
        params.use_cuda = 1


def test_repr_lists_each_group():
    text = repr(CNMFParams(sn=np.zeros(100)))
    for group in GROUPS:
        assert f"\n  {group}:\n" in text
    assert "    max_shifts = (6, 6)" in text
    assert "sn = array(shape=(100,), dtype=float64)" in text
