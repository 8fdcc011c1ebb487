"""Results files: parameters, CNMF estimates and motion-correction output in
one HDF5 file, laid out as CaImAn's ``cnmf.save`` lays it out, and export to
NWB.

Layout (what readers of CaImAn results rely on)::

    /params/<group>/<name>      every parameter as a dataset, CaImAn-style
                                (None as the string 'NoneType', tuples and
                                lists as arrays, strings as strings), under
                                CaImAn's names: group ``merging`` (key
                                ``merge_thr``), ``block_size_spat``/``_temp``,
                                ``num_blocks_per_run_spat``/``_temp``, and
                                the ``online`` group when one was set
    /params.attrs['json']       the exact parameters (CNMFParams.to_json)
    /estimates/<field>          C, S, YrA, b, f, sn, g, bl, c1, neurons_sn,
                                idx_components, SNR_comp, r_values, Cn, ...
    /estimates/A/{data,indices,indptr,shape}   the footprints, CSC
    /dims                       frame shape (CaImAn keeps it on the CNMF object)
    /motion/<field>             shifts_rig, x_shifts_els, y_shifts_els,
                                total_template_rig, ... (ours; absent without)
    /extra/<name>               anything else (summary images, run log)

Every dataset and group we write carries an attribute ``kind`` telling
:func:`load_results` the exact Python type it came from (tuple, list, int,
str, None, csc/csr matrix, ...), so a save/load round trip gives back the
same types, dtypes and values; CaImAn's own reader ignores the attribute.
Files without it (written by CaImAn) are read by the usual conventions.

A file is written under a temporary name in the target folder and renamed
when complete: an error part-way leaves neither a partial file nor a
damaged older one.
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from .. import __version__
from ..errors import MovieError, OptionalDependencyError, ParameterError
from ..params import CAIMAN_GROUP_NAMES, CAIMAN_KEY_NAMES

__all__ = ["save_results", "load_results", "export_nwb", "OptionalDependencyError",
           "atomic_write", "require_extra", "RESULTS_FORMAT"]

RESULTS_FORMAT = "gpu_cnmf.results"
_VERSION = 1
_NONE = "NoneType"                   # CaImAn's marker for None
_SPARSE_PARTS = ("data", "indices", "indptr", "shape")
# h5py cannot store these dtypes natively
_PLAIN_KINDS = "biufc"
_SPARRAY = getattr(sp, "sparray", ())     # scipy >= 1.11 sparse arrays


def require_extra(module: str, extra: str, feature: str):
    """Import ``module`` or raise :class:`OptionalDependencyError` naming the
    pip extra that provides it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise OptionalDependencyError(
            f"{feature} needs the optional package {module!r}, which is not installed; "
            f"install it with: pip install 'gpu_cnmf[{extra}]'") from err


# ---------------------------------------------------------------------------
# atomic file creation

