"""Run every stage on every device within a time budget.

Order: ``pytest -m gpu`` (when CUDA is used), the hardware probes, then
stage by stage (GPU first, so its column survives a short budget). Each
(stage, device) pair gets a share of the time left, in proportion to its
weight among the pairs still to run, so time one stage does not use flows
to the next. Within its share a stage is sized by measurement: an untimed
warm-up on a few frames (CUDA context, FFT plans, JIT compilation), a timed
calibration run at ``case.cal``, then one run at the size its per-frame
wall time says fits (capped). An interval timer stops a stage that runs
past 1.5x its share or past the budget (:class:`BudgetExceeded`, raised
between Python bytecodes, so the stage's own ``finally`` blocks clean up);
it is recorded as ``skipped: budget``, or keeps its calibration figure.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from ..backend import cuda_available, describe, get_device
from ..errors import DeviceError, ParameterError
from . import probes
from .movie import BenchMovie
from .stages import CASES, Context

# seconds kept back (at least; 3 % of the budget) to write the table and
# JSON and for calls the timer cannot cut short
_RESERVE = 1.0
# the least time a stage is given while the budget lasts
MIN_SHARE = 4.0
INNER_ENV = "GPU_CNMF_BENCH_INNER"


class BudgetExceeded(BaseException):
    """The time given to a stage (or the whole bench) ran out.

    A BaseException, like KeyboardInterrupt, so that no ``except
    Exception`` in the stages swallows it."""


class Budget:
    def __init__(self, seconds: float):
        self.total = float(seconds)
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + self.total

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.deadline - time.perf_counter() - max(_RESERVE, 0.03 * self.total)

    @contextlib.contextmanager
    def limit(self, seconds: float):
        """Raise BudgetExceeded in this (main) thread after ``seconds``, or at
        the budget's end, whichever comes first."""
        seconds = min(seconds, self.left())
        if seconds <= 0:
            raise BudgetExceeded()
        main = threading.current_thread() is threading.main_thread()
        if not main or not hasattr(signal, "setitimer"):
            yield          # no timer off the main thread: checks between stages only
            return

        def fire(signum, frame):
            if _importing(frame):
                # a module half imported stays broken for the rest of the
                # run: let the import finish, try again shortly
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                return
            raise BudgetExceeded()
        old = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def _importing(frame) -> bool:
    """True when ``frame`` is inside an import (importlib's frozen frames)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def resolve_devices(device: str, log) -> tuple[list[str], str | None]:
    """Devices to run, GPU first; and a note when 'both' finds no CUDA."""
    if device not in ("cpu", "cuda", "both"):
        raise ParameterError(f"--device: expected cpu, cuda or both, got {device!r}")
    if device == "cpu":
        return ["cpu"], None
    if device == "cuda":
        if not cuda_available():
            raise DeviceError(f"--device cuda: no CUDA GPU is usable here (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda}); "
                              "use --device cpu, or both to run the CPU column alone")
        return ["cuda"], None
    if cuda_available():
        return ["cuda", "cpu"], None
    note = (f"CUDA is absent (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}): running the CPU column only")
    log(f"gpu-cnmf bench: {note}")
    return ["cpu"], note


def _tests_dir() -> Path | None:
    """The repository's tests/: ``$GPU_CNMF_TESTS`` (the Docker image sets
    it), else next to the package (a source checkout), else under the
    current folder."""
    env = os.environ.get("GPU_CNMF_TESTS")
    if env and (Path(env) / "conftest.py").is_file():
        return Path(env).resolve()
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "tests" / "conftest.py").is_file():
            return root / "tests"
    return None


def run_gpu_tests(out_dir: Path, timeout: float, log) -> dict:
    """``pytest -m gpu`` in a child process; counts from its JUnit XML."""
    tests = _tests_dir()
    if tests is None:
        return {"status": "not run: tests/ not found next to the package or in the "
                          "current folder"}
    xml = out_dir / "pytest_gpu.xml"
    log_path = out_dir / "pytest_gpu.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}", str(tests)]
    env = dict(os.environ, **{INNER_ENV: "1"})
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tests.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    log(f"gpu-cnmf bench: pytest -m gpu (at most {timeout:.0f} s)")
    t = time.perf_counter()
    with open(log_path, "wb") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tests.parent,
                                  env=env, timeout=max(1.0, timeout))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    res = {"command": " ".join(cmd), "seconds": time.perf_counter() - t,
           "log": str(log_path), "returncode": rc}
    if xml.is_file():
        root = ET.parse(xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        res.update(n, passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"])
    if rc is None:
        res["status"] = f"timed out after {timeout:.0f} s"
    elif rc == 0:
        res["status"] = "passed"
    elif rc == 5:
        res["status"] = "no tests collected"
    else:
        res["status"] = f"failed (pytest exit {rc})"
    log(f"gpu-cnmf bench: pytest -m gpu {res['status']}"
        + (f": {res.get('passed', 0)} passed, {res.get('failures', 0)} failed, "
           f"{res.get('errors', 0)} errors, {res.get('skipped', 0)} skipped"
           if "tests" in res else ""))
    return res


def _probe_all(devices, work: Path, quick: bool, budget: Budget, log) -> dict:
    small = quick or budget.total < 60
    out = {}
    with budget.limit(max(5.0, 0.15 * budget.left())):
        try:
            out["host_memory"] = probes.host_memory_bandwidth(
                (16 << 20) if budget.total < 60 else (64 << 20) if small else (512 << 20))
            if "cuda" in devices:
                dev = get_device(True)
                out["device_memory"] = probes.device_memory_bandwidth(
                    dev, (256 << 20) if small else (2 << 30))
                out["pcie"] = probes.pcie_bandwidth(dev, (128 << 20) if small else (1 << 30))
        except BudgetExceeded:
            out["stopped"] = "skipped: budget (probes cut short)"
    # the disk probe on its own clock, so that a slow disk keeps the others
    with budget.limit(max(5.0, 0.15 * budget.left())):
        try:
            disk = probes.disk_speed(str(work), (16 << 20) if budget.total < 60 else
                                     (128 << 20) if quick else (1 << 30))
            out["disk_read"], out["disk_write"] = disk["read"], disk["write"]
        except BudgetExceeded:
            out["stopped"] = "skipped: budget (probes cut short)"
    for k, v in out.items():
        if isinstance(v, dict):
            log(f"gpu-cnmf bench: {k}: {v['bytes_per_s'] / 1e9:.2f} GB/s ({v['method']})")
    return out


def _frame_cap(movie_dims, work: Path, quick: bool) -> int:
    """Longest movie the host can hold: a quarter of free RAM and of free disk."""
    from ..backend import free_memory

    fb = 4 * int(np.prod(movie_dims))
    ram = free_memory("cpu") // 4 // fb
    disk = shutil.disk_usage(work).free // 4 // fb
    return int(max(64, min(ram, disk, max(c.cap_quick if quick else c.cap_full for c in CASES
                                          if c.unit == "frames"))))


def _record(case, device, status, **kw):
    row = {"stage": case.name, "label": case.label, "device": device, "status": status,
           "unit": case.unit}
    row.update(kw)
    return row


def _attempt(case, ctx, device, n, budget, seconds):
    """Run ``case`` at size n within ``seconds``; returns (timed s, wall s)."""
    t = time.perf_counter()
    with budget.limit(seconds):
        sec = case.run(ctx, device, n)
    return float(sec), time.perf_counter() - t


def run_case(case, ctx, device, share, budget, frame_cap, log) -> dict:
    """Warm up, calibrate, size and time one stage on one device."""
    cap = min(case.cap_quick if ctx.quick else case.cap_full,
              frame_cap if case.unit == "frames" else 10**9)
    if case.after is not None:
        prev = ctx.stash.get((case.after, device))
        if prev is None:
            return _record(case, device, f"skipped: needs {case.after}")
        n = prev[0]
        try:
            sec, wall = _attempt(case, ctx, device, n, budget, max(1.5 * share, share + 5))
        except BudgetExceeded:
            return _record(case, device, "skipped: budget")
        return _record(case, device, "ok", size=n, seconds=sec, wall_seconds=wall)
    t_start = time.perf_counter()
    try:
        # the GPU's first calls (context, FFT plans, kernel compilation)
        # would swamp a calibration; on the CPU the calibration run is the
        # warm-up and the growth runs below are measured warm
        if case.warm and device == "cuda":
            _attempt(case, ctx, device, case.warm, budget, share)
        cal = min(case.cal, cap)
        sec_c, wall_c = _attempt(case, ctx, device, cal, budget,
                                 max(0.0, 1.5 * share - (time.perf_counter() - t_start)))
    except BudgetExceeded:
        return _record(case, device, "skipped: budget")
    row = _record(case, device, "ok", size=cal, seconds=sec_c, wall_seconds=wall_c,
                  calibration={"size": cal, "seconds": sec_c, "wall_seconds": wall_c})
    # Grow the size from the last run's per-unit wall time (which still
    # holds fixed costs, so it errs small) until the share is used or the
    # cap reached; the largest run completed is the figure.
    last_n, last_wall = cal, wall_c
    for _ in range(3):
        left = share - (time.perf_counter() - t_start)
        gen = (ctx.movie.seconds_per_frame or 0.0) if case.unit == "frames" else 0.0
        made = ctx.movie.n_made if case.unit == "frames" else 0
        per_unit = last_wall / last_n + gen
        n = int(min(cap, (0.8 * left + made * gen) / per_unit)) if left > 0 else 0
        if n < 2 * last_n:
            if last_n == cal:
                row["note"] = "calibration size: the share left no room for a larger run"
            break
        try:
            sec, wall = _attempt(case, ctx, device, n, budget,
                                 max(1.5 * left, 2 * n * per_unit))
        except BudgetExceeded:
            row["note"] = (f"the run on {n} {case.unit} was stopped by the budget; "
                           f"figure from {last_n}")
            break
        row.update(size=n, seconds=sec, wall_seconds=wall)
        last_n, last_wall = n, wall
        if n >= cap:
            break
    return row


def _stage_loop(ctx, cases, devices, budget, frame_cap, log, on_row=None) -> list[dict]:
    pairs = [(c, d) for c in cases for d in devices]
    weights = [c.weight for c, _ in pairs]
    rows = []
    for i, (case, device) in enumerate(pairs):
        left = budget.left()
        if left <= 0.5:
            row = _record(case, device, "skipped: budget")
        else:
            # a stage needs a few seconds whatever its size (first calls,
            # JIT, templates): below that, run the first stages properly
            # rather than every stage not at all
            share = min(left, max(left * weights[i] / sum(weights[i:]), MIN_SHARE))
            t = time.perf_counter()
            try:
                row = run_case(case, ctx, device, share, budget, frame_cap, log)
            except BudgetExceeded:
                row = _record(case, device, "skipped: budget")
            except Exception as err:   # a failing stage is a result, not the end of the bench
                row = _record(case, device, f"failed: {type(err).__name__}: {err}"[:300],
                              traceback=traceback.format_exc(limit=6))
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
            row["share_s"] = share
            row["spent_s"] = time.perf_counter() - t
        rows.append(row)
        _log_row(row, log)
        if on_row is not None:
            on_row(rows)
    return rows


def _log_row(row, log):
    if row["status"] == "ok":
        rate = row["size"] / row["seconds"] if row["seconds"] > 0 else float("inf")
        log(f"gpu-cnmf bench: {row['stage']:<14} {row['device']:<4} {row['size']:>6} "
            f"{row['unit']} in {row['seconds']:.2f} s = {rate:,.1f} {row['unit']}/s")
    else:
        log(f"gpu-cnmf bench: {row['stage']:<14} {row['device']:<4} {row['status']}"
            + (f" (share {row['share_s']:.1f} s, spent {row['spent_s']:.1f} s)"
               if "share_s" in row else ""))


def run_bench(device: str = "cpu", quick: bool = False, budget: float = 480.0,
              out: str = "bench_out", dims=(512, 512), work_dir: str | None = None,
              run_tests: bool = True, stages=None, log=None, command: str | None = None
              ) -> dict:
    """Run the bench; writes ``bench.json`` and ``bench.md`` under ``out``.

    Parameters
    ----------
    device : 'cpu', 'cuda' or 'both'
    quick : bool
        Small sizes (caps of a few hundred frames, 1,000 traces of 2,000
        frames for OASIS) for a check in a couple of minutes.
    budget : float
        Seconds for everything (tests, probes, stages); the bench stops at
        it and writes what it has.
    out : str
        Folder for the results (created).
    dims : (int, int)
        Frame shape of the synthetic movie (512 x 512 by default).
    work_dir : str, optional
        Folder for the movie files and the disk probe (default: a temporary
        folder inside ``out``, removed at the end).
    run_tests : bool
        Run ``pytest -m gpu`` first when CUDA is used.
    command : str, optional
        The command line, recorded in the results.
    stages : list of str, optional
        Only these stages (names as in the JSON: rigid, pw_rigid, ...); all
        by default. ``refit`` needs ``cnmf_fit``.

    Returns
    -------
    dict
        The JSON document.
    """
    from . import report

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not budget or budget <= 0:
        raise ParameterError(f"--budget: expected a positive number of seconds, got {budget}")
    dims = tuple(int(d) for d in dims)
    if len(dims) != 2 or min(dims) < 32:
        raise ParameterError(f"--dims: expected two sizes >= 32, got {dims}")
    cases = select_cases(stages)
    t_setup = time.perf_counter()
    devices, note = resolve_devices(device, log)
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ParameterError(f"--out: cannot create folder {out!r}: {err}") from err
    if not os.access(out_dir, os.W_OK):
        raise ParameterError(f"--out: folder {out!r} is not writable")
    work = Path(tempfile.mkdtemp(prefix=".bench_work_", dir=work_dir or out_dir))
    doc = {"schema": 1, "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": command or (f"run_bench(device={device!r}, quick={quick}, "
                                  f"budget={budget}, dims={dims})"),
           "device_requested": device, "devices": devices, "quick": bool(quick),
           "budget_s": float(budget), "dims": list(dims),
           "git": _git_commit(), "machine": probes.machine_info(devices),
           "device_names": {d: describe(get_device(d == "cuda")) for d in devices}}
    if note:
        doc["note"] = note
    _import_stages()
    # start-up (imports, the machine's description) is not on the budget's
    # clock, as Python's own start-up is not
    doc["setup_s"] = time.perf_counter() - t_setup
    b = Budget(budget)
    try:
        if "cuda" in devices and run_tests and not os.environ.get(INNER_ENV):
            doc["pytest_gpu"] = run_gpu_tests(out_dir, min(0.35 * b.left(), 300.0), log)
        elif "cuda" in devices:
            doc["pytest_gpu"] = {"status": "not run (--skip-tests or inside pytest)"}
        else:
            doc["pytest_gpu"] = {"status": "not run: no CUDA in this run"}
        doc["probes"] = _probe_all(devices, work, quick, b, log)
        oasis_frames = 2000 if quick else 10_000
        frame_cap = _frame_cap(dims, work, quick)
        movie = BenchMovie(str(work), dims, max_frames=frame_cap, seed=0)
        doc["movie"] = {"dims": list(dims), "n_neurons": movie.n_neurons, "dtype": "float32",
                        "frame_bytes": movie.frame_bytes, "max_frames": frame_cap,
                        "oasis_frames": oasis_frames}
        ctx = Context(movie=movie, work=str(work), quick=quick, oasis_frames=oasis_frames)

        def partial(rows):
            doc["stages"] = rows
        doc["stages"] = _stage_loop(ctx, cases, devices, b, frame_cap, log, on_row=partial)
        if "cuda" not in devices and device == "both":
            doc["stages"] += [report.absent_row(c, "cuda", "not run: no CUDA") for c in cases]
    except BudgetExceeded:
        doc["stopped"] = "budget ran out"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc["elapsed_s"] = b.elapsed()
    if hasattr(os, "getloadavg"):
        doc["machine"]["load_average_end"] = list(os.getloadavg())
    report.finish(doc, cases)
    report.write(doc, out_dir)
    return doc


def select_cases(names):
    """The cases named (all when None), in the bench's order."""
    if not names:
        return list(CASES)
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    known = {c.name for c in CASES}
    bad = [n for n in names if n not in known]
    if bad:
        raise ParameterError(f"--stages: unknown stage(s) {', '.join(bad)}; expected some of "
                             f"{', '.join(c.name for c in CASES)}")
    return [c for c in CASES if c.name in names]


def _import_stages() -> None:
    """Import every stage's modules up front, so that no stage's share pays
    for the imports."""
    from .. import cnmf, deconvolution, evaluation, motion, pipeline, ringcnn, summary  # noqa


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
