"""Many recordings processed the same way: :func:`run_batch`.

Each recording's whole pipeline (:func:`gpu_cnmf.pipeline.run_pipeline`) is
one task on a Dask cluster (:mod:`gpu_cnmf.cluster`): the user's own
(``client=`` / ``--scheduler``) or a local one started here (``n_workers``
processes; one worker per GPU with ``use_cuda`` and dask-cuda). Without
``dask[distributed]`` the recordings run one after the other in this process.

- One results file per recording, ``<out_dir>/<movie stem>_results.hdf5``,
  written under a temporary name and renamed when complete; its attributes
  hold a hash of the recording's effective parameters (``batch_params_hash``).
- Re-running skips recordings whose results file exists with the same hash
  (``force=True`` redoes them), so an interrupted batch resumes.
- Faults: a task whose worker dies is re-run on another worker (Dask's
  ``retries``); a recording that fails twice, or at once with a user error
  (a corrupt movie, a bad parameter), is reported as failed with its error;
  the others complete and no partial file is left.
- A summary row per recording (recording, frames, components found and
  accepted, seconds, worker, status, error), printed and written to
  ``<out_dir>/batch_summary.csv`` and ``.json``.
- Per-recording parameter overrides: a CSV (a ``recording`` column, one
  column per parameter, JSON values) or JSON (``{recording: {name: value}}``)
  table; a recording is named by its path, file name or stem.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import GpuCnmfError, MovieError, ParameterError
from .params import CNMFParams
from .progress import progress

log = logging.getLogger("gpu_cnmf")

__all__ = ["run_batch", "BatchResult", "RecordingResult", "expand_movies",
           "load_overrides", "params_hash", "results_path", "SUMMARY_NAME"]

SUMMARY_NAME = "batch_summary"
HASH_ATTR = "batch_params_hash"
# a recording whose task raised anything but a user error, or whose worker
# died, is tried this many more times
RETRIES = 1
_COLUMNS = ("recording", "frames", "components", "accepted", "seconds", "worker", "status",
            "error", "results")


@dataclass
class RecordingResult:
    """One row of the batch summary."""

    recording: str
    status: str                    # 'done', 'skipped' or 'failed'
    frames: int | None = None
    components: int | None = None
    accepted: int | None = None
    seconds: float | None = None
    worker: str = ""
    error: str = ""
    results: str = ""


@dataclass
class BatchResult:
    """Rows in input order, and where the summary was written."""

    rows: list = field(default_factory=list)
    summary_files: list = field(default_factory=list)
    dashboard: str | None = None

    @property
    def failed(self):
        return [r for r in self.rows if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def table(self) -> str:
        """The summary as an aligned text table."""
        head = ("recording", "frames", "found", "accepted", "seconds", "worker", "status")
        rows = [head]
        for r in self.rows:
            rows.append((Path(r.recording).name, _fmt(r.frames), _fmt(r.components),
                         _fmt(r.accepted), "" if r.seconds is None else f"{r.seconds:.1f}",
                         r.worker, r.status))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
                 for row in rows]
        for r in self.failed:
            lines.append(f"failed: {r.recording}: {r.error}")
        n_done = sum(r.status == "done" for r in self.rows)
        n_skip = sum(r.status == "skipped" for r in self.rows)
        lines.append(f"{len(self.rows)} recordings: {n_done} done, {n_skip} skipped "
                     f"(results already there), {len(self.failed)} failed")
        return "\n".join(lines)

    __str__ = table


def _fmt(v):
    return "" if v is None else str(v)


# ---------------------------------------------------------------------------
# inputs

def expand_movies(patterns) -> list[str]:
    """Paths from paths and glob patterns, in the order given (each
    pattern's matches sorted); a pattern matching nothing is an error."""
    out = []
    for p in patterns:
        p = os.fspath(p)
        if glob.has_magic(p):
            hits = sorted(glob.glob(p))
            if not hits:
                raise MovieError(f"{p}: no movie matches this pattern")
            out.extend(hits)
        else:
            out.append(p)
    if not out:
        raise MovieError("no movies given")
    return out


def results_path(out_dir, recording) -> Path:
    """``<out_dir>/<stem>_results.hdf5`` for a recording (path or list of
    paths joined in time: named after the first)."""
    first = recording[0] if isinstance(recording, (list, tuple)) else recording
    return Path(out_dir) / f"{Path(os.fspath(first).rstrip('/')).stem}_results.hdf5"


def _names(recording) -> set:
    first = os.fspath(recording[0] if isinstance(recording, (list, tuple)) else recording)
    first = first.rstrip("/")
    return {first, os.path.abspath(first), Path(first).name, Path(first).stem}


def _parse_cell(text):
    text = text.strip()
    if text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_overrides(path) -> dict:
    """``{recording: {parameter: value}}`` from a CSV or JSON table.

    CSV: a header row with ``recording`` and one column per parameter
    (``name`` or ``group.name``), cells parsed as JSON where they are JSON
    (``[5, 5]``, ``2``, ``true``), empty cells meaning "not overridden".
    JSON: an object of objects.
    """
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"{path}: parameter override table not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ParameterError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") \
                from err
        if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
            raise ParameterError(f"{path}: expected {{\"recording\": {{\"name\": value}}}}")
        return {str(k): v for k, v in doc.items()}
    if path.suffix.lower() != ".csv":
        raise ParameterError(f"{path}: expected a .csv or .json override table")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "recording" not in reader.fieldnames:
        raise ParameterError(f"{path}: the first row must name the columns, one of them "
                             f"'recording'")
    out = {}
    for row in reader:
        rec = (row.pop("recording") or "").strip()
        if not rec:
            raise ParameterError(f"{path}: line {reader.line_num} has no recording")
        vals = {}
        for k, v in row.items():
            if k is None:
                raise ParameterError(f"{path}: line {reader.line_num} has more cells than "
                                     f"columns")
            v = _parse_cell(v or "")
            if v is None:
                continue
            group, _, name = k.strip().rpartition(".")
            if group:
                vals.setdefault(group, {})[name] = v
            else:
                vals[name] = v
        out[rec] = vals
    return out


