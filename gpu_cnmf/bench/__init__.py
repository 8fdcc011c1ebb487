"""One benchmark command for every stage, CPU against GPU, against the
hardware's limits: ``python -m gpu_cnmf.bench`` or ``gpu-cnmf bench``.

- :mod:`.runner` runs ``pytest -m gpu`` (with CUDA), the probes, then each
  stage sized to the time budget (:func:`run_bench`);
- :mod:`.stages` the stage cases, through the public API;
- :mod:`.probes` memory, PCIe and disk speeds;
- :mod:`.movie` the synthetic movie;
- :mod:`.report` rates, fractions of the limits, the one-hour projection,
  goals, the Markdown table and JSON, and :func:`compare` of two runs.

See benchmarks/README.md for how to run it on a CPU box, a GPU and Docker.
"""
from importlib import import_module

# run_bench and compare load torch and the stages: imported on first use, so
# that building the command line's parser stays quick
_LAZY = {"run_bench": ".runner", "BudgetExceeded": ".runner", "compare": ".report"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["run_bench", "compare", "BudgetExceeded", "add_arguments", "main_from_args"]


def add_arguments(parser) -> None:
    """The bench's options, shared by ``python -m gpu_cnmf.bench`` and
    ``gpu-cnmf bench``."""
    parser.add_argument("--device", choices=["cpu", "cuda", "both"], default="both",
                        help="where to run the stages (default both: CPU and, when CUDA "
                             "is present, GPU)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a check in about two minutes")
    parser.add_argument("--budget", type=float, default=480.0, metavar="SECONDS",
                        help="time for everything; the bench stops at it with what it has "
                             "(default 480)")
    parser.add_argument("--out", default="bench_out", metavar="DIR",
                        help="folder for bench.json and bench.md (default ./bench_out)")
    parser.add_argument("--dims", type=int, nargs=2, default=[512, 512], metavar=("D1", "D2"),
                        help="frame size of the synthetic movie (default 512 512)")
    parser.add_argument("--work-dir", default=None, metavar="DIR",
                        help="folder for the movie files and the disk probe (default: "
                             "inside --out); put it on the disk you will read movies from")
    parser.add_argument("--stages", default=None, metavar="NAMES",
                        help="comma-separated subset: rigid, pw_rigid, write_movie, cnmf_fit, "
                             "refit, oasis, evaluation, summary, ringcnn_train, "
                             "ringcnn_infer, pipeline (default all)")
    parser.add_argument("--skip-tests", action="store_true",
                        help="do not run pytest -m gpu first")
    parser.add_argument("--compare", nargs=2, default=None, metavar=("A.json", "B.json"),
                        help="print a table comparing two bench.json files, run nothing")


def command_line(args) -> str:
    """The ``gpu-cnmf bench`` command that reproduces a run, from its options."""
    parts = ["gpu-cnmf", "bench", "--device", args.device, "--budget", f"{args.budget:g}",
             "--out", args.out]
    if args.quick:
        parts.append("--quick")
    if list(args.dims) != [512, 512]:
        parts += ["--dims", str(args.dims[0]), str(args.dims[1])]
    if args.stages:
        parts += ["--stages", args.stages]
    if args.work_dir:
        parts += ["--work-dir", args.work_dir]
    if args.skip_tests:
        parts.append("--skip-tests")
    return " ".join(parts)


def main_from_args(args) -> int:
    """Run (or compare) as the parsed options say; prints the table."""
    from .report import compare, markdown
    from .runner import run_bench

    if args.compare:
        print(compare(*args.compare), end="", flush=True)
        return 0

    doc = run_bench(device=args.device, quick=args.quick, budget=args.budget, out=args.out,
                    dims=tuple(args.dims), work_dir=args.work_dir, run_tests=not args.skip_tests,
                    stages=args.stages, command=command_line(args))
    print(markdown(doc), end="", flush=True)
    print(f"\nwritten: {args.out}/bench.json, {args.out}/bench.md", flush=True)
    return 0
