"""CNMFParams: every parameter of the pipeline, grouped as CaImAn groups them.

The ten groups (``data``, ``patch``, ``preprocess``, ``init``, ``spatial``,
``temporal``, ``merge``, ``quality``, ``motion``, ``ring_CNN``) are plain dict
attributes with CaImAn's names and defaults (``shared/spec/caiman_parameters.md``),
so ``params.motion['max_shifts']`` and ``MotionCorrect(fnames,
**params.get_group('motion'))`` work as CaImAn users expect.

How updates are routed (construction, :meth:`CNMFParams.change_params`):

- a flat key (``{'p': 1}``) sets the parameter in *every* group that has it,
  as CaImAn does: ``p`` lives in preprocess and temporal; ``nb`` in init,
  spatial and temporal; ``noise_range``, ``noise_method``, ``lags`` in
  preprocess and temporal; ``n_pixels_per_process`` in preprocess and
  spatial; ``block_size`` and ``num_blocks_per_run`` in spatial and temporal;
- a group name with a dict (``{'motion': {'max_shifts': (8, 8)}}``) sets only
  that group;
- a few CaImAn spellings are accepted as aliases (``merge_thr`` for
  ``merge.thr``, ``block_size_spat``/``block_size_temp``,
  ``num_blocks_per_run_spat``/``_temp``).

Derived defaults: ``init.gSiz`` follows ``gSig`` (``int(round(2*x+1))``)
until it is set explicitly, ``data.dims`` is read from ``fnames`` until it
is set explicitly, and so is ``data.fr`` when the movie's metadata records a
frame rate (ScanImage, Scanbox, Bruker, NWB, video, ImageJ; else 30) until
it is set explicitly (``fr=None`` asks for the file's value again). Every
change is validated as a whole before it is applied, so a rejected change leaves the object as it was. Where the spec gives no
default we use CaImAn's documented one; each such choice is commented below.

``motion['use_cuda']`` picks the device for every stage, not only motion
correction: :attr:`CNMFParams.use_cuda`, :meth:`CNMFParams.device`.
"""
from __future__ import annotations

import base64
import copy
import difflib
import importlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from . import __version__
from .errors import GpuCnmfError, ParameterError

log = logging.getLogger(__name__)

__all__ = ["CNMFParams", "GROUPS"]


# ----------------------------------------------------------------------------
# Validation rules. A rule knows what it expects (for the error message) and
# tells a wrong type apart from a value out of range.

def _is_bool(v):
    return isinstance(v, (bool, np.bool_))


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not _is_bool(v)


def _is_num(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not _is_bool(v)


def _is_seq(v):
    return isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim == 1)


class _Rule:
    def __init__(self, desc, type_ok, value_ok=None, none=False, bad="out of range"):
        self.desc = desc + (" or None" if none else "")
        self.type_ok, self.value_ok, self.none, self.bad = type_ok, value_ok, none, bad

    def problem(self, v):
        """None when ``v`` is acceptable, else why not."""
        if v is None and self.none:
            return None
        if not self.type_ok(v):
            return f"wrong type ({type(v).__name__}); expected {self.desc}"
        if self.value_ok is not None and not self.value_ok(v):
            return f"{self.bad}; expected {self.desc}"
        return None


def _bounds_text(lo, hi, lo_open):
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    return f" <= {hi}" if hi is not None else ""


def _in_bounds(v, lo, hi, lo_open):
    if isinstance(v, (float, np.floating)) and math.isnan(v):
        return False
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return hi is None or v <= hi


def _num(lo=None, hi=None, lo_open=False, none=False, integer=False):
    kind = "an integer" if integer else "a number"
    return _Rule(kind + _bounds_text(lo, hi, lo_open), _is_int if integer else _is_num,
                 lambda v: _in_bounds(v, lo, hi, lo_open), none)


def _int(lo=None, hi=None, none=False):
    return _num(lo, hi, none=none, integer=True)


def _bool(none=False):
    return _Rule("True or False", _is_bool, none=none)


def _str(none=False):
    return _Rule("a string", lambda v: isinstance(v, str), none=none)


def _enum(*choices):
    def type_ok(v):
        return isinstance(v, str) or (_is_bool(v) and any(c is True for c in choices))
    # `is` for bools so that 1 is not taken for True
    return _Rule("one of " + ", ".join(map(repr, choices)), type_ok,
                 lambda v: any(c == v if isinstance(c, str) else
                               (_is_bool(v) and c is bool(v)) for c in choices),
                 bad="not a valid choice")


def _seq(elem, lengths=(2, 3), none=False, scalar=False, check=None):
    """A list/tuple/1-D array of ``elem`` values; a bare scalar too if ``scalar``."""
    def items(v):
        return [v] if scalar and not _is_seq(v) else list(v)

    def type_ok(v):
        return (_is_seq(v) or (scalar and elem.type_ok(v))) and \
            all(elem.type_ok(x) or (x is None and elem.none) for x in items(v))

    def value_ok(v):
        n_ok = not _is_seq(v) or lengths is None or len(v) in lengths
        return n_ok and all(elem.problem(x) is None for x in items(v)) and \
            (check is None or check(v))
    n = "" if lengths is None else "/".join(map(str, lengths)) + " "
    desc = f"a sequence of {n}values, each {elem.desc}"
    return _Rule(("a value or " if scalar else "") + desc, type_ok, value_ok, none)


def _size_ok(v):
    from .backend import parse_bytes
    try:
        parse_bytes(v)
    except ParameterError:
        return False
    return True