def atomic_write(path, write):
    """Call ``write(tmp_path)`` and rename the result to ``path``.

    The temporary file lives in the target folder (so the rename is atomic)
    and is removed on any error, including KeyboardInterrupt.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ParameterError(f"{path}: the folder {str(folder)!r} does not exist")
    # the temporary name keeps the extension (writers such as pynwb check it)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


# ---------------------------------------------------------------------------
# exact encoding (estimates, motion, extra)

def _is_plain_scalar_list(v, typ):
    return len(v) > 0 and all(type(x) is typ for x in v)


def _write(parent: h5py.Group, key: str, v, where: str) -> None:
    """Store ``v`` under ``parent[key]`` so that :func:`_read` gives it back
    exactly; raise ParameterError naming ``where`` for an unsupported type."""
    if not isinstance(key, str) or not key or "/" in key or key in (".", ".."):
        raise ParameterError(f"{where}: the name {key!r} cannot be an HDF5 member "
                             "(expected a non-empty string without '/')")
    if v is None:
        parent[key] = _NONE
        parent[key].attrs["kind"] = "none"
    elif sp.issparse(v):
        A = v.tocsc()
        g = parent.create_group(key)
        g["data"], g["indices"], g["indptr"] = A.data, A.indices, A.indptr
        g["shape"] = np.asarray(A.shape, dtype=np.int64)
        g.attrs["kind"] = "sparse"
        g.attrs["format"] = v.format
        g.attrs["container"] = "array" if isinstance(v, _SPARRAY) else "matrix"
    elif isinstance(v, np.ndarray):
        _write_array(parent, key, v, where)
    elif isinstance(v, (np.generic,)) and not isinstance(v, (np.str_, np.bytes_)):
        if v.dtype.kind not in _PLAIN_KINDS:
            raise ParameterError(f"{where}: a numpy {v.dtype} scalar cannot be saved")
        parent[key] = v
        parent[key].attrs["kind"] = "npscalar"
    elif type(v) in (bool, int, float, complex):
        try:
            parent[key] = v
        except OverflowError as err:
            raise ParameterError(f"{where}: {v!r} does not fit in 64 bits") from err
        parent[key].attrs["kind"] = type(v).__name__
    elif isinstance(v, str):
        parent.create_dataset(key, data=str(v), dtype=h5py.string_dtype())
        parent[key].attrs["kind"] = "str"
    elif isinstance(v, bytes):
        parent[key] = np.frombuffer(v, dtype=np.uint8)
        parent[key].attrs["kind"] = "bytes"
    elif type(v) in (list, tuple):
        kind = type(v).__name__
        for typ in (bool, int, float):
            if _is_plain_scalar_list(v, typ):
                try:
                    parent[key] = np.asarray(v, dtype={bool: np.bool_, int: np.int64,
                                                       float: np.float64}[typ])
                except OverflowError:
                    break
                parent[key].attrs["kind"] = kind
                parent[key].attrs["elem"] = typ.__name__
                return
        if _is_plain_scalar_list(v, str):
            parent.create_dataset(key, data=np.asarray(v, dtype=object),
                                  dtype=h5py.string_dtype())
            parent[key].attrs["kind"] = kind
            parent[key].attrs["elem"] = "str"
            return
        g = parent.create_group(key, track_order=True)
        g.attrs["kind"] = kind
        g.attrs["length"] = len(v)
        for i, x in enumerate(v):
            _write(g, str(i), x, f"{where}[{i}]")
    elif type(v) is dict:
        g = parent.create_group(key, track_order=True)
        g.attrs["kind"] = "dict"
        for k, x in v.items():
            _write(g, k, x, f"{where}[{k!r}]")
    elif isinstance(v, slice):
        parts = [v.start, v.stop, v.step]
        if not all(p is None or isinstance(p, (int, np.integer)) for p in parts):
            raise ParameterError(f"{where}: only slices of integers can be saved, got {v!r}")
        parent[key] = np.asarray([0 if p is None else int(p) for p in parts], np.int64)
        parent[key].attrs["kind"] = "slice"
        parent[key].attrs["none"] = np.asarray([p is None for p in parts])
    else:
        raise ParameterError(f"{where}: a value of type {type(v).__name__} cannot be saved "
                             "to a results file (expected arrays, sparse matrices, numbers, "
                             "strings, None, lists, tuples or dicts of those)")


def _write_array(parent, key, v, where):
    if v.dtype.kind in _PLAIN_KINDS and v.dtype.fields is None:
        parent.create_dataset(key, data=v)
        parent[key].attrs["kind"] = "ndarray"
    elif v.dtype.kind == "U":
        parent.create_dataset(key, data=v.astype(object), dtype=h5py.string_dtype())
        parent[key].attrs["kind"] = "str_ndarray"
        parent[key].attrs["dtype"] = v.dtype.str
    elif v.dtype.kind == "S":
        parent.create_dataset(key, data=v)
        parent[key].attrs["kind"] = "ndarray"
    elif v.dtype.kind == "O":
        g = parent.create_group(key, track_order=True)
        g.attrs["kind"] = "object_ndarray"
        g.attrs["shape"] = np.asarray(v.shape, dtype=np.int64)
        for i, x in enumerate(v.ravel()):
            _write(g, str(i), x, f"{where}[{i}]")
    else:
        raise ParameterError(f"{where}: numpy arrays of dtype {v.dtype} cannot be saved")


def _children(g: h5py.Group):
    """Members of a list-like group in index order."""
    return [g[str(i)] for i in range(len(g))]


def _read(node):
    """Inverse of :func:`_write`; CaImAn conventions for nodes without ``kind``."""
    kind = node.attrs.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode()
    if isinstance(node, h5py.Group):
        if kind == "sparse":
            data, indices, indptr = node["data"][()], node["indices"][()], node["indptr"][()]
            shape = tuple(int(s) for s in node["shape"][()])
            cls = sp.csc_array if node.attrs.get("container") == "array" else sp.csc_matrix
            A = cls((data, indices, indptr), shape=shape)
            if A.indices.dtype != indices.dtype:   # scipy may narrow the index dtype
                A.indices, A.indptr = indices, indptr
            fmt = node.attrs.get("format", "csc")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            return A if fmt == "csc" else A.asformat(fmt)
        if kind in ("list", "tuple"):
            items = [_read(c) for c in _children(node)]
            return items if kind == "list" else tuple(items)
        if kind == "object_ndarray":
            shape = tuple(int(s) for s in node.attrs["shape"])
            out = np.empty(int(np.prod(shape)), dtype=object)
            for i, c in enumerate(_children(node)):
                out[i] = _read(c)
            return out.reshape(shape)
        if kind is None and set(_SPARSE_PARTS) <= set(node):
            # CaImAn's sparse footprints
            return sp.csc_matrix((node["data"][()], node["indices"][()], node["indptr"][()]),
                                 shape=tuple(int(s) for s in node["shape"][()]))
        return {k: _read(c) for k, c in node.items()}

    if kind == "none":
        return None
    if kind == "str":
        return node.asstr()[()]
    if kind == "str_ndarray":
        return np.asarray(node.asstr()[()], dtype=np.dtype(node.attrs["dtype"]))
    if kind == "bytes":
        return node[()].tobytes()
    if kind in ("bool", "int", "float", "complex"):
        return {"bool": bool, "int": int, "float": float, "complex": complex}[kind](node[()])
    if kind in ("list", "tuple"):
        elem = node.attrs["elem"]
        elem = elem.decode() if isinstance(elem, bytes) else elem
        if elem == "str":
            items = list(node.asstr()[()])
        else:
            conv = {"bool": bool, "int": int, "float": float}[elem]
            items = [conv(x) for x in node[()]]
        return items if kind == "list" else tuple(items)
    if kind == "slice":
        vals, none = node[()], node.attrs["none"]
        return slice(*(None if n else int(x) for x, n in zip(vals, none)))
    # ndarray, npscalar, or a CaImAn dataset
    value = node[()]
    if kind == "ndarray":
        return np.asarray(value) if node.shape == () else value
    if kind == "npscalar":
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and value == _NONE:
        return None
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        return np.asarray([x.decode("utf-8", "replace") if isinstance(x, bytes) else x
                           for x in value.ravel()], dtype=object).reshape(value.shape)
    return value


# ---------------------------------------------------------------------------
# CaImAn-style parameters (for other readers; exactness comes from the JSON)

def _write_caiman_value(parent: h5py.Group, key: str, v) -> None:
    if v is None:
        parent[key] = _NONE
    elif isinstance(v, dict):
        g = parent.create_group(key)
        for k, x in v.items():
            _write_caiman_value(g, str(k), x)
    elif isinstance(v, str):
        parent.create_dataset(key, data=v, dtype=h5py.string_dtype())
    elif isinstance(v, (bool, int, float, np.generic)) and not isinstance(v, np.str_):
        parent[key] = v
    elif isinstance(v, np.ndarray) and v.dtype.kind in _PLAIN_KINDS:
        parent[key] = v
    elif isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
        parent.create_dataset(key, data=np.asarray(v, dtype=object),
                              dtype=h5py.string_dtype())
    else:
        arr = None
        if isinstance(v, (list, tuple)) and not any(x is None for x in v):
            try:
                arr = np.asarray(v)
            except (ValueError, TypeError):
                arr = None
        if arr is not None and arr.dtype.kind in _PLAIN_KINDS:
            parent[key] = arr
        else:
            # slices, callables, [7, None]: CaImAn writes these as text too
            parent.create_dataset(key, data=repr(v), dtype=h5py.string_dtype())


def _as_params(params):
    from ..params import CNMFParams
    if params is None or isinstance(params, CNMFParams):
        return params
    if isinstance(params, dict):
        return CNMFParams(params_dict=params)
    raise ParameterError(f"params: expected a CNMFParams or a dict of parameter groups, "
                         f"got {type(params).__name__}")


def _as_fields(obj, name):
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    raise ParameterError(f"{name}: expected a dict (or an object with attributes), "
                         f"got {type(obj).__name__}")


# ---------------------------------------------------------------------------
# public API

def save_results(path, params_dict, estimates_dict, motion: dict | None = None,
                 extra: dict | None = None) -> str:
    """Write parameters, estimates and motion output to an HDF5 results file.

    Parameters
    ----------
    path : str or Path
        Target file (``.hdf5``/``.h5``); replaced atomically if it exists.
    params_dict : CNMFParams or dict
        The parameters (a ``{group: {name: value}}`` dict is turned into a
        CNMFParams, so it is validated).
    estimates_dict : dict or Estimates
        CNMF results by CaImAn's field names (``A`` sparse pixels x K,
        ``C``, ``S``, ``b``, ``f``, ``YrA``, ``dims``, ``idx_components``,
        ``Cn``, ...). Private attributes (``_name``) are skipped.
    motion : dict, optional
        Motion-correction output (``shifts_rig``, ``x_shifts_els``,
        ``y_shifts_els``, ``total_template_rig``, ...).
    extra : dict, optional
        Anything else to keep (summary images, a run log).

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    ParameterError
        A value that cannot be stored (its field is named), or the target
        folder does not exist. Nothing is left at ``path`` in that case.
    """
    params = _as_params(params_dict)
    estimates = _as_fields(estimates_dict, "estimates")
    motion = _as_fields(motion, "motion")
    extra = _as_fields(extra, "extra")
    # encode the parameters before touching the disk: a bad one fails early
    params_json = params.to_json() if params is not None else None

    def write(tmp):
        with h5py.File(tmp, "w", libver=("v108", "latest"), track_order=True) as h5:
            h5.attrs["format"] = RESULTS_FORMAT
            h5.attrs["format_version"] = _VERSION
            h5.attrs["gpu_cnmf_version"] = __version__
            h5.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            if params is not None:
                g = h5.create_group("params")
                # the exact parameters; large attributes need the 1.8+ format
                g.attrs["json"] = params_json
                # CaImAn's group and key names, so that its load_CNMF reads them
                groups = params.to_dict()
                if params.online:
                    groups["online"] = params.online
                for group, values in groups.items():
                    gg = g.create_group(CAIMAN_GROUP_NAMES.get(group, group))
                    for k, v in values.items():
                        _write_caiman_value(gg, CAIMAN_KEY_NAMES.get((group, k), k), v)
            if estimates is not None:
                g = h5.create_group("estimates", track_order=True)
                g.attrs["kind"] = "dict"
                for k, v in estimates.items():
                    _write(g, k, v, f"estimates.{k}")
                dims = estimates.get("dims")
                if dims is not None:
                    h5["dims"] = np.asarray(dims, dtype=np.int64)
            for name, fields in (("motion", motion), ("extra", extra)):
                if fields is not None:
                    g = h5.create_group(name, track_order=True)
                    g.attrs["kind"] = "dict"
                    for k, v in fields.items():
                        _write(g, k, v, f"{name}.{k}")

    return atomic_write(path, write)


def load_results(path) -> dict:
    """Read a results file written by :func:`save_results` (or CaImAn's
    ``cnmf.save``).

    Returns
    -------
    dict
        ``params``: a CNMFParams (for a CaImAn file: built from the
        parameters it understands; the others are listed in
        ``skipped_params``); ``estimates``: dict of fields (``A`` sparse);
        ``motion`` and ``extra``: dicts or None; ``attrs``: file attributes.

    Raises
    ------
    MovieError
        The file is missing or is not an HDF5 results file.
    """
    path = Path(path)
    if not path.is_file():
        raise MovieError(f"{path}: results file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise MovieError(f"{path}: not a readable HDF5 results file ({err})") from err
    with h5:
        if "estimates" not in h5 and "params" not in h5:
            raise MovieError(f"{path}: not a results file (no 'estimates' or 'params' group)")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
        out = {"params": None, "estimates": None, "motion": None, "extra": None,
               "attrs": attrs, "skipped_params": []}
        if "params" in h5:
            out["params"], out["skipped_params"] = _load_params(h5["params"], path)
        for name in ("estimates", "motion", "extra"):
            if name in h5:
                out[name] = _read(h5[name])
        est = out["estimates"]
        if est is not None and est.get("dims") is None and "dims" in h5:
            est["dims"] = tuple(int(d) for d in h5["dims"][()])
    return out


def _load_params(g: h5py.Group, path):
    from ..params import CNMFParams
    text = g.attrs.get("json")
    if text is not None:
        text = text.decode() if isinstance(text, bytes) else str(text)
        return CNMFParams.from_json_text(text, source=f"{path}:/params"), []
    # a CaImAn file: take what validates, one parameter at a time
    params, skipped = CNMFParams(), []
    for group, gg in g.items():
        if not isinstance(gg, h5py.Group):
            continue
        for key, node in gg.items():
            value = _read(node)
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "biufOU":
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            try:
                params.change_params({group: {key: value}}, warn_unused=False)
            except (ParameterError, NotImplementedError, TypeError, ValueError):
                skipped.append(f"{group}.{key}")
    return params, skipped


# ---------------------------------------------------------------------------
# NWB

def _footprint_masks(A, dims):
    """Footprints (pixels x K, Fortran pixel order) as (K, *dims) images."""
    A = sp.csc_matrix(A)
    K = A.shape[1]
    dense = A.toarray().T.reshape((K,) + tuple(dims)[::-1])
    return dense.transpose((0,) + tuple(range(len(dims), 0, -1)))


def export_nwb(path, estimates, params, session_description: str = "gpu_cnmf results",
               identifier: str | None = None, session_start_time: datetime | None = None,
               imaging_plane_location: str = "unknown", indicator: str = "unknown",
               excitation_lambda: float = float("nan"), emission_lambda: float = float("nan"),
               imaging_plane_description: str = "imaging plane analysed by gpu_cnmf",
               experiment_description: str | None = None, starting_time: float = 0.0,
               imaging_plane_name: str | None = None,
               imaging_series_name: str | None = None) -> str:
    """Write the components to an NWB file (needs ``pynwb``: the extra
    ``gpu_cnmf[formats]``).

    The file holds an ``ophys`` processing module with an
    ``ImageSegmentation``/``PlaneSegmentation`` of the footprints as image
    masks (a column ``accepted`` when the components were evaluated) and a
    ``Fluorescence`` container with the traces ``C`` as a
    ``RoiResponseSeries`` (and ``S`` when present as ``Deconvolved``).

    Parameters
    ----------
    path : str or Path
        Target ``.nwb`` file, written atomically.
    estimates : dict or Estimates
        Needs ``A``, ``C``, ``dims``; uses ``S``, ``idx_components``.
    params : CNMFParams or dict
        For the frame rate (``data.fr``).

    Raises
    ------
    OptionalDependencyError
        pynwb is not installed.
    """
    require_extra("pynwb", "formats", "NWB export")
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import Fluorescence, ImageSegmentation, OpticalChannel, RoiResponseSeries

    est = _as_fields(estimates, "estimates")
    params = _as_params(params)
    for name in ("A", "C", "dims"):
        if est.get(name) is None:
            raise ParameterError(f"estimates.{name}: needed for NWB export, got None")
    dims = tuple(int(d) for d in est["dims"])
    masks = _footprint_masks(est["A"], dims)
    C = np.asarray(est["C"])
    K = masks.shape[0]
    fr = float(params.data["fr"]) if params is not None else 30.0

    nwb = NWBFile(session_description=session_description,
                  identifier=identifier or f"gpu_cnmf-{datetime.now().strftime('%Y%m%dT%H%M%S')}",
                  session_start_time=session_start_time or datetime.now(timezone.utc),
                  experiment_description=experiment_description)
    device = nwb.create_device(name="Microscope", description="unknown")
    channel = OpticalChannel(name="OpticalChannel", description="unknown",
                             emission_lambda=float(emission_lambda))
    plane = nwb.create_imaging_plane(
        name=imaging_plane_name or "ImagingPlane", optical_channel=channel, imaging_rate=fr,
        description=imaging_plane_description, device=device,
        excitation_lambda=float(excitation_lambda), indicator=indicator,
        location=imaging_plane_location)
    ophys = nwb.create_processing_module(name="ophys", description="CNMF (gpu_cnmf) results")
    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    planes = segmentation.create_plane_segmentation(
        name="PlaneSegmentation", description="CNMF spatial footprints (A)",
        imaging_plane=plane)
    for k in range(K):
        planes.add_roi(image_mask=masks[k])
    good = est.get("idx_components")
    if good is not None:
        accepted = np.zeros(K, bool)
        accepted[np.asarray(good, dtype=int)] = True
        planes.add_column(name="accepted", description="passed component evaluation",
                          data=accepted.tolist())
    rois = planes.create_roi_table_region(region=list(range(K)), description="all components")
    series = [RoiResponseSeries(name=imaging_series_name or "RoiResponseSeries", data=C.T,
                                rois=rois, unit="a.u.", rate=fr, starting_time=float(starting_time),
                                description="denoised calcium traces C")]
    if est.get("S") is not None:
        series.append(RoiResponseSeries(name="Deconvolved", data=np.asarray(est["S"]).T,
                                        rois=rois, unit="a.u.", rate=fr,
                                        starting_time=float(starting_time),
                                        description="deconvolved activity S"))
    ophys.add(Fluorescence(roi_response_series=series))

    def write(tmp):
        with NWBHDF5IO(tmp, "w") as io:
            io.write(nwb)

    return atomic_write(path, write)