def _effective_params(params, recordings, overrides, use_cuda):
    """One CNMFParams per recording (base + its overrides); ParameterError
    naming the recording or an override key that matches no recording."""
    if isinstance(params, dict):
        params = CNMFParams(params_dict=params)
    if not isinstance(params, CNMFParams):
        raise ParameterError(f"params: expected a CNMFParams, got {type(params).__name__}")
    overrides = dict(overrides or {})
    used = set()
    out = []
    for rec in recordings:
        p = params.copy()
        if use_cuda:
            p.change_params({"motion": {"use_cuda": True}})
        names = _names(rec)
        for key, vals in overrides.items():
            if key in names or os.path.abspath(key) in names:
                used.add(key)
                try:
                    p.change_params(vals)
                except ParameterError as err:
                    raise ParameterError(f"overrides for {key}: {err}") from err
        out.append(p)
    unused = sorted(set(overrides) - used)
    if unused:
        raise ParameterError(f"overrides: {unused[0]!r} matches none of the recordings "
                             f"(name them by path, file name or stem)")
    return out


def params_hash(params: CNMFParams) -> str:
    """SHA-256 of the parameters' exact JSON (what decides whether a results
    file is still valid)."""
    return hashlib.sha256(params.to_json().encode()).hexdigest()


def _finished(path: Path, digest: str):
    """The summary attributes of a complete results file made with these
    parameters, else None."""
    if not path.is_file():
        return None
    try:
        import h5py
        with h5py.File(path, "r") as h5:
            a = dict(h5.attrs)
    except OSError:
        return None
    if a.get(HASH_ATTR) != digest:
        return None
    return a


def _clean_partials(out_path: Path):
    for p in out_path.parent.glob(f".{out_path.name}.*.partial*"):
        p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# one recording (runs on a worker)