def _instance(types, desc, none=True):
    return _Rule(desc, lambda v: isinstance(v, types), none=none)


_ANY = _Rule("anything", lambda v: True)
_ARRAY = _instance(np.ndarray, "a numpy array")
_PATH = _instance(str, "a path (str)")
_PATHS = _Rule("a path (str) or a list of paths",
               lambda v: isinstance(v, str) or (isinstance(v, (list, tuple)) and
                                                all(isinstance(x, str) for x in v)), none=True)
_PLANE = _Rule("an integer >= 0 or 'all'",
               lambda v: _is_int(v) or isinstance(v, str),
               lambda v: v == "all" if isinstance(v, str) else v >= 0, none=True)
_FRACTION = _num(0, 1)
_P_ORDER = _int(0, 2)
_NOISE_RANGE = _seq(_num(0, 1), lengths=(2,), check=lambda v: v[0] < v[1])
_NOISE_METHOD = _enum("mean", "median", "logmexp")
_SIZE = _Rule("a size in bytes (a positive number or a string such as '4GB')",
              lambda v: isinstance(v, str) or _is_num(v), lambda v: _size_ok(v), none=True)
_NB = _int(-1)          # >0 global components, 0 ring model (CNMF-E), -1 full rank
_SPLITS = _seq(_int(1, none=True), lengths=None, none=True, scalar=True)


# ----------------------------------------------------------------------------
# The table of parameters: group -> name -> (default, rule). Defaults follow
# the spec; "CaImAn default" marks a value the spec leaves out.

