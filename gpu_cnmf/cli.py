"""The ``gpu-cnmf`` command line.

- ``gpu-cnmf run MOVIE... [--params p.json] [--out r.hdf5] [--use-cuda]
  [--keep-memmap] [--plane N|all] [--channel N] [--nwb-series NAME]``: the
  whole pipeline (:func:`gpu_cnmf.pipeline.run_pipeline`), a line per stage on
  stderr and a closing summary on stdout;
- ``gpu-cnmf run ... --scheduler ADDRESS``: the same, with the CNMF patches
  on a Dask cluster's workers;
- ``gpu-cnmf batch MOVIE_OR_GLOB... --params p.json --out-dir DIR
  [--scheduler ADDRESS | --workers N] [--use-cuda]``: one pipeline per
  recording on a Dask cluster (:func:`gpu_cnmf.batch.run_batch`), a summary
  table on stdout; exit status 1 when some recording failed;
- ``gpu-cnmf report r.hdf5 [--out-dir DIR]``: contour and trace pictures
  (:func:`gpu_cnmf.report.write_report`), their paths on stdout;
- ``gpu-cnmf demo``: a synthetic movie with known truth, scored stage by stage;
- ``gpu-cnmf bench [--device cpu|cuda|both] [--quick] [--budget S] [--out DIR]``:
  every stage timed on a synthetic movie, CPU against GPU, against the
  measured memory, PCIe and disk speeds (:mod:`gpu_cnmf.bench`).

User mistakes (a missing file, a bad parameter, no GPU) print one line on
stderr and exit with status 2; nothing else is caught, so real bugs keep
their traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import GpuCnmfError


def _plane_arg(text: str):
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a plane index >= 0 or 'all', got {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-cnmf",
        description="GPU-accelerated calcium-imaging analysis with CaImAn's parameters.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="generate a synthetic movie with known truth, analyse it, "
                     "and print the accuracy of each stage")
    demo.add_argument("--use-cuda", action="store_true", help="run every stage on the GPU")
    demo.add_argument("--small", action="store_true",
                      help="a small movie for a quick check")
    demo.add_argument("--1p", dest="one_photon", action="store_true",
                      help="a one-photon movie (bright fluctuating background), analysed "
                           "with CNMF-E")
    demo.add_argument("--ring-cnn", dest="ring_cnn", action="store_true",
                      help="with --1p: remove the background with a Ring-CNN learned on the "
                           "movie, then CNMF as for two-photon data")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic movie")
    demo.add_argument("--out", default=None,
                      help="folder for the memory-mapped movies (default: a temporary folder)")

    run = sub.add_parser(
        "run", help="motion correction, CNMF (patches, then refit), component evaluation; "
                    "results in one HDF5 file (CaImAn's cnmf.save layout)")
    run.add_argument("movies", nargs="+", metavar="MOVIE",
                     help="movie file(s): .tif/.tiff (ScanImage, ImageJ), .h5/.hdf5, .nwb, "
                          ".npy, .mmap, .zarr, .sbx (Scanbox), .avi/.mkv/.mp4, or a folder "
                          "(Miniscope videos, Bruker); several are joined in time")
    run.add_argument("--params", default=None, metavar="P.JSON",
                     help="parameters as JSON: {\"name\": value} or {\"group\": {...}}, "
                          "or a file written by CNMFParams.to_json")
    run.add_argument("--out", default=None, metavar="RESULTS.HDF5",
                     help="results file (default: <first movie>_results.hdf5 next to it)")
    run.add_argument("--use-cuda", action="store_true",
                     help="run every stage on the GPU (same as use_cuda=True)")
    run.add_argument("--keep-memmap", action="store_true",
                     help="keep the memory-mapped movies next to the results file")
    run.add_argument("--ring-cnn", dest="ring_cnn", action="store_true",
                     help="one-photon movies: subtract a Ring-CNN background (ring_CNN "
                          "parameters) after motion correction, before CNMF")
    run.add_argument("--memory-limit", default=None, metavar="SIZE",
                     help="cap on host memory apart from the results, e.g. 4GB or 512MiB "
                          "(patch.memory_limit; default: from what the machine has)")
    run.add_argument("--device-memory-limit", default=None, metavar="SIZE",
                     help="GPU memory the stages may plan to use, e.g. 8GB "
                          "(patch.device_memory_limit)")
    run.add_argument("--quiet", action="store_true", help="no per-stage progress on stderr")
    run.add_argument("--log-file", default=None, metavar="PATH",
                     help="also write the progress log lines to this file")
    run.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="fit the CNMF patches on this Dask cluster (tcp://host:8786 or a "
                          "scheduler file); its workers read the memory map, made next to "
                          "the results file, by path: use a filesystem they share")
    run.add_argument("--plane", type=_plane_arg, default=None, metavar="N|all",
                     help="plane of a multi-plane recording (0-based; data.plane), or 'all' "
                          "to analyse each plane as its own movie (<out>_plane<N>.hdf5)")
    run.add_argument("--channel", type=int, default=None, metavar="N",
                     help="channel of a multi-channel recording (0-based; data.channel)")
    run.add_argument("--nwb-series", default=None, metavar="NAME",
                     help="the TwoPhotonSeries/OnePhotonSeries of an NWB file to analyse "
                          "(data.nwb_series; default: the only one)")

    batch = sub.add_parser(
        "batch", help="run the pipeline on many recordings, one Dask task each; a results "
                      "file per recording and a summary table")
    batch.add_argument("movies", nargs="+", metavar="MOVIE_OR_GLOB",
                       help="movie files or glob patterns ('data/*.tif'), one recording each")
    batch.add_argument("--params", default=None, metavar="P.JSON",
                       help="parameters for every recording (as for run)")
    batch.add_argument("--out-dir", required=True, metavar="DIR",
                       help="folder for <movie>_results.hdf5 and batch_summary.csv/.json")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running Dask scheduler (tcp://host:8786 or a scheduler file)")
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes on this machine (default: one per core, at "
                            "most one per recording)")
    batch.add_argument("--use-cuda", action="store_true",
                       help="run on the GPU; without --scheduler one worker per GPU "
                            "(needs dask-cuda)")
    batch.add_argument("--overrides", default=None, metavar="TABLE",
                       help="per-recording parameters: a CSV (column 'recording', one column "
                            "per parameter) or JSON ({recording: {name: value}}) file")
    batch.add_argument("--force", action="store_true",
                       help="redo recordings whose results file is already there")
    batch.add_argument("--quiet", action="store_true", help="no progress bar on stderr")

    report = sub.add_parser("report", help="draw contours and traces of a results file (PNG)")
    report.add_argument("results", metavar="RESULTS.HDF5")
    report.add_argument("--out-dir", default=None,
                        help="folder for the pictures (default: next to the results file)")
    report.add_argument("--n-traces", type=int, default=10,
                        help="how many traces to draw, highest SNR first (default 10)")
    bench = sub.add_parser(
        "bench", help="time every stage on a synthetic 512x512 movie (CPU and/or GPU), "
                      "against the hardware's limits; a Markdown table and JSON")
    from .bench import add_arguments as _bench_arguments
    _bench_arguments(bench)
    return parser


def _configure_logging(quiet: bool, log_file=None) -> list:
    """Send the ``gpu_cnmf`` logger's lines (progress every 10 %, stage notes)
    to stderr, and to ``log_file``, so a batch job's log shows where it is.

    Returns the handlers added (removed again when the run ends).
    """
    import logging

    from .errors import ParameterError

    log = logging.getLogger("gpu_cnmf")
    fmt = logging.Formatter("%(asctime)s gpu-cnmf %(levelname)s %(message)s", "%H:%M:%S")
    handlers = []
    if not quiet:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file is not None:
        try:
            handlers.append(logging.FileHandler(log_file))
        except OSError as err:
            raise ParameterError(f"--log-file {log_file}: cannot write it ({err.strerror})") \
                from err
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    if handlers:
        log.setLevel(logging.INFO)
        log.propagate = False      # the command line's own lines, not twice
    return handlers


def _remove_handlers(handlers) -> None:
    import logging

    log = logging.getLogger("gpu_cnmf")
    for h in handlers:
        log.removeHandler(h)
        h.close()
    if handlers:
        log.propagate = True
        log.setLevel(logging.NOTSET)


def _run(args) -> int:
    from pathlib import Path

    from .params import CNMFParams
    from .pipeline import load_params_file, run_pipeline

    params = load_params_file(args.params) if args.params else CNMFParams()
    if args.use_cuda:
        params.change_params({"motion": {"use_cuda": True}})
    for flag, key in ((args.memory_limit, "memory_limit"),
                      (args.device_memory_limit, "device_memory_limit")):
        if flag is not None:
            params.change_params({"patch": {key: flag}})
    chosen = {k: getattr(args, k) for k in ("plane", "channel", "nwb_series")
              if getattr(args, k) is not None}
    if chosen:
        params.change_params({"data": chosen})
    out = args.out
    if out is None:
        first = Path(args.movies[0])
        out = str(first.with_name(first.stem + "_results.hdf5"))
    run = run_pipeline if args.scheduler is None else _on_cluster(args.scheduler, out,
                                                                   args.quiet)
    handlers = _configure_logging(quiet=args.quiet, log_file=args.log_file)
    try:
        result = run(args.movies, params, out, progress=not args.quiet,
                     keep_memmap=args.keep_memmap, ring_cnn=args.ring_cnn)
    finally:
        _remove_handlers(handlers)
    for one in (result if isinstance(result, list) else [result]):
        print(one.summary(), flush=True)
    return 0


def _on_cluster(scheduler, out, quiet):
    """``run_pipeline`` with its patches on the cluster at ``scheduler``."""
    from pathlib import Path

    from .cluster import cluster_client, dashboard_link
    from .pipeline import run_pipeline

    def run(*args, **kwargs):
        with cluster_client(scheduler) as client:
            if not quiet:
                print(f"gpu-cnmf: Dask dashboard: {dashboard_link(client)}", file=sys.stderr,
                      flush=True)
            # the workers open the memory map by path: next to the results
            work = str(Path(out).resolve().parent)
            return run_pipeline(*args, dview=client, work_dir=work, **kwargs)
    return run


def _batch(args) -> int:
    from .params import CNMFParams
    from .pipeline import load_params_file, run_batch

    params = load_params_file(args.params) if args.params else CNMFParams()
    _configure_logging(quiet=args.quiet)
    result = run_batch(args.movies, params, args.out_dir, scheduler=args.scheduler,
                       n_workers=args.workers, use_cuda=args.use_cuda,
                       overrides=args.overrides, force=args.force,
                       progress_bar=not args.quiet)
    print(result.table(), flush=True)
    print("summary: " + ", ".join(result.summary_files), flush=True)
    return 0 if result.ok else 1


def _report(args) -> int:
    from .report import write_report

    for path in write_report(args.results, args.out_dir, n_traces=args.n_traces):
        print(path, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(use_cuda=args.use_cuda, small=args.small, seed=args.seed,
                            out_dir=args.out, one_photon=args.one_photon,
                            ring_cnn=args.ring_cnn)
        if args.command == "run":
            return _run(args)
        if args.command == "report":
            return _report(args)
        if args.command == "bench":
            from .bench import main_from_args
            return main_from_args(args)
        if args.command == "batch":
            return _batch(args)
    except GpuCnmfError as err:
        print(f"gpu-cnmf: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpu-cnmf: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
