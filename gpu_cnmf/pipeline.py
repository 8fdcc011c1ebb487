"""The whole analysis of a movie in one call: :func:`run_pipeline`.

Stages, as a CaImAn user runs them by hand:

1. check the inputs (files exist and are movies with enough frames and no
   NaNs; parameters parse; the device exists; the output folder exists);
2. motion correction (``MotionCorrect``, rigid or piecewise-rigid as
   ``motion['pw_rigid']`` says), whose last pass writes the pixels x T
   C-order memmap CNMF reads (``Yr_d1_.._order_C_..``) and accumulates the
   summary images (mean, max, std and the local correlation image ``Cn``);
3. CNMF on patches (``CNMF.fit``) and 4. ``refit`` on the whole field of view;
5. component evaluation (SNR, spatial correlation, CNN);
6. the results file (:func:`gpu_cnmf.io.results.save_results`), written
   atomically.

Memory maps go to a temporary folder removed at the end (``keep_memmap``
puts them next to the results instead). Each stage prints a line (and
motion correction its own progress bars) on stderr; the returned
:class:`PipelineResult` prints a closing summary.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backend
from .errors import MovieError, ParameterError
from .params import CNMFParams

__all__ = ["run_pipeline", "run_batch", "PipelineResult", "load_params_file", "check_inputs",
           "movie_selection", "plane_outputs"]

log = logging.getLogger(__name__)
_log = logging.getLogger("gpu_cnmf")

_STAGES = ("validate", "motion correction", "CNMF fit", "refit", "evaluation", "save")
RING_STAGE = "Ring-CNN background"


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did: where the results are, how many
    components were accepted and rejected, seconds per stage, the device."""

    out_path: str
    n_frames: int
    dims: tuple
    n_components: int
    idx_components: np.ndarray
    idx_components_bad: np.ndarray
    timings: dict
    device: str
    fnames: list
    memmap_files: list = field(default_factory=list)
    estimates: object = None
    params: CNMFParams | None = None
    fr_origin: str = ""
    passes: dict = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)

    @property
    def n_accepted(self) -> int:
        return int(len(self.idx_components))

    @property
    def n_rejected(self) -> int:
        return int(len(self.idx_components_bad))

    def summary(self) -> str:
        """The closing summary as text (one stage per line)."""
        dims = "x".join(str(d) for d in self.dims)
        n_files = len(self.fnames)
        lines = [f"gpu-cnmf: {n_files} movie file{'s' if n_files != 1 else ''}, "
                 f"{self.n_frames} frames of {dims}, on {self.device}",
                 f"  components: {self.n_components} found, {self.n_accepted} accepted, "
                 f"{self.n_rejected} rejected",
                 *([f"  {self.fr_origin}"] if self.fr_origin else []),
                 "  per stage: seconds, peak anonymous memory (MiB), passes over the "
                 "movie read / written:"]
        for name, sec in self.timings.items():
            r, w = self.passes.get(name, (0.0, 0.0))
            peak = self.peak_memory.get(name, 0) / 1024**2
            lines.append(f"    {name:<20s} {sec:8.2f} s {peak:8.0f} MiB {r:6.2f} r {w:5.2f} w")
        r = sum(v[0] for v in self.passes.values())
        w = sum(v[1] for v in self.passes.values())
        peak = max(self.peak_memory.values(), default=0) / 1024**2
        lines.append(f"    {'total':<20s} {sum(self.timings.values()):8.2f} s {peak:8.0f} MiB "
                     f"{r:6.2f} r {w:5.2f} w")
        lines.append(f"  results: {self.out_path}")
        if self.memmap_files:
            lines.append("  memory-mapped movies kept: " + ", ".join(self.memmap_files))
        return "\n".join(lines)

    __str__ = summary


# ---------------------------------------------------------------------------
# parameters from a file

