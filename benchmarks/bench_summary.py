"""Summary-image throughput, CPU vs GPU (pytest-benchmark).

    python -m pytest benchmarks/bench_summary.py --benchmark-only

Sizes: 512 x 512 pixels, 1000 frames (1 GB float32) for mean/max/std/Cn,
CNMF-E's correlation_pnr on 1p-like frames, and component evaluation on a
synthetic movie. GPU cases run only where CUDA is available.
"""
import numpy as np
import pytest
import torch

from gpu_cnmf.summary import correlation_pnr, summary_images

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _movie(T=1000, dims=(512, 512), seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((T, *dims), dtype=np.float32)
    Y += 100.0
    return Y


@pytest.fixture(scope="module")
def movie():
    return _movie()


@pytest.mark.parametrize("device", DEVICES)
def test_summary_images_512(benchmark, movie, device):
    benchmark.pedantic(summary_images, args=(movie,), kwargs={"use_cuda": device},
                       rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("device", DEVICES)
def test_correlation_pnr_512(benchmark, movie, device):
    benchmark.pedantic(correlation_pnr, args=(movie[:500],),
                       kwargs={"gSig": 3, "use_cuda": device},
                       rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_components_256(benchmark, device):
    synthetic = pytest.importorskip("gpu_cnmf.synthetic")
    from gpu_cnmf.evaluation import compute_residuals, evaluate_components
    mov, truth = synthetic.make_movie("2p", dims=(256, 256), n_frames=2000,
                                      n_neurons=300, seed=0)
    YrA = compute_residuals(mov, truth.A, truth.C, truth.b, truth.f)
    benchmark.pedantic(evaluate_components,
                       args=(mov, truth.A, truth.C, truth.b, truth.f, YrA, (256, 256),
                             30.0, 0.4, {}),
                       kwargs={"use_cuda": device, "gSig": (5, 5)},
                       rounds=2, iterations=1, warmup_rounds=1)
