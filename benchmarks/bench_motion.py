"""Motion-correction throughput, host RAM to host RAM (pytest-benchmark).

A uint16 movie (default 2,000 frames of 512 x 512, ``BENCH_MOTION_FRAMES``
overrides) is registered and warped into a preallocated float32 array, with
the template built from the data, for gpu_cnmf rigid and pw-rigid on the
CPU and on a GPU (skipped without CUDA), and for suite2p's registration
(``register_frames``, rigid and nonrigid, CPU) when it can be imported.
Every result carries ``frames_per_s`` in ``extra_info``; run with ``-s`` to
see one line per case::

    python -m pytest benchmarks/bench_motion.py -s --benchmark-disable-gc \
        --benchmark-columns=mean

suite2p is GPL and only an optional reference here, never imported by the
package. Its registration module imports cellpose, which imports
torchvision; where torchvision is absent a stub module is put in place for
the import only (registration itself never calls it).
"""
from __future__ import annotations

import os
import sys
import time
import types

import numpy as np
import pytest
import torch

from gpu_cnmf.motion import MotionCorrect

T = int(os.environ.get("BENCH_MOTION_FRAMES", "2000"))
DIMS = (512, 512)
MAX_SHIFT = 6


@pytest.fixture(scope="module")
def movie():
    """uint16 frames: a smooth textured scene at integer rigid offsets
    (+-MAX_SHIFT) plus Gaussian noise of ~2 % of the range."""
    rng = np.random.default_rng(0)
    H, W = DIMS[0] + 2 * MAX_SHIFT, DIMS[1] + 2 * MAX_SHIFT
    spec = np.fft.rfft2(rng.standard_normal((H, W)))
    ky = np.fft.fftfreq(H)[:, None]
    kx = np.fft.rfftfreq(W)[None]
    scene = np.fft.irfft2(spec * np.exp(-2 * (np.pi * 3.0) ** 2 * (ky ** 2 + kx ** 2)), s=(H, W))
    scene = 1000 + 800 * scene / scene.std()
    off = rng.integers(0, 2 * MAX_SHIFT + 1, (T, 2))
    out = np.empty((T,) + DIMS, np.uint16)
    for t0 in range(0, T, 100):
        t1 = min(T, t0 + 100)
        noise = rng.normal(0, 40, (t1 - t0,) + DIMS).astype(np.float32)
        for i in range(t0, t1):
            y, x = off[i]
            fr = scene[y:y + DIMS[0], x:x + DIMS[1]] + noise[i - t0]
            out[i] = np.clip(fr, 0, 65535)
    return out


def _report(benchmark, name, seconds):
    fps = T / seconds
    benchmark.extra_info["frames_per_s"] = fps
    benchmark.extra_info["frames"] = T
    print(f"\n[bench_motion] {name}: {T} frames {DIMS[0]}x{DIMS[1]} in {seconds:.2f} s "
          f"= {fps:.1f} frames/s (torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f})")


def _ours(benchmark, movie, use_cuda, pw_rigid):
    out = np.empty(movie.shape, np.float32)

    def run():
        t = time.perf_counter()
        mc = MotionCorrect(movie, max_shifts=(MAX_SHIFT, MAX_SHIFT), pw_rigid=pw_rigid,
                           strides=(96, 96), overlaps=(32, 32), max_deviation_rigid=3,
                           border_nan="copy", use_cuda=use_cuda, progress=False)
        mc.motion_correct(out=out)
        if use_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t, mc

    seconds, mc = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    _report(benchmark, f"gpu_cnmf {'pw-rigid' if pw_rigid else 'rigid'} "
                       f"{'cuda' if use_cuda else 'cpu'}", seconds)
    assert np.isfinite(out[-1]).all()
    assert np.abs(mc.shifts_rig).max() <= MAX_SHIFT + 1e-3


@pytest.mark.parametrize("pw_rigid", [False, True], ids=["rigid", "pwrigid"])
def test_gpu_cnmf_cpu(benchmark, movie, pw_rigid):
    _ours(benchmark, movie, False, pw_rigid)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pw_rigid", [False, True], ids=["rigid", "pwrigid"])
def test_gpu_cnmf_cuda(benchmark, movie, pw_rigid):
    # one untimed warm-up on a few frames (CUDA context, cuFFT plans)
    MotionCorrect(movie[:300], use_cuda=True, pw_rigid=pw_rigid,
                  progress=False).motion_correct()
    _ours(benchmark, movie, True, pw_rigid)


def _suite2p_register():
    """suite2p.registration.register, or None where it cannot be imported."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tr = types.ModuleType("torchvision.transforms")
        fn = types.ModuleType("torchvision.transforms.functional")
        ft = types.ModuleType("torchvision.transforms._functional_tensor")
        tv.transforms, tr.functional, tr._functional_tensor = tr, fn, ft
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr,
                            "torchvision.transforms.functional": fn,
                            "torchvision.transforms._functional_tensor": ft})
    try:
        import suite2p.registration.register as reg
    except Exception:  # not installed, or its optional stack is broken
        return None
    return reg


@pytest.mark.parametrize("nonrigid", [False, True], ids=["rigid", "nonrigid"])
def test_suite2p_cpu(benchmark, movie, nonrigid):
    reg = _suite2p_register()
    if reg is None:
        pytest.skip("suite2p registration not importable")
    dev = torch.device("cpu")
    data = movie.view(np.int16) if movie.max() < 32768 else (movie // 2).astype(np.int16)
    data = np.ascontiguousarray(data) if data.dtype != np.int16 else data.astype(np.int16)
    out = np.empty(data.shape, np.int16)

    def run():
        t = time.perf_counter()
        idx = np.linspace(0, T - 1, min(T, 400)).astype(int)
        settings = dict(reg.default_settings()["registration"])
        ref = reg.compute_reference(data[idx], settings=settings, device=dev)
        reg.register_frames(data, ref, f_align_out=out, nonrigid=nonrigid,
                            block_size=(128, 128), maxregshift=MAX_SHIFT / DIMS[0] + 0.01,
                            device=dev)
        return time.perf_counter() - t

    seconds = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    _report(benchmark, f"suite2p {'nonrigid' if nonrigid else 'rigid'} cpu", seconds)