def load_params_file(path) -> CNMFParams:
    """Parameters from a JSON file: either written by ``CNMFParams.to_json``
    or a plain ``{name: value}`` / ``{group: {name: value}}`` object as a
    user writes it by hand (lists stand for tuples).

    Raises
    ------
    ParameterError
        The file is missing, not valid JSON, not an object, or holds an
        unknown or invalid parameter; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"{path}: parameter file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ParameterError(f"{path}: cannot read the parameter file ({err})") from err
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ParameterError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, "
                             f"column {err.colno})") from err
    if not isinstance(doc, dict):
        raise ParameterError(f"{path}: expected a JSON object of parameters "
                             f"({{\"name\": value}}), got a {type(doc).__name__}")
    try:
        if doc.get("format") == "gpu_cnmf.CNMFParams":
            return CNMFParams.from_json_text(text, source=str(path))
        return CNMFParams(params_dict=doc)
    except ParameterError as err:
        msg = str(err)
        raise ParameterError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from err


# ---------------------------------------------------------------------------
# input checks

def _as_paths(fnames) -> list[str]:
    if isinstance(fnames, (str, os.PathLike)):
        fnames = [fnames]
    if not isinstance(fnames, (list, tuple)) or not fnames:
        raise MovieError("fnames: expected a movie file or a non-empty list of movie files")
    out = []
    for f in fnames:
        if not isinstance(f, (str, os.PathLike)):
            raise MovieError(f"fnames: expected file paths, got a {type(f).__name__}")
        out.append(os.fspath(f))
    return out


def min_frames(params: CNMFParams) -> int:
    """Fewest frames CNMF can work with: the AR(p) time constants are fitted
    on ``lags + p`` autocovariance lags, so ``lags + p + 1`` frames at least."""
    t = params.temporal
    return max(2, int(t["lags"]) + int(t["p"]) + 1)


def movie_selection(params: CNMFParams) -> dict:
    """The :func:`~gpu_cnmf.io.open_movie` arguments that ``params.data``
    sets: ``var_name_hdf5``, ``plane``, ``channel``, ``nwb_series``."""
    d = params.data
    if d["plane"] == "all":
        raise ParameterError("data.plane = 'all' runs each plane as its own movie: use "
                             "run_pipeline, or pick one plane (an integer)")
    return {"var_name_hdf5": d["var_name_hdf5"], "plane": d["plane"], "channel": d["channel"],
            "nwb_series": d["nwb_series"]}


def _check_planes(path, src, params: CNMFParams) -> None:
    """A multi-plane recording read as a volume needs motion.is3D; say how
    to pick a plane otherwise."""
    n_planes = src.metadata.get("n_planes", 1)
    if n_planes > 1 and src.metadata.get("plane") is None and not params.motion["is3D"]:
        raise MovieError(f"{path}: the recording holds {n_planes} planes; pick one with "
                         f"data.plane (--plane 0..{n_planes - 1}), or --plane all to analyse "
                         "each plane as its own movie")


def fr_origin(params: CNMFParams, metadata: dict) -> str:
    """Where ``data.fr`` came from, as a line for the user."""
    fr = params.data["fr"]
    if "data.fr" not in params._derived:
        return f"fr = {fr:g} Hz (data.fr, set by the user)"
    if metadata.get("fr") is not None and float(metadata["fr"]) == float(fr):
        return f"fr = {fr:g} Hz from {metadata.get('fr_source', 'the movie metadata')}"
    return f"fr = {fr:g} Hz (the default: data.fr not set and the movie records no frame rate)"


def check_inputs(fnames, params: CNMFParams, out_path=None, scan_nan: bool = True):
    """Check everything :func:`run_pipeline` needs before it does any work.

    With ``scan_nan`` (and ``preprocess.check_nan``) floating-point movies
    are read once for NaN frames; :func:`run_pipeline` passes False and lets
    motion correction's pass look for them instead.

    Returns ``(paths, params, (T, dims))`` with ``params`` a copy whose
    ``data.fnames`` names the movies. Raises MovieError / ParameterError /
    DeviceError naming the file or parameter.
    """
    from .io import open_movie

    paths = _as_paths(fnames)
    if isinstance(params, dict):
        params = CNMFParams(params_dict=params)
    if not isinstance(params, CNMFParams):
        raise ParameterError(f"params: expected a CNMFParams, got {type(params).__name__}")
    for p in paths:
        if not os.path.exists(p):
            raise MovieError(f"{p}: movie file not found")
    params.device()   # DeviceError now, not after an hour of motion correction

    n_frames, dims = 0, None
    for p in paths:
        # one file at a time so that an error names the file at fault
        with open_movie(p, **movie_selection(params)) as src:
            _check_planes(p, src, params)
            if dims is not None and tuple(src.dims) != dims:
                raise MovieError(f"{p}: frame shape {tuple(src.dims)} differs from {dims} "
                                 f"of {paths[0]}")
            dims = tuple(src.dims)
            n_frames += src.n_frames
            if scan_nan and params.preprocess["check_nan"] and src.dtype.kind == "f":
                # reads every frame: a pass over the movie (integer movies
                # cannot hold a NaN and are not read)
                src.check_nan()
                backend.count_movie_io(read=src.n_frames * int(np.prod(src.dims)))
    need = min_frames(params)
    if n_frames < need:
        what = paths[0] if len(paths) == 1 else f"{len(paths)} files from {paths[0]}"
        raise MovieError(f"{what}: the movie has {n_frames} frame{'s' if n_frames != 1 else ''}; "
                         f"CNMF needs at least {need} (temporal.lags + temporal.p + 1)")
    nd = 3 if params.motion["is3D"] else 2
    if len(dims) != nd:
        raise MovieError(f"{paths[0]}: frames of shape {dims} while motion.is3D = "
                         f"{params.motion['is3D']} expects {nd} axes")

    # dims derived from fnames follow the new files; dims set by hand must agree
    params = params.copy()
    params.change_params({"data": {"fnames": list(paths)}})
    if params.data["dims"] is not None and tuple(params.data["dims"]) != dims:
        raise ParameterError(f"data.dims = {tuple(params.data['dims'])!r} does not match the "
                             f"frame shape {dims} of {paths[0]}")
    if params.data["dims"] is None:
        params.change_params({"data": {"dims": dims}})

    if out_path is not None:
        out = Path(out_path)
        folder = out.parent if str(out.parent) else Path(".")
        if not folder.is_dir():
            raise ParameterError(f"{out}: the output folder {str(folder)!r} does not exist")
        if out.is_dir():
            raise ParameterError(f"{out}: is a folder; expected a results file name")
        if not os.access(folder, os.W_OK):
            raise ParameterError(f"{out}: the output folder {str(folder)!r} is not writable")
        if any(os.path.abspath(out) == os.path.abspath(p) for p in paths):
            raise ParameterError(f"{out}: the output file would overwrite an input movie")
    return paths, params, (n_frames, dims)


# ---------------------------------------------------------------------------
# memory

def minimum_chunks(params: CNMFParams, T: int, dims) -> list[tuple[str, int]]:
    """Bytes of host memory the smallest chunk of each stage needs.

    Motion correction: one frame and its working copies (FFTs, warp: 12, or
    24 piecewise-rigid). CNMF: one block of image columns of the pixels x T
    matrix (a column of pixels over all frames, float32 plus its staging
    copy and products: 4 copies), and with patches one patch over all frames
    (it is copied to memory, ``patch.in_memory``, and initialisation works on
    a residual and filtered copies of it: 6 copies in all).
    Evaluation: one row of the movie (a pixel over all frames).
    """
    frame = int(np.prod(dims)) * 4
    d1 = int(dims[0])
    pw = 24 if params.motion["pw_rigid"] else 12
    out = [("motion correction", frame * pw),
           ("CNMF fit", d1 * int(T) * 4 * 4)]
    rf = params.patch["rf"]
    if rf is not None:
        rf = np.broadcast_to(np.asarray(rf), (2,))
        side = [min(int(2 * r + 1), int(n)) for r, n in zip(rf, dims)]
        out.append(("CNMF fit (one patch)", int(np.prod(side)) * int(T) * 4 * 6))
    out.append(("evaluation", int(T) * 8))
    return out


def check_budget(params: CNMFParams, T: int, dims, device) -> None:
    """Raise :class:`~gpu_cnmf.errors.MemoryBudgetError` naming the stage, the
    budget and the minimum when the host budget cannot hold one chunk of some
    stage (:func:`minimum_chunks`)."""
    for stage, need in minimum_chunks(params, T, dims):
        backend.require_budget(need, stage=stage, device="cpu")


# ---------------------------------------------------------------------------
# the pipeline

class _Stages:
    """Runs the stages: times them, samples their peak anonymous memory,
    counts their passes over the movie (reads and writes of pixels x T
    elements, :func:`gpu_cnmf.backend.movie_io`), retries a stage with half
    the memory budget after a device out-of-memory error
    (:func:`gpu_cnmf.backend.run_stage`), and prints one line per stage on
    stderr (and the ``gpu_cnmf`` log)."""

    def __init__(self, progress: bool, ring_cnn: bool = False):
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.passes: dict[str, tuple] = {}
        self.peak: dict[str, int] = {}
        self.movie_elements = 0            # pixels x T, once known
        self.device = None                 # set after validation: OOM retries there
        self._n = len(_STAGES) + 2 * int(ring_cnn)

    def run(self, name, fn, *args, quiet_start=False, **kwargs):
        from .memwatch import PeakMemory

        i = len(self.timings) + 1
        # lines go to the log when one is set up (gpu-cnmf run does), else to stderr
        self._print = self.progress and not _log.hasHandlers()
        if self._print and not quiet_start:
            print(f"gpu-cnmf [{i}/{self._n}] {name} ...", file=sys.stderr, flush=True)
        if not quiet_start:
            _log.info("[%d/%d] %s ...", i, self._n, name)
        io0 = backend.movie_io()
        t0 = time.perf_counter()
        with PeakMemory(os.getpid(), interval=0.05) as mem:
            if self.device is None:
                out = fn(*args, **kwargs)
            else:
                out = backend.run_stage(lambda: fn(*args, **kwargs), stage=name,
                                        device=self.device)
        self.timings[name] = time.perf_counter() - t0
        self.peak[name] = mem.peak
        backend.return_freed_memory()
        io1 = backend.movie_io()
        n = max(self.movie_elements, 1)
        self.passes[name] = ((io1["read"] - io0["read"]) / n,
                             (io1["written"] - io0["written"]) / n)
        if self.movie_elements:
            _log.info("[%d/%d] %s done in %.1f s (peak %.0f MiB, %.2f passes read, %.2f written)",
                      i, self._n, name, self.timings[name], mem.peak / 1024**2, *self.passes[name])
        else:       # validation: the movie's size (and so a pass) is known only after it
            _log.info("[%d/%d] %s done in %.1f s (peak %.0f MiB)",
                      i, self._n, name, self.timings[name], mem.peak / 1024**2)
        if self._print:
            print(f"gpu-cnmf [{i}/{self._n}] {name} done in {self.timings[name]:.1f} s",
                  file=sys.stderr, flush=True)
        return out


def _motion_dict(mc) -> dict:
    out = {"pw_rigid": bool(mc.pw_rigid), "shifts_rig": np.asarray(mc.shifts_rig),
           "total_template_rig": mc.total_template_rig,
           "templates_rig": (np.stack(mc.templates_rig) if mc.templates_rig else None),
           "min_mov": float(mc.min_mov) if mc.min_mov is not None else None,
           "border_to_0": int(getattr(mc, "border_to_0", 0))}
    if mc.pw_rigid:
        out["x_shifts_els"] = np.asarray(mc.x_shifts_els)
        out["y_shifts_els"] = np.asarray(mc.y_shifts_els)
        if getattr(mc, "z_shifts_els", None) is not None:
            out["z_shifts_els"] = np.asarray(mc.z_shifts_els)
        out["total_template_els"] = mc.total_template_els
        out["templates_els"] = np.stack(mc.templates_els) if mc.templates_els else None
        out["patch_grid"] = tuple(int(n) for n in mc.patch_grid)
    return out


def run_pipeline(fnames, params: CNMFParams, out_path, progress: bool = True,
                 keep_memmap: bool = False, work_dir=None, n_processes: int | None = None,
                 ring_cnn: bool = False, dview=None) -> PipelineResult:
    """Motion correction, CNMF (patches, then refit), evaluation, results file.

    Parameters
    ----------
    fnames : path or list of paths
        The movie (several files are joined in time); a folder of Miniscope
        videos or a Bruker folder is one movie.
    params : CNMFParams (or a dict of parameters)
        All parameters; ``use_cuda`` picks the device of every stage.
        Not modified: the run uses a copy with ``data.fnames`` set.
        ``data.plane`` / ``data.channel`` / ``data.nwb_series`` pick what
        of a multi-plane, multi-channel or NWB recording is analysed;
        ``data.plane = 'all'`` analyses each plane as its own movie. When
        ``data.fr`` is not set, the frame rate the movie records is used
        (a line on stderr and the summary say where it came from).
    out_path : path
        The HDF5 results file (CaImAn's ``cnmf.save`` layout, plus
        ``motion/`` and ``extra/summary_images``), written atomically.
    progress : bool
        Print a line per stage and motion-correction progress bars on stderr.
    keep_memmap : bool
        Keep the memory-mapped movie (the motion-corrected C-order one CNMF
        reads) next to ``out_path``; by default it lives
        in a temporary folder removed at the end.
    work_dir : path, optional
        Where the temporary folder is made (default: the system's).
    n_processes : int, optional
        Patches fitted at once on the CPU (default ``patch.n_processes``).
    dview : dask.distributed.Client, optional
        Fit the patches on this cluster's workers (they read the memory
        map by path: put ``work_dir`` on a filesystem they share).
    ring_cnn : bool
        One-photon movies: after motion correction, learn the Ring-CNN
        background (the ``ring_CNN`` parameters, ``init.gSig``; a saved model
        with ``reuse_model``) and subtract it chunk by chunk into a new
        memory map; CNMF, evaluation and the summary images then work on
        that cleaned movie, so every stage streams (use CNMF parameters for
        background-free data, e.g. ``nb=1`` and greedy initialisation).

    Returns
    -------
    PipelineResult
        Print it for the closing summary. With ``data.plane = 'all'``, a
        list of them, one per plane, written to ``<out>_plane<i>.<ext>``
        (:func:`plane_outputs`).

    Notes
    -----
    The CNMF stage runs with ``border_pix`` at least the largest motion
    shift (rounded up), as CaImAn's demos set it: no component is seeded in
    the border that motion correction filled in.

    Raises
    ------
    MovieError, ParameterError, DeviceError
        Bad inputs, found before any work is done; no output file is left.
    """
    if isinstance(params, dict):
        params = CNMFParams(params_dict=params)
    if isinstance(params, CNMFParams) and params.data["plane"] == "all":
        return _run_each_plane(fnames, params, out_path, progress=progress,
                               keep_memmap=keep_memmap, work_dir=work_dir,
                               n_processes=n_processes, ring_cnn=ring_cnn)
    from .cnmf import CNMF
    from .io import load_memmap, open_movie
    from .io.results import save_results
    from .motion import MotionCorrect
    from .summary import summary_images

    stages = _Stages(progress, ring_cnn)
    if isinstance(params, dict):
        params = CNMFParams(params_dict=params)
    # the budgets every stage sizes its chunks from (backend.host_budget),
    # validation's reads included
    limits = contextlib.ExitStack()
    limits.enter_context(backend.memory_limits(
        params.patch["memory_limit"] if isinstance(params, CNMFParams) else None))
    try:
        # silent until it passes, so that a user error is the only line printed
        paths, params, (T, dims) = stages.run("validate", check_inputs, fnames, params,
                                              out_path, scan_nan=False, quiet_start=True)
    except BaseException:
        limits.close()
        raise
    device = params.device()
    stages.movie_elements = int(T) * int(np.prod(dims))
    r, w = stages.passes["validate"]          # counted before the movie's size was known
    stages.passes["validate"] = (r / stages.movie_elements, w / stages.movie_elements)
    _log.info("validate: %.2f passes read, %.2f written", *stages.passes["validate"])
    out_path = os.fspath(out_path)
    if keep_memmap:
        base_dir = Path(out_path).resolve().parent
        tmp_dir = None
        stem = Path(out_path).stem
    else:
        tmp_dir = tempfile.mkdtemp(prefix="gpu_cnmf_run_", dir=work_dir)
        base_dir, stem = Path(tmp_dir), "movie"
    n_proc = int(n_processes or params.patch["n_processes"] or 1)
    kept: list[str] = []
    mc = None
    movie = None
    try:
        movie = open_movie(paths, **movie_selection(params))
        fr_note = fr_origin(params, movie.metadata)
        if progress:
            print(f"gpu-cnmf: {fr_note}", file=sys.stderr, flush=True)
        else:
            log.info("%s", fr_note)
        limits.enter_context(backend.memory_limits(None, params.patch["device_memory_limit"],
                                                   device))
        check_budget(params, T, dims, device)     # before any work: a clear error
        stages.device = device

        def motion():
            # writes the pixels x T C-order memmap CNMF reads (T-blocks) and
            # the summary images of the corrected movie, in its last pass
            motion_params = params.get_group("motion")
            motion_params.pop("var_name_hdf5", None)
            m = MotionCorrect(movie, var_name_hdf5=params.data["var_name_hdf5"],
                              base_name=str(base_dir / stem), progress=progress,
                              save_order="C", summary=True,
                              check_nan=params.preprocess["check_nan"], **motion_params)
            m.motion_correct(save_movie=True)
            return m
        mc = stages.run("motion correction", motion)
        fname_c = mc.mmap_file[-1]
        summary = dict(mc.summary_images)
        if keep_memmap:
            kept = [str(fname_c)]
        run_params = params.copy()
        run_params.change_params({"data": {"mmap_C": str(fname_c)}} if keep_memmap else {})
        # Frames shifted by up to b px have b px of filled-in border, whose
        # repeated rows look like perfectly correlated "cells" to the seed
        # search: no components are started there (CaImAn's demos pass
        # the same bound as border_pix by hand).
        bord = max(int(run_params.patch["border_pix"]), int(getattr(mc, "border_to_0", 0)))
        run_params.change_params({"patch": {"border_pix": bord}})

        Yr, mm_dims, T = load_memmap(fname_c)
        images = np.reshape(Yr.T, [T] + list(mm_dims), order="F")
        if ring_cnn:
            def ring():
                from .ringcnn import fit_ring_cnn, subtract_background
                model, _ = fit_ring_cnn(images, run_params.init["gSig"],
                                        run_params.get_group("ring_CNN"),
                                        use_cuda=params.use_cuda)
                return subtract_background(images, model, str(base_dir / f"{stem}_ringcnn"))
            fname_r = stages.run(RING_STAGE, ring)
            if keep_memmap:
                kept.append(str(fname_r))
            else:
                del images, Yr
                Path(fname_c).unlink(missing_ok=True)
            Yr, mm_dims, T = load_memmap(fname_r)
            images = np.reshape(Yr.T, [T] + list(mm_dims), order="F")
        # the refit starts with the fit's last whole-field update: a pass fewer
        cnm = stages.run("CNMF fit", lambda: CNMF(n_proc, params=run_params, dview=dview)
                         .fit(images, whole_field=False))
        cnm = stages.run("refit", lambda: cnm.refit(images))
        est = cnm.estimates

        if ring_cnn:
            # the summary images describe the movie CNMF saw: the cleaned one
            summary = stages.run("summary images", summary_images, images,
                                 use_cuda=params.use_cuda)
        est.Cn = summary.pop("Cn")
        stages.run("evaluation", est.evaluate_components, images, run_params)

        est.timings = dict(getattr(est, "timings", {}) or {})
        est.timings.update({f"pipeline_{k}": v for k, v in stages.timings.items()})
        extra = {"summary_images": summary,
                 "run": {"fnames": list(paths), "n_frames": int(T),
                         "device": backend.describe(device), "fr_origin": fr_note,
                         "memmap_files": list(kept), "ring_cnn": bool(ring_cnn)}}
        stages.run("save", save_results, out_path, run_params, est.to_dict(),
                   motion=_motion_dict(mc), extra=extra)
    finally:
        limits.close()
        if movie is not None:
            movie.close()
        if mc is not None and hasattr(mc, "source"):
            mc.source.close()
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    good = np.asarray(est.idx_components if est.idx_components is not None
                      else np.arange(est.nr), dtype=int)
    bad = np.asarray(est.idx_components_bad if est.idx_components_bad is not None
                     else np.zeros(0), dtype=int)
    return PipelineResult(out_path=out_path, n_frames=int(T), dims=tuple(mm_dims),
                          fr_origin=fr_note,
                          n_components=int(est.nr), idx_components=good,
                          idx_components_bad=bad, timings=dict(stages.timings),
                          passes=dict(stages.passes), peak_memory=dict(stages.peak),
                          device=backend.describe(device), fnames=list(paths),
                          memmap_files=kept, estimates=est, params=run_params)


def run_batch(fnames_list, params, out_dir, client=None, **kwargs):
    """Run :func:`run_pipeline` on many recordings, one Dask task each;
    see :func:`gpu_cnmf.batch.run_batch` (imported on first use)."""
    from .batch import run_batch as _run_batch

    return _run_batch(fnames_list, params, out_dir, client=client, **kwargs)


# ---------------------------------------------------------------------------
# every plane of a multi-plane recording, one after the other

def plane_outputs(out_path, n_planes: int) -> list[str]:
    """Results file of each plane: ``r.hdf5`` -> ``r_plane0.hdf5``, ..."""
    out = Path(out_path)
    return [str(out.with_name(f"{out.stem}_plane{i}{out.suffix}")) for i in range(n_planes)]


def _run_each_plane(fnames, params: CNMFParams, out_path, **kwargs) -> list[PipelineResult]:
    """``data.plane = 'all'``: :func:`run_pipeline` on each plane in turn,
    results in :func:`plane_outputs`."""
    from .io import open_movie

    paths = _as_paths(fnames)
    probe = params.copy()
    probe.change_params({"data": {"plane": 0}})
    with open_movie(paths[0], **movie_selection(probe)) as src:
        n_planes = int(src.metadata.get("n_planes", 1))
    results = []
    for plane, out in enumerate(plane_outputs(out_path, n_planes)):
        if kwargs.get("progress", True):
            print(f"gpu-cnmf: plane {plane} of {n_planes} -> {out}", file=sys.stderr, flush=True)
        p = params.copy()
        p.change_params({"data": {"plane": plane}})
        results.append(run_pipeline(paths, p, out, **kwargs))
    return results