def _worker_name() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def run_recording(job: dict) -> dict:
    """Run the pipeline on one recording into ``job['out']`` (a summary row
    as a dict). A user error (bad movie or parameter) returns a failed row,
    since running it again cannot help; anything else raises, so that the
    cluster retries it."""
    from .pipeline import run_pipeline

    out = Path(job["out"])
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{time.monotonic_ns()}.partial.hdf5")
    row = RecordingResult(recording=job["recording_name"], status="failed",
                          worker=_worker_name(), results="")
    if job.get("n_threads"):
        import torch
        torch.set_num_threads(int(job["n_threads"]))
    params = CNMFParams.from_json_text(job["params"], source=f"{job['recording_name']} params")
    t0 = time.perf_counter()
    try:
        res = run_pipeline(job["fnames"], params, str(tmp), progress=False,
                           work_dir=job.get("work_dir"))
        seconds = time.perf_counter() - t0
        import h5py
        with h5py.File(tmp, "a") as h5:
            h5.attrs[HASH_ATTR] = job["hash"]
            h5.attrs["batch_frames"] = int(res.n_frames)
            h5.attrs["batch_components"] = int(res.n_components)
            h5.attrs["batch_accepted"] = int(res.n_accepted)
            h5.attrs["batch_seconds"] = float(seconds)
        os.replace(tmp, out)
    except GpuCnmfError as err:
        row.error = str(err)
        row.seconds = round(time.perf_counter() - t0, 3)
        return asdict(row)
    finally:
        tmp.unlink(missing_ok=True)
    row.status, row.results = "done", str(out)
    row.frames, row.components, row.accepted = res.n_frames, res.n_components, res.n_accepted
    row.seconds = round(seconds, 3)
    return asdict(row)


# ---------------------------------------------------------------------------
# the batch

def _summary_files(out_dir: Path, rows) -> list[str]:
    from .io.results import atomic_write

    dicts = [asdict(r) for r in rows]

    def write_csv(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=_COLUMNS)
            w.writeheader()
            w.writerows({k: ("" if d[k] is None else d[k]) for k in _COLUMNS} for d in dicts)

    def write_json(tmp):
        Path(tmp).write_text(json.dumps(dicts, indent=1) + "\n", encoding="utf-8")

    return [atomic_write(out_dir / f"{SUMMARY_NAME}.csv", write_csv),
            atomic_write(out_dir / f"{SUMMARY_NAME}.json", write_json)]


def _failed_row(job, err) -> RecordingResult:
    msg = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return RecordingResult(recording=job["recording_name"], status="failed", error=msg)


def _run_serial(jobs, rows, bar):
    for i, job in jobs:
        err = None
        for _ in range(1 + RETRIES):
            try:
                rows[i] = RecordingResult(**run_recording(job))
                err = None
                break
            except KeyboardInterrupt:
                raise
            except Exception as e:   # a bug or a crash: tried once more, then reported
                err = e
                log.debug("recording %s failed:\n%s", job["recording_name"],
                          traceback.format_exc())
        if err is not None:
            rows[i] = _failed_row(job, err)
        bar.update()


def _run_dask(client, jobs, rows, bar):
    from distributed import as_completed

    futs = {}
    for i, job in jobs:
        key = f"recording-{Path(job['out']).stem}-{os.urandom(4).hex()}"
        futs[client.submit(run_recording, job, key=key, pure=False, retries=RETRIES)] = (i, job)
    try:
        for fut in as_completed(list(futs)):
            i, job = futs[fut]
            try:
                rows[i] = RecordingResult(**fut.result())
            except Exception as err:   # failed on every try, or its workers kept dying
                rows[i] = _failed_row(job, err)
            bar.update()
    except BaseException:
        client.cancel(list(futs))
        raise