GROUPS = {
    "data": {
        "fnames": (None, _PATHS),
        "dims": (None, _seq(_int(1), none=True)),          # derived from fnames
        "fr": (30, _num(0, lo_open=True)),
        "decay_time": (0.4, _num(0, lo_open=True)),
        "dxy": ((1, 1), _seq(_num(0, lo_open=True))),       # CaImAn default
        "var_name_hdf5": ("mov", _str()),
        # CaImAn stores its own version; we record which engine wrote the file
        "caiman_version": (f"gpu_cnmf-{__version__}", _str(none=True)),
        "last_commit": (None, _str(none=True)),             # no repository at run time
        "mmap_F": (None, _PATHS),                           # CaImAn default
        "mmap_C": (None, _PATH),                            # CaImAn default
        # multi-plane / multi-channel recordings (ScanImage, Bruker, Scanbox,
        # ImageJ): which plane (0-based; "all": each plane as its own movie)
        # and channel to analyse, and the series of an NWB file
        "plane": (None, _PLANE),
        "channel": (None, _int(0, none=True)),
        "nwb_series": (None, _str(none=True)),
    },
    "patch": {
        "rf": (None, _seq(_int(1), none=True, scalar=True)),
        "stride": (None, _seq(_int(0), none=True, scalar=True)),
        "nb_patch": (1, _NB),
        "border_pix": (0, _int(0)),
        "low_rank_background": (True, _bool(none=True)),  # None: CNMF-E ring model
        "del_duplicates": (False, _bool()),
        "only_init": (True, _bool()),
        "p_patch": (0, _P_ORDER),
        "skip_refinement": (False, _bool()),
        "remove_very_bad_comps": (True, _bool()),
        "p_ssub": (2, _num(1)),
        "p_tsub": (2, _num(1)),
        "memory_fact": (1, _num(0, lo_open=True)),
        # gpu_cnmf: caps on memory (bytes or '4GB'); None: from what the machine has
        # (gpu_cnmf.backend: host_budget, device_budget)
        "memory_limit": (None, _SIZE),
        "device_memory_limit": (None, _SIZE),
        "n_processes": (1, _int(1, none=True)),            # CaImAn default; None: all cores
        "in_memory": (True, _bool()),
    },
    "preprocess": {
        "sn": (None, _ARRAY),
        "noise_range": ([.25, .5], _NOISE_RANGE),
        "noise_method": ("mean", _NOISE_METHOD),
        "max_num_samples_fft": (3 * 1024, _int(1)),
        "n_pixels_per_process": (1000, _int(1)),
        "compute_g": (False, _bool()),
        "p": (2, _P_ORDER),
        "lags": (5, _int(1)),
        "include_noise": (False, _bool()),
        "pixels": (None, _Rule("a sequence of pixel indices", _is_seq, none=True)),
        "check_nan": (True, _bool()),
    },
    "init": {
        "K": (30, _int(0, none=True)),                     # None: as many as found (CNMF-E)
        # graph_nmf is the method the SC_* and lambda_gnmf parameters belong to
        "SC_kernel": ("heat", _enum("heat", "cos", "binary")),
        "SC_sigma": (1, _num(0, lo_open=True)),
        "SC_thr": (0, _FRACTION),
        "SC_normalize": (True, _bool()),
        "SC_use_NN": (False, _bool()),
        "SC_nnn": (20, _int(1)),
        "gSig": ([5, 5], _seq(_num(0, lo_open=True))),
        "gSiz": (None, _seq(_num(0, lo_open=True), none=True)),   # derived from gSig
        "center_psf": (False, _bool()),
        "ssub": (2, _num(1)),
        "tsub": (2, _num(1)),
        "nb": (1, _NB),
        "lambda_gnmf": (1., _num(0)),
        "maxIter": (5, _int(0)),
        "method_init": ("greedy_roi", _enum("greedy_roi", "corr_pnr", "sparse_NMF",
                                            "local_NMF", "graph_nmf")),
        "min_corr": (0.85, _num(-1, 1)),
        "min_pnr": (20, _num(0)),
        "seed_method": ("auto", _enum("auto", "manual", "semi")),   # CaImAn default
        "ring_size_factor": (1.5, _num(0, lo_open=True)),
        "ssub_B": (2, _num(1)),
        "init_iter": (2, _int(1)),
        "nIter": (5, _int(0)),
        "rolling_sum": (True, _bool()),
        "rolling_length": (100, _int(1)),
        "kernel": (None, _ARRAY),
        "max_iter_snmf": (500, _int(1)),
        "alpha_snmf": (100, _num(0)),
        "sigma_smooth_snmf": ((.5, .5, .5), _seq(_num(0))),
        "perc_baseline_snmf": (20, _num(0, 100)),
        "normalize_init": (True, _bool()),
        "options_local_NMF": (None, _instance(dict, "a dict")),     # CaImAn default
    },
    "spatial": {
        "method_exp": ("dilate", _enum("dilate", "ellipse")),
        "dist": (3, _num(0, lo_open=True)),
        # None: CNMF uses a diamond of radius 2 (CaImAn's default element)
        "expandCore": (None, _ARRAY),
        "nb": (1, _NB),
        "n_pixels_per_process": (1000, _int(1)),
        "thr_method": ("nrg", _enum("nrg", "max")),
        "maxthr": (0.1, _FRACTION),
        "nrgthr": (0.9999, _FRACTION),
        "extract_cc": (True, _bool()),
        "medw": (None, _seq(_int(1), none=True)),           # filled in CNMF.fit
        "se": (None, _ARRAY),                               # filled in CNMF.fit
        "ss": (None, _ARRAY),                               # filled in CNMF.fit
        "update_background_components": (True, _bool()),
        "method_ls": ("lasso_lars", _enum("lasso_lars", "nnls_L0")),
        "block_size": (5000, _int(1)),
        "num_blocks_per_run": (20, _int(1)),
        "normalize_yyt_one": (True, _bool()),
    },
    "temporal": {
        "ITER": (2, _int(1)),
        "method_deconvolution": ("oasis", _enum("oasis", "cvxpy", "cvx")),
        "solvers": (["ECOS", "SCS"], _seq(_str(), lengths=None, scalar=True)),
        "p": (2, _P_ORDER),
        "memory_efficient": (False, _bool()),
        "bas_nonneg": (True, _bool()),
        "noise_range": ([.25, .5], _NOISE_RANGE),
        "noise_method": ("mean", _NOISE_METHOD),
        "lags": (5, _int(1)),
        # an int n > 0 means: optimise g on the n largest isolated events
        "optimize_g": (False, _Rule("True/False or an integer >= 0",
                                    lambda v: _is_bool(v) or _is_int(v),
                                    lambda v: _is_bool(v) or v >= 0)),
        "fudge_factor": (.96, _num(0, 1, lo_open=True)),
        "nb": (1, _NB),
        "verbosity": (False, _bool()),
        "block_size": (5000, _int(1)),
        "num_blocks_per_run": (20, _int(1)),
        "s_min": (None, _num(none=True)),   # < 0: a multiple of the noise level
    },
    "merge": {
        "do_merge": (True, _bool()),
        "thr": (0.8, _FRACTION),
        "merge_parallel": (False, _bool()),
        "max_merge_area": (None, _num(0, lo_open=True, none=True)),
    },
    "quality": {
        "min_SNR": (2.5, _num()),
        "SNR_lowest": (0.5, _num()),
        "rval_thr": (0.8, _FRACTION),
        "rval_lowest": (-1, _num(-1, 1)),
        "use_cnn": (True, _bool()),
        "min_cnn_thr": (0.9, _FRACTION),
        "cnn_lowest": (0.1, _FRACTION),
        "gSig_range": (None, _seq(_num(0, lo_open=True), lengths=None, none=True,
                                  scalar=True)),
    },
    "motion": {
        "border_nan": ("copy", _enum(True, False, "copy", "min")),
        "gSig_filt": (None, _seq(_int(1), none=True, scalar=True)),
        "is3D": (False, _bool()),
        "max_deviation_rigid": (3, _int(0)),
        "max_shifts": ((6, 6), _seq(_int(0))),
        # element type of the corrected movie's memory map: 'float16' halves
        # its size on disk and the bytes every later pass reads
        "memmap_dtype": ("float32", _enum("float32", "float16")),
        "min_mov": (None, _num(none=True)),
        "niter_rig": (1, _int(1)),
        "nonneg_movie": (True, _bool()),
        "num_frames_split": (80, _int(1)),
        "num_splits_to_process_els": ([7, None], _SPLITS),
        "num_splits_to_process_rig": (None, _SPLITS),
        "overlaps": ((24, 24), _seq(_int(0))),
        "pw_rigid": (False, _bool()),
        "shifts_opencv": (True, _bool()),
        "splits_els": (14, _int(1)),
        "splits_rig": (14, _int(1)),
        "strides": ((96, 96), _seq(_int(1))),
        "upsample_factor_grid": (4, _int(1)),
        # chooses the device of every stage; a device name such as 'cuda:1' works too
        "use_cuda": (False, _Rule("True/False or a device name",
                                  lambda v: _is_bool(v) or isinstance(v, str))),
        "indices": ((slice(None), slice(None)),
                    _Rule("a tuple of 2 or 3 slices",
                          lambda v: isinstance(v, (tuple, list)) and
                          all(isinstance(s, slice) for s in v),
                          lambda v: len(v) in (2, 3))),
    },
    "ring_CNN": {
        "n_channels": (2, _int(1)),
        "use_bias": (False, _bool()),
        "use_add": (False, _bool()),
        "pct": (0.01, _FRACTION),
        "patience": (3, _int(0)),
        "max_epochs": (100, _int(1)),
        "width": (5, _int(1)),
        "loss_fn": ("pct", _enum("pct", "mse")),
        "lr": (1e-3, _num(0, lo_open=True)),
        "lr_scheduler": (None, _Rule("a callable", callable, none=True)),
        "path_to_model": (None, _PATH),
        "remove_activity": (False, _bool()),
        "reuse_model": (False, _bool()),
    },
}

