"""Ring-CNN benchmarks: training epoch time and inference frames/s, CPU vs GPU.

Run under pytest-benchmark (GPU cases skip without CUDA)::

    python -m pytest benchmarks/bench_ringcnn.py --benchmark-only

or as a script, which prints a table for ``RESULTS.md``::

    python benchmarks/bench_ringcnn.py --dims 256 256 --frames 1000 --repeat 3

The movie is the synthetic 1p movie of :func:`gpu_cnmf.synthetic.make_movie`.
Training epochs use the ring_CNN defaults (n_channels=2, width=5, pct loss,
batch 32, no validation split so an epoch is exactly one pass over the movie).
"""
from __future__ import annotations

import argparse
import time

import pytest
import torch

from gpu_cnmf.backend import cuda_available, describe, get_device, synchronize
from gpu_cnmf.ringcnn import fit_ring_cnn, subtract_background
from gpu_cnmf.synthetic import make_movie

GSIG = 4
DIMS = (256, 256)
FRAMES = 1000
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _movie(dims=DIMS, frames=FRAMES):
    Y, _ = make_movie("1p", dims=dims, n_frames=frames, n_neurons=max(10, dims[0] * dims[1] // 900),
                      seed=0)
    return Y


def _skip_without(device):
    if device == "cuda" and not cuda_available():
        pytest.skip("needs a CUDA GPU")


def train_one_epoch(Y, device):
    """Seconds for one training epoch over all frames of ``Y``."""
    dev = get_device(device == "cuda")
    synchronize(dev)
    _, hist = fit_ring_cnn(Y, GSIG, dict(max_epochs=1), use_cuda=device == "cuda",
                           val_fraction=0.0)
    synchronize(dev)
    return hist.epoch_time[0]


def infer(Y, model):
    """Seconds to subtract the background from every frame of ``Y``."""
    dev = next(model.parameters()).device
    synchronize(dev)
    t0 = time.perf_counter()
    subtract_background(Y, model)
    synchronize(dev)
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def movie():
    return _movie()


@pytest.mark.parametrize("device", DEVICES)
def test_train_epoch(benchmark, movie, device):
    _skip_without(device)
    benchmark.extra_info.update(device=describe(get_device(device == "cuda")),
                                dims=list(movie.shape[1:]), frames=movie.shape[0])
    benchmark.pedantic(fit_ring_cnn, args=(movie, GSIG, dict(max_epochs=1)),
                       kwargs=dict(use_cuda=device == "cuda", val_fraction=0.0),
                       rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["frames_per_s"] = movie.shape[0] / benchmark.stats.stats.mean


@pytest.mark.parametrize("device", DEVICES)
def test_inference(benchmark, movie, device):
    _skip_without(device)
    model, _ = fit_ring_cnn(movie[:64], GSIG, dict(max_epochs=1), use_cuda=device == "cuda")
    benchmark.extra_info.update(device=describe(get_device(device == "cuda")),
                                dims=list(movie.shape[1:]), frames=movie.shape[0])
    benchmark.pedantic(subtract_background, args=(movie, model), rounds=3, iterations=1,
                       warmup_rounds=1)
    benchmark.extra_info["frames_per_s"] = movie.shape[0] / benchmark.stats.stats.mean


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs=2, default=list(DIMS))
    ap.add_argument("--frames", type=int, default=FRAMES)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    args = ap.parse_args(argv)
    Y = _movie(tuple(args.dims), args.frames)
    T = Y.shape[0]
    print(f"movie {T} x {args.dims[0]} x {args.dims[1]}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print("| device | train epoch (s) | train frames/s | inference (s) | inference frames/s |")
    print("|---|---|---|---|---|")
    for device in args.devices:
        if device == "cuda" and not cuda_available():
            print("| cuda | skipped: no CUDA GPU | | | |")
            continue
        train_one_epoch(Y[:64], device)  # warm-up (allocator, FFT plans)
        ep = min(train_one_epoch(Y, device) for _ in range(args.repeat))
        model, _ = fit_ring_cnn(Y[:64], GSIG, dict(max_epochs=1), use_cuda=device == "cuda")
        infer(Y[:64], model)
        inf = min(infer(Y, model) for _ in range(args.repeat))
        name = describe(get_device(device == "cuda"))
        print(f"| {name} | {ep:.2f} | {T / ep:.0f} | {inf:.2f} | {T / inf:.0f} |")


if __name__ == "__main__":
    main()