def run_batch(fnames_list, params, out_dir, client=None, *, scheduler=None, n_workers=None,
              use_cuda=False, overrides=None, force=False, progress_bar=True,
              work_dir=None) -> BatchResult:
    """Run the pipeline on each recording, in parallel on a Dask cluster.

    Parameters
    ----------
    fnames_list : list
        Recordings: each a movie path (glob patterns are expanded) or a list
        of paths joined in time.
    params : CNMFParams or dict
        Parameters for every recording.
    out_dir : path
        Folder for the results files and the summary (made if missing).
    client : dask.distributed.Client, optional
        A cluster to run on; by default one is started here (``scheduler``
        to connect to a running one, ``n_workers`` local processes,
        ``use_cuda`` one worker per GPU). Without dask installed the
        recordings run one after the other here.
    overrides : dict or path, optional
        Per-recording parameters, ``{recording: {name: value}}`` or a CSV /
        JSON table (:func:`load_overrides`).
    force : bool
        Redo recordings whose results file is already there.
    progress_bar : bool
        A bar over recordings (and log lines) and the dashboard address on
        stderr.
    work_dir : path, optional
        Where each run's temporary memory maps go (default: the worker's
        temporary folder).

    Returns
    -------
    BatchResult
        ``rows`` in input order; ``ok`` is False when some recording failed.
    """
    from .cluster import INSTALL_HINT, cluster_client, dashboard_link, have_dask, local_threads

    recordings = []
    for r in fnames_list:
        if isinstance(r, (list, tuple)):
            recordings.append([os.fspath(x) for x in r])
        else:
            recordings.extend(expand_movies([r]))
    if not recordings:
        raise MovieError("run_batch: no recordings given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(overrides, (str, os.PathLike)):
        overrides = load_overrides(overrides)
    eff = _effective_params(params, recordings, overrides, use_cuda)
    outs = [results_path(out_dir, r) for r in recordings]
    seen = {}
    for r, o in zip(recordings, outs):
        if o in seen:
            raise ParameterError(f"{r} and {seen[o]} would both write {o}: rename one, or run "
                                 f"them in separate batches")
        seen[o] = r

    rows: list = [None] * len(recordings)
    jobs = []
    for i, (rec, p, out) in enumerate(zip(recordings, eff, outs)):
        name = rec[0] if isinstance(rec, list) else rec
        digest = params_hash(p)
        _clean_partials(out)     # left by a worker killed in an earlier run
        done = None if force else _finished(out, digest)
        if done is not None:
            rows[i] = RecordingResult(
                recording=name, status="skipped", frames=int(done.get("batch_frames", -1)),
                components=int(done.get("batch_components", -1)),
                accepted=int(done.get("batch_accepted", -1)),
                seconds=float(done.get("batch_seconds", 0.0)), results=str(out))
            continue
        jobs.append((i, {"recording_name": name, "fnames": rec, "out": str(out),
                         "params": p.to_json(), "hash": digest,
                         "work_dir": None if work_dir is None else os.fspath(work_dir)}))

    result = BatchResult(rows=rows)
    say = (lambda m: print(f"gpu-cnmf batch: {m}", file=sys.stderr, flush=True)) \
        if progress_bar else (lambda m: log.info("batch: %s", m))
    n_skip = len(recordings) - len(jobs)
    if n_skip:
        say(f"{n_skip} of {len(recordings)} recordings already have results with the same "
            f"parameters: skipped (force to redo)")
    try:
        with progress(total=len(jobs), desc="recordings", unit="recording",
                      disable=None if progress_bar else True) as bar:
            if not jobs:
                pass
            elif client is not None:
                result.dashboard = dashboard_link(client)
                say(f"Dask dashboard: {result.dashboard}")
                _run_dask(client, jobs, rows, bar)
            elif scheduler is None and not have_dask():
                say(f"dask is not installed: running the recordings one after the other "
                    f"(for parallel runs: {INSTALL_HINT})")
                _run_serial(jobs, rows, bar)
            else:
                n = n_workers if n_workers is not None else min(len(jobs), os.cpu_count() or 1)
                with cluster_client(scheduler, n_workers=n, use_cuda=use_cuda) as c:
                    result.dashboard = dashboard_link(c)
                    say(f"Dask dashboard: {result.dashboard}")
                    if scheduler is None and not use_cuda:
                        for _, job in jobs:
                            job["n_threads"] = local_threads(n)
                    _run_dask(c, jobs, rows, bar)
    finally:
        for out in outs:
            _clean_partials(out)
    result.summary_files = _summary_files(out_dir, [r for r in rows if r is not None])
    return result