# Parameters gpu_cnmf adds to CaImAn's (group, name): not in CaImAn's table,
# ignored by CaImAn if a JSON file with them is read there.
EXTENSIONS = {("patch", "memory_limit"), ("patch", "device_memory_limit"),
              ("data", "plane"), ("data", "channel"), ("data", "nwb_series"),
              ("motion", "memmap_dtype")}

# Flat name -> groups holding it (several for the shared parameters).
_OWNERS: dict[str, list[str]] = {}
for _g, _table in GROUPS.items():
    for _k in _table:
        _OWNERS.setdefault(_k, []).append(_g)

# CaImAn spellings that name one group's parameter differently.
_ALIASES = {
    "merge_thr": ("merge", "thr"),
    "block_size_spat": ("spatial", "block_size"),
    "block_size_temp": ("temporal", "block_size"),
    "num_blocks_per_run_spat": ("spatial", "num_blocks_per_run"),
    "num_blocks_per_run_temp": ("temporal", "num_blocks_per_run"),
}
_PATH_KEYS = {"fnames", "mmap_F", "mmap_C", "path_to_model"}

# ----------------------------------------------------------------------------
# CaImAn compatibility (the one place for it): what CaImAn's CNMFParams
# accepts is accepted here, under its own spelling, even where the spec
# names it differently or the offline pipeline has no use for it.

# CaImAn's name of a group -> ours
_GROUP_ALIASES = {"merging": "merge"}
# our group -> CaImAn's name (for writing files CaImAn reads)
CAIMAN_GROUP_NAMES = {v: k for k, v in _GROUP_ALIASES.items()}
# our (group, key) -> CaImAn's key, where they differ
CAIMAN_KEY_NAMES = {("merge", "thr"): "merge_thr", ("spatial", "block_size"): "block_size_spat",
                    ("temporal", "block_size"): "block_size_temp",
                    ("spatial", "num_blocks_per_run"): "num_blocks_per_run_spat",
                    ("temporal", "num_blocks_per_run"): "num_blocks_per_run_temp"}
# legacy keyword names (CaImAn's CNMFParams(...) and CNMF(...) arguments) -> flat names here
_LEGACY = {"k": "K", "gnb": "nb", "merge_thresh": "merge_thr",
           "only_init_patch": "only_init"}
# CaImAn's ``online`` group (OnACID): stored as given, unused offline
ONLINE_KEYS = frozenset((
    "N_samples_exceptionality", "W_update_factor", "batch_update_suff_stat", "deconv_flag",
    "dist_shape_update", "ds_factor", "epochs", "expected_comps", "full_XXt", "init_batch",
    "init_method", "iters_shape", "max_comp_update_shape", "max_num_added",
    "max_shifts_online", "min_SNR", "min_num_trial", "minibatch_shape",
    "minibatch_suff_stat", "motion_correct", "movie_name_online", "n_refit", "normalize",
    "num_times_comp_updated", "opencv_codec", "path_to_model", "ring_CNN", "rval_thr",
    "save_online_movie", "show_movie", "simultaneously", "sniper_mode", "stop_detection",
    "test_both", "thresh_CNN_noisy", "thresh_fitness_delta", "thresh_fitness_raw",
    "thresh_overlap", "update_freq", "update_num_comps", "use_corr_img", "use_dense",
    "use_peak_max"))
# CaImAn parameters of the spec's groups that the spec lacks: (group, key) ->
# (the value that means "off", what we have instead). That value is accepted
# and stored; any other raises NotImplementedError.
CAIMAN_EXTRA = {
    ("quality", "use_ecc"): (False, "no eccentricity test; use quality.min_SNR/rval_thr/use_cnn"),
    ("quality", "max_ecc"): (3, "no eccentricity test; use quality.min_SNR/rval_thr/use_cnn"),
    ("motion", "shifts_interpolate"): (False, "motion.shifts_opencv (interpolated shifts)"),
}
_DERIVABLE = ("init.gSiz", "data.dims", "data.fr")
# changes that make data.dims / data.fr be read from the movie again
_MOVIE_KEYS = {"data.fnames", "data.var_name_hdf5", "data.plane", "data.channel",
               "data.nwb_series"}


def _closest(name, candidates):
    """The candidate closest to ``name`` (case-insensitive), or None."""
    lowered = {c.lower(): c for c in candidates}
    hit = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hit[0]] if hit else None


def _unknown(key, group=None):
    where = f"{group}.{key}" if group else repr(key)
    if group and key in _OWNERS:
        return ParameterError(f"unknown parameter {where}: {key!r} belongs to group "
                              f"{' and '.join(_OWNERS[key])}, not {group}")
    pool = list(GROUPS[group]) if group else list(_OWNERS) + list(_ALIASES) + list(GROUPS)
    best = _closest(key, pool)
    if best is None:
        hint = ""
    elif best in GROUPS and not group:
        hint = f"; did you mean {best!r} (a group)?"
    else:
        owner = group or (_ALIASES[best][0] if best in _ALIASES else " and ".join(_OWNERS[best]))
        hint = f"; did you mean {best!r} (group {owner})?"
    return ParameterError(f"unknown parameter {where}{hint}")


