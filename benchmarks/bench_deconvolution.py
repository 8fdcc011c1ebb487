"""Deconvolution speed: CUDA kernel vs numba CPU twin vs oasis-deconv.

    pytest benchmarks/bench_deconvolution.py --benchmark-only

Size: N traces x T frames, default 10,000 x 10,000 on the GPU; the CPU twin
and the reference (oasis-deconv, trace by trace, one core) run on a subset
(GPU_CNMF_BENCH_CPU_TRACES, default 1,000; reference
GPU_CNMF_BENCH_REF_TRACES, default 100) and are extrapolated linearly in N
(traces are independent). ``optimize_g`` runs on GPU_CNMF_BENCH_OPT_TRACES
(default 200) traces, starting from a wrong g. Sizes can be changed with
GPU_CNMF_BENCH_N and GPU_CNMF_BENCH_T. The GPU case is skipped without CUDA and CuPy, the
reference case without oasis-deconv.
"""
import os
import warnings

import numpy as np
import pytest
import torch

from gpu_cnmf.backend import cupy_available
from gpu_cnmf.deconvolution import deconvolve_batch

N = int(os.environ.get("GPU_CNMF_BENCH_N", 10_000))
T = int(os.environ.get("GPU_CNMF_BENCH_T", 10_000))
N_CPU = min(N, int(os.environ.get("GPU_CNMF_BENCH_CPU_TRACES", 1_000)))
N_REF = min(N, int(os.environ.get("GPU_CNMF_BENCH_REF_TRACES", 100)))
# optimize_g (refit g to the events, deconvolve again, until g settles)
N_OPT = min(N, int(os.environ.get("GPU_CNMF_BENCH_OPT_TRACES", 200)))
SN = 0.3
G = {1: (0.95,), 2: (1.7, -0.712)}


def traces(n, p, seed=0):
    """AR(p) calcium from Bernoulli spikes (0.5 Hz at 30 Hz) + noise, float32."""
    rng = np.random.default_rng(seed)
    s = (rng.random((n, T)) < 1 / 60).astype(np.float32)
    g = G[p]
    # the AR recursion as an IIR filter, all traces at once
    from scipy.signal import lfilter
    c = lfilter([1.0], [1.0] + [-x for x in g], s, axis=1)
    return (c + 1.0 + rng.normal(0, SN, (n, T))).astype(np.float32)


def _extra(benchmark, n):
    benchmark.extra_info.update(traces_run=n, traces_target=N, frames=T,
                                scale_to_target=N / n, threads=torch.get_num_threads())


@pytest.mark.parametrize("p", [1, 2])
def test_cpu_twin(benchmark, p):
    y = traces(N_CPU, p)
    deconvolve_batch(y[:4], p=p, g=G[p], sn=SN)       # compile / load the cache
    _extra(benchmark, N_CPU)
    benchmark.pedantic(deconvolve_batch, args=(y,), kwargs=dict(p=p, g=G[p], sn=SN),
                       rounds=1, iterations=1)


def test_cpu_twin_greedy(benchmark):
    """AR(2) without the exact active-set solve (exact=False): the greedy pool merge alone."""
    y = traces(N_CPU, 2)
    _extra(benchmark, N_CPU)
    benchmark.pedantic(deconvolve_batch, args=(y,), kwargs=dict(p=2, g=G[2], sn=SN, exact=False),
                       rounds=1, iterations=1)


def test_cpu_twin_two_stage(benchmark):
    """AR(2) with support='ar1': an AR(1) pass finds the events first."""
    y = traces(N_CPU, 2)
    _extra(benchmark, N_CPU)
    benchmark.pedantic(deconvolve_batch, args=(y,), kwargs=dict(p=2, g=G[2], sn=SN, support="ar1"),
                       rounds=1, iterations=1)


@pytest.mark.parametrize("p", [1, 2])
def test_cpu_twin_estimated_params(benchmark, p):
    """Full call as CNMF makes it: sn and g estimated, baseline free."""
    y = traces(N_CPU, p)
    _extra(benchmark, N_CPU)
    benchmark.pedantic(deconvolve_batch, args=(y,), kwargs=dict(p=p), rounds=1, iterations=1)


# a decay that is too fast (and for AR(2) a rise that is too slow)
G_WRONG = {1: (0.85,), 2: (1.8, -0.81)}
# AR(2) with the true rise root (0.7475) held and a decay too fast (0.9 for
# 0.9525): the recipe for real recordings, refit_rise=False
G_RISE_KNOWN = (0.9 + 0.7475, -0.9 * 0.7475)


@pytest.mark.parametrize("p", [1, 2])
def test_cpu_optimize_g(benchmark, p):
    y = traces(N_OPT, p)
    deconvolve_batch(y[:4], p=p, g=G[p], sn=SN)       # compile / load the cache
    _extra(benchmark, N_OPT)
    benchmark.pedantic(deconvolve_batch, args=(y,), kwargs=dict(p=p, g=G_WRONG[p], sn=SN, optimize_g=True),
                       rounds=1, iterations=1)


def test_cpu_optimize_g_decay_only(benchmark):
    y = traces(N_OPT, 2)
    deconvolve_batch(y[:4], p=2, g=G[2], sn=SN)       # compile / load the cache
    _extra(benchmark, N_OPT)
    benchmark.pedantic(deconvolve_batch, args=(y,),
                       kwargs=dict(p=2, g=G_RISE_KNOWN, sn=SN, optimize_g=True, refit_rise=False),
                       rounds=1, iterations=1)


def _gpu_case(benchmark, n, p, **kw):
    """Time deconvolve_batch on n traces on the GPU (kernel compiled first)."""
    y = torch.from_numpy(traces(n, p)).cuda()
    deconvolve_batch(y[:64], p=p, g=G[p], sn=SN)      # compile the kernel
    torch.cuda.synchronize()

    def run():
        out = deconvolve_batch(y, p=p, sn=SN, **kw)
        torch.cuda.synchronize()
        return out
    _extra(benchmark, n)
    benchmark.pedantic(run, rounds=1, iterations=1)


needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cupy_available()),
                               reason="needs a CUDA GPU and CuPy")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("p", [1, 2])
def test_gpu_optimize_g(benchmark, p):
    _gpu_case(benchmark, N_OPT, p, g=G_WRONG[p], optimize_g=True)


@pytest.mark.gpu
@needs_gpu
def test_gpu_optimize_g_decay_only(benchmark):
    _gpu_case(benchmark, N_OPT, 2, g=G_RISE_KNOWN, optimize_g=True, refit_rise=False)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("p", [1, 2])
def test_gpu_kernel(benchmark, p):
    _gpu_case(benchmark, N, p, g=G[p])


@pytest.mark.parametrize("p", [1, 2])
def test_reference_oasis_deconv(benchmark, p):
    oasis = pytest.importorskip("oasis.functions")
    y = traces(N_REF, p).astype(np.float64)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [oasis.deconvolve(row, g=G[p], sn=SN, penalty=1) for row in y]
    _extra(benchmark, N_REF)
    benchmark.pedantic(run, rounds=1, iterations=1)
