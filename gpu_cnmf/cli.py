"""The ``gpu-cnmf`` command line.

User mistakes (a missing file, a bad parameter, no GPU) print one line on
stderr and exit with status 2; nothing else is caught, so real bugs keep
their traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import GpuCnmfError


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
                      help="a small movie (128x128, 600 frames) for a quick check")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic movie")
    demo.add_argument("--out", default=None,
                      help="folder for the memory-mapped movies (default: a temporary folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(use_cuda=args.use_cuda, small=args.small, seed=args.seed,
                            out_dir=args.out)
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