def _as_path(v):
    """Path objects become str, so that JSON and equality see one spelling."""
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (list, tuple)):
        return type(v)(os.fspath(x) if isinstance(x, os.PathLike) else x for x in v)
    return v


def _from_caiman_json(doc, source):
    """A CaImAn JSON parameter document as a params_dict: JSON lists where
    CaImAn keeps tuples are accepted as they are (validation takes both)."""
    if not isinstance(doc, dict):
        raise ParameterError(f"{source}: expected a JSON object of parameters")
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}


def _elementwise(v):
    return np.atleast_1d(np.asarray(v, dtype=float))


def _from_files(fnames, data):
    """Frame shape and recorded frame rate (or None) of the movie ``data``
    names (``fnames`` with its plane, channel and NWB series); (None, None)
    while gpu_cnmf.io is unavailable."""
    try:
        from .io import open_movie
    except ImportError:
        return None, None
    select = {"plane": 0 if data["plane"] == "all" else data["plane"],
              "channel": data["channel"], "nwb_series": data["nwb_series"]}
    source = open_movie(fnames, var_name_hdf5=data["var_name_hdf5"],
                        **{k: v for k, v in select.items() if v is not None})
    try:
        return (tuple(int(d) for d in source.dims),
                (getattr(source, "metadata", None) or {}).get("fr"))
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()


# ----------------------------------------------------------------------------
# Exact JSON: JSON lacks tuples, arrays, slices, non-finite floats and numpy
# scalars, so those are written as {"__type__": kind, ...} objects.

_TAG = "__type__"
_ARRAY_KINDS = "biufcSU"


def _encode(v, where):
    if v is None or type(v) in (bool, str, int):
        return v
    if type(v) is float:
        return v if math.isfinite(v) else {_TAG: "float", "value": repr(v)}
    if isinstance(v, (np.ndarray, np.generic)):
        arr = np.asarray(v)
        if arr.dtype.kind not in _ARRAY_KINDS or arr.dtype.fields is not None:
            raise ParameterError(f"{where}: numpy dtype {arr.dtype} cannot be saved to JSON")
        fortran = arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous
        return {_TAG: "ndarray" if isinstance(v, np.ndarray) else "numpy_scalar",
                "dtype": arr.dtype.str, "shape": list(arr.shape),
                "order": "F" if fortran else "C",
                "data": base64.b64encode(arr.tobytes(order="F" if fortran else "C")).decode()}
    if isinstance(v, tuple) and type(v) is tuple:
        return {_TAG: "tuple", "items": [_encode(x, where) for x in v]}
    if type(v) is list:
        return [_encode(x, where) for x in v]
    if type(v) is dict:
        if all(isinstance(k, str) for k in v) and _TAG not in v:
            return {k: _encode(x, f"{where}[{k!r}]") for k, x in v.items()}
        return {_TAG: "dict", "items": [[_encode(k, where), _encode(x, where)]
                                        for k, x in v.items()]}
    if isinstance(v, slice):
        return {_TAG: "slice", "start": _encode(v.start, where),
                "stop": _encode(v.stop, where), "step": _encode(v.step, where)}
    if callable(v):
        name = f"{getattr(v, '__module__', None)}:{getattr(v, '__qualname__', None)}"
        try:
            found = _resolve(name)
        except (ImportError, AttributeError, ValueError):
            found = None
        if found is v:
            return {_TAG: "callable", "name": name}
        raise ParameterError(f"{where}: {v!r} cannot be saved to JSON (only functions "
                             "importable by module and name can)")
    raise ParameterError(f"{where}: a {type(v).__name__} cannot be saved to JSON")


def _resolve(name):
    module, _, qualname = name.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _decode(v):
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    kind = v.get(_TAG)
    if kind is None:
        return {k: _decode(x) for k, x in v.items()}
    if kind == "float":
        return float(v["value"])
    if kind in ("ndarray", "numpy_scalar"):
        flat = np.frombuffer(base64.b64decode(v["data"]), dtype=np.dtype(v["dtype"]))
        arr = flat.reshape(v["shape"], order=v["order"]).copy(order=v["order"])
        return arr if kind == "ndarray" else arr[()]
    if kind == "tuple":
        return tuple(_decode(x) for x in v["items"])
    if kind == "dict":
        return {_decode(k): _decode(x) for k, x in v["items"]}
    if kind == "slice":
        return slice(_decode(v["start"]), _decode(v["stop"]), _decode(v["step"]))
    if kind == "callable":
        return _resolve(v["name"])
    raise ParameterError(f"unknown encoded value type {kind!r} in parameter file")


def _same(a, b):
    """Exact equality: same types, same values (NaN equals NaN), arrays included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and \
            bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, slice):
        return _same(a.start, b.start) and _same(a.stop, b.stop) and _same(a.step, b.step)
    if isinstance(a, (float, np.floating)) and a != a:
        return b != b
    return bool(a == b)


def _short_repr(v, limit=100):
    if isinstance(v, np.ndarray):
        return f"array(shape={v.shape}, dtype={v.dtype})"
    text = repr(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------

def default_gsiz(gSig):
    """CaImAn's neuron box for a neuron radius: ``int(round(2 * gSig + 1))``
    per axis (the one place this default is derived)."""
    return [int(round(2 * float(x) + 1)) for x in np.atleast_1d(np.asarray(gSig, dtype=float))]


class CNMFParams:
    """All parameters of motion correction, CNMF/CNMF-E, deconvolution,
    component evaluation and Ring-CNN, in CaImAn's groups.

    Parameters
    ----------
    params_dict : dict, optional
        Flat ``{name: value}`` entries (a name in several groups sets all of
        them) and/or ``{group: {name: value}}`` entries.
    **kwargs
        Treated like ``params_dict`` entries (applied after it).

    Raises
    ------
    ParameterError
        An unknown name (with the closest valid one), a wrong type, a value
        out of range, or an inconsistent combination.
    """

    def __init__(self, params_dict=None, params_from_file=None, **kwargs):
        for group, table in GROUPS.items():
            setattr(self, group, {k: copy.deepcopy(d) for k, (d, _) in table.items()})
        # CaImAn's online (OnACID) group and CaImAn-only switches: kept, unused
        self.online = {}
        self.caiman_extra = {}
        self._derived = set(_DERIVABLE)
        if params_from_file is not None:
            self.change_params_from_jsonfile(params_from_file)
        updates = dict(params_dict or {})
        updates.update(kwargs)
        self.change_params(updates)

    # -- access ---------------------------------------------------------------
    def _group(self, group):
        group = _GROUP_ALIASES.get(group, group)
        if group == "online":
            return self.online
        if group not in GROUPS:
            best = _closest(group, GROUPS)
            hint = f"; did you mean {best!r}?" if best else ""
            raise ParameterError(f"unknown parameter group {group!r}{hint} "
                                 f"(groups: {', '.join(GROUPS)})")
        return getattr(self, group)

    def get(self, group, key):
        """The value of ``group.key``."""
        values = self._group(group)
        ours = _GROUP_ALIASES.get(group, group)
        alias = _ALIASES.get(key)
        if alias is not None and alias[0] == ours:
            key = alias[1]
        if key not in values:
            if (ours, key) in CAIMAN_EXTRA:
                return self.caiman_extra.get(f"{ours}.{key}", CAIMAN_EXTRA[ours, key][0])
            if ours == "online":
                raise ParameterError(f"online.{key} is not set (the online group is stored "
                                     "as given and not used by the offline pipeline)")
            raise _unknown(key, ours)
        return values[key]

    def get_group(self, group):
        """A (deep) copy of one group's dict; asked for by CaImAn's group name
        (``merging``) it uses CaImAn's key names (``merge_thr``)."""
        values = copy.deepcopy(self._group(group))
        ours = _GROUP_ALIASES.get(group, group)
        if ours != group:
            values = {CAIMAN_KEY_NAMES.get((ours, k), k): v for k, v in values.items()}
        return values

    def unused(self):
        """What was set but is not used by the offline pipeline: CaImAn's
        ``online`` group and CaImAn-only switches, as ``{'group.key': value}``."""
        out = {f"online.{k}": v for k, v in self.online.items()}
        out.update(self.caiman_extra)
        return out

    def to_dict(self):
        """``{group: {name: value}}``, a deep copy."""
        return {group: self.get_group(group) for group in GROUPS}

    def copy(self):
        return copy.deepcopy(self)

    @property
    def use_cuda(self):
        """``motion['use_cuda']``: the device choice for every stage."""
        return self.motion["use_cuda"]

    @use_cuda.setter
    def use_cuda(self, value):
        self.change_params({"motion": {"use_cuda": value}})

    def device(self):
        """The torch device every stage runs on (DeviceError if it is unusable)."""
        from .backend import get_device
        return get_device(self.use_cuda)

    # -- changes --------------------------------------------------------------
    def _route(self, params_dict):
        """Yield (group, key, value) for each entry of a flat/nested dict."""
        if not isinstance(params_dict, dict):
            raise ParameterError(f"params_dict: expected a dict, got {type(params_dict).__name__}")
        for key, value in params_dict.items():
            key = _GROUP_ALIASES.get(key, key)
            if key == "online":
                if not isinstance(value, dict):
                    raise ParameterError(f"online: a group name takes a dict of parameters, "
                                         f"got {type(value).__name__}")
                for sub, v in value.items():
                    yield key, sub, v
            elif key in GROUPS:
                if not isinstance(value, dict):
                    raise ParameterError(f"{key}: a group name takes a dict of parameters, "
                                         f"got {type(value).__name__}")
                for sub, v in value.items():
                    alias = _ALIASES.get(sub)
                    if alias is not None and alias[0] == key:
                        sub = alias[1]
                    if sub not in GROUPS[key] and (key, sub) not in CAIMAN_EXTRA:
                        raise _unknown(sub, key)
                    yield key, sub, v
            elif key in _LEGACY:
                yield from self._route({_LEGACY[key]: value})
            elif key in _ALIASES:
                yield (*_ALIASES[key], value)
            elif key in _OWNERS:
                for group in _OWNERS[key]:
                    yield group, key, value
            elif key in ONLINE_KEYS:
                yield "online", key, value
            else:
                extra = [g for (g, k) in CAIMAN_EXTRA if k == key]
                if not extra:
                    raise _unknown(key)
                yield extra[0], key, value

    def change_params(self, params_dict, allow_legacy=True, warn_unused=True, verbose=False):
        """Apply flat and/or nested updates; validate; return ``self``.

        Nothing is changed when any entry is rejected. CaImAn's spellings
        are accepted (group ``merging``/key ``merge_thr``, ``gnb``, ``k``,
        ``merge_thresh``, ``only_init_patch``, ``block_size_spat``, ...);
        with ``allow_legacy=False`` the legacy keyword names are refused.
        CaImAn's ``online`` group is stored and logged as unused (with
        ``warn_unused``).
        """
        if not allow_legacy and isinstance(params_dict, dict):
            legacy = sorted(set(params_dict) & set(_LEGACY))
            if legacy:
                raise ParameterError(f"{legacy[0]!r} is a legacy name (allow_legacy=False); "
                                     f"use {_LEGACY[legacy[0]]!r}")
        work = copy.deepcopy(self)
        changed = set()
        for group, key, value in work._route(params_dict):
            if group == "online":
                work.online[key] = copy.deepcopy(value)
                if warn_unused:
                    log.warning("online.%s is stored but not used: gpu_cnmf runs the offline "
                                "pipeline (CNMF/CNMF-E), not OnACID", key)
                continue
            if (group, key) in CAIMAN_EXTRA and key not in GROUPS[group]:
                off, instead = CAIMAN_EXTRA[group, key]
                if not _same(value, off) and not (_is_num(value) and _is_num(off) and value == off):
                    raise NotImplementedError(f"{group}.{key} = {value!r} is not supported by "
                                              f"gpu_cnmf (only {off!r}); nearest: {instead}")
                work.caiman_extra[f"{group}.{key}"] = value
                continue
            value = _as_path(copy.deepcopy(value)) if key in _PATH_KEYS else copy.deepcopy(value)
            getattr(work, group)[key] = value
            changed.add(f"{group}.{key}")
            if f"{group}.{key}" in _DERIVABLE:
                # an explicit value sticks; None asks for the derived one again
                (work._derived.add if value is None else work._derived.discard)(f"{group}.{key}")
            if verbose:
                print(f"{group}.{key} = {_short_repr(value)}")
        work._derive(changed)
        work.validate()
        for group in list(GROUPS) + ["online"]:   # in place: references stay live
            getattr(self, group).clear()
            getattr(self, group).update(getattr(work, group))
        self.caiman_extra = work.caiman_extra
        self._derived = work._derived
        return self

    def set(self, group, val_dict, set_if_not_exists=False, verbose=False):
        """CaImAn's spelling of ``change_params({group: val_dict})``.

        A name the group does not have is an error (with the closest name),
        unless ``set_if_not_exists``: then, as CaImAn does, it is kept (in
        :meth:`unused`, with a warning that nothing reads it).
        """
        self._group(group)
        ours = _GROUP_ALIASES.get(group, group)
        val_dict = dict(val_dict)
        if set_if_not_exists and ours in GROUPS:
            for key in list(val_dict):
                alias = _ALIASES.get(key)
                known = key in GROUPS[ours] or (ours, key) in CAIMAN_EXTRA or \
                    (alias is not None and alias[0] == ours)
                if not known:
                    log.warning("%s.%s is not a parameter of gpu_cnmf: kept, unused", ours, key)
                    self.caiman_extra[f"{ours}.{key}"] = copy.deepcopy(val_dict.pop(key))
        return self.change_params({group: val_dict}, verbose=verbose)

    def check_consistency(self):
        """CaImAn's name for :meth:`validate` (raises ParameterError)."""
        self.validate()

    def _derive(self, changed):
        if "init.gSiz" in self._derived and _is_seq(self.init["gSig"]) and \
                self._rule_problem("init", "gSig") is None:
            self.init["gSiz"] = default_gsiz(self.init["gSig"])
        fnames = self.data["fnames"]
        want_dims = "data.dims" in self._derived and bool(fnames) and \
            (self.data["dims"] is None or bool(changed & _MOVIE_KEYS))
        # data.fr, until set, is the rate the movie's metadata records (else
        # the default); data.fr = None asks for that again
        want_fr = "data.fr" in self._derived and \
            (self.data["fr"] is None or bool(changed & _MOVIE_KEYS))
        if want_dims or want_fr:
            dims = fr = None
            if fnames:
                try:
                    dims, fr = _from_files(fnames, self.data)
                except GpuCnmfError:
                    if want_dims:
                        raise
            if want_dims:
                self.data["dims"] = dims
            if want_fr:
                self.data["fr"] = float(fr) if fr is not None else GROUPS["data"]["fr"][0]

    # -- validation -----------------------------------------------------------
    def _rule_problem(self, group, key):
        return GROUPS[group][key][1].problem(getattr(self, group)[key])

    def validate(self):
        """Check every value and the combinations; raise ParameterError."""
        for group, table in GROUPS.items():
            values = getattr(self, group)
            for key in table:
                if key not in values:
                    raise ParameterError(f"{group}.{key} is missing")
                problem = self._rule_problem(group, key)
                if problem:
                    raise ParameterError(f"{group}.{key} = {_short_repr(values[key])}: {problem}")
            extra = set(values) - set(table)
            if extra:
                raise _unknown(sorted(extra)[0], group)
        self._check_combinations()

    def _check_combinations(self):
        def fail(msg):
            raise ParameterError(msg)

        gsig, gsiz, dims = self.init["gSig"], self.init["gSiz"], self.data["dims"]
        if gsiz is not None:
            if len(gsiz) != len(gsig):
                fail(f"init.gSiz = {gsiz!r} and init.gSig = {gsig!r}: expected the same length")
            if np.any(_elementwise(gsiz) < _elementwise(gsig)):
                fail(f"init.gSiz = {gsiz!r} is smaller than init.gSig = {gsig!r}: expected "
                     "gSiz >= gSig (the default is 2*gSig+1)")
        if dims is not None and len(gsig) != len(dims):
            fail(f"init.gSig = {gsig!r}: expected {len(dims)} values for data.dims = {dims!r}")

        rf, stride = self.patch["rf"], self.patch["stride"]
        if rf is not None:
            if _is_seq(rf) and dims is not None and len(rf) != len(dims):
                fail(f"patch.rf = {rf!r}: expected one value or {len(dims)} for "
                     f"data.dims = {dims!r}")
            if stride is not None:
                try:
                    bad = np.any(_elementwise(stride) >= 2 * _elementwise(rf))
                except ValueError:
                    fail(f"patch.stride = {stride!r} does not match patch.rf = {rf!r} in length")
                if bad:
                    fail(f"patch.stride = {stride!r} must be smaller than 2*patch.rf = "
                         f"2*{rf!r}: stride is the overlap of patches of size 2*rf+1")

        m = self.motion
        n = 3 if m["is3D"] else 2
        for key in ("max_shifts", "strides", "overlaps"):
            if len(m[key]) != n:
                fail(f"motion.{key} = {m[key]!r}: expected {n} values "
                     f"(motion.is3D = {m['is3D']})")
        if np.any(_elementwise(m["overlaps"]) >= _elementwise(m["strides"])):
            fail(f"motion.overlaps = {m['overlaps']!r} must be smaller than motion.strides = "
                 f"{m['strides']!r} in every dimension")

        q = self.quality
        for low, high in (("SNR_lowest", "min_SNR"), ("rval_lowest", "rval_thr"),
                          ("cnn_lowest", "min_cnn_thr")):
            if q[low] > q[high]:
                fail(f"quality.{low} = {q[low]!r} must not exceed quality.{high} = {q[high]!r}")

    # -- saving ---------------------------------------------------------------
    def to_json(self, path=None):
        """The parameters as JSON text (written to ``path`` when given).

        Types survive exactly: tuples, numpy arrays and scalars, slices,
        non-finite floats; the file is written under a temporary name first.
        """
        doc = {"format": "gpu_cnmf.CNMFParams", "version": 1,
               "derived": sorted(self._derived),
               "online": {k: _encode(v, f"online.{k}") for k, v in self.online.items()},
               "params": {g: {k: _encode(v, f"{g}.{k}") for k, v in getattr(self, g).items()}
                          for g in GROUPS}}
        # one line per parameter: readable, and diffs show which value changed
        groups = [f' "{g}": {{\n' + ",\n".join(
            f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in values.items())
            + "\n }" for g, values in doc.pop("params").items()]
        head = json.dumps(doc)[:-1]
        text = head + ', "params": {\n' + ",\n".join(groups) + "\n}}\n"
        if path is not None:
            path = Path(path)
            tmp = path.with_name(path.name + ".tmp")
            try:
                tmp.write_text(text)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return text

    @classmethod
    def from_json_text(cls, text, source="JSON text"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ParameterError(f"{source}: not valid JSON ({err})") from err
        if not isinstance(doc, dict):
            raise ParameterError(f"{source}: expected a JSON object of parameters")
        if doc.get("format") != "gpu_cnmf.CNMFParams":
            # CaImAn's parameter files: {group: {name: value}} (or flat names)
            try:
                return cls(params_dict=_from_caiman_json(doc, source))
            except ParameterError as err:
                raise ParameterError(f"{source}: not a gpu_cnmf parameter file (format "
                                     f"'gpu_cnmf.CNMFParams') nor a CaImAn one: {err}") from err
        groups = {g: {k: _decode(v) for k, v in values.items()}
                  for g, values in doc["params"].items()}
        groups["online"] = {k: _decode(v) for k, v in doc.get("online", {}).items()}
        obj = cls(params_dict=groups)
        obj._derived = set(doc.get("derived", ())) & set(_DERIVABLE)
        return obj

    def change_params_from_jsonfile(self, json_fname, verbose=False):
        """Apply a JSON parameter file: one written by :meth:`to_json` or
        CaImAn's (``{group: {name: value}}``, e.g. its demos' files)."""
        path = Path(json_fname)
        if not path.is_file():
            raise ParameterError(f"{path}: parameter file not found")
        text = path.read_text()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ParameterError(f"{path}: not valid JSON ({err})") from err
        if isinstance(doc, dict) and doc.get("format") == "gpu_cnmf.CNMFParams":
            other = CNMFParams.from_json_text(text, source=str(path))
            return self.change_params(other.to_dict() | {"online": other.online},
                                      verbose=verbose, warn_unused=False)
        return self.change_params(_from_caiman_json(doc, str(path)), verbose=verbose)

    def to_jsonfile(self, targfn):
        """Write :meth:`to_json` to ``targfn`` (CaImAn's name)."""
        self.to_json(targfn)

    @classmethod
    def from_json(cls, path):
        """Read parameters written by :meth:`to_json`."""
        return cls.from_json_text(Path(path).read_text(), source=str(path))

    save = to_json
    load = from_json

    # -- comparison and display ----------------------------------------------
    def __eq__(self, other):
        if not isinstance(other, CNMFParams):
            return NotImplemented
        return all(_same(getattr(self, g), getattr(other, g)) for g in list(GROUPS) + ["online"])

    __hash__ = None

    def __repr__(self):
        lines = ["CNMFParams("]
        for group in GROUPS:
            lines.append(f"  {group}:")
            lines += [f"    {k} = {_short_repr(v)}" for k, v in getattr(self, group).items()]
        return "\n".join(lines + [")"])
