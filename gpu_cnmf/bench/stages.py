"""The stage cases the bench times, each through the package's public API.

A case is a function ``run(ctx, device, n) -> seconds`` that times only the
stage's own call (inputs are prepared first, untimed, though their time
counts against the budget) and synchronises the device before stopping the
clock, plus what it moves: how many passes over the movie it makes
through memory, over PCIe, and from or to files. Bytes are counted as
``passes x n x frame bytes`` (float32), a lower bound for stages whose
internals re-read data (patch overlaps, iterative updates): the "fraction
of the limit" derived from them is therefore a lower bound too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..backend import synchronize
from .movie import DECAY_TIME, FR, GSIG, MAX_SHIFT, BenchMovie

# OASIS traces: AR(1) at 30 Hz, as in benchmarks/bench_deconvolution.py
OASIS_G = (0.95,)
OASIS_SN = 0.3


@dataclass
class Passes:
    """Passes over the data: through memory, across PCIe (GPU only), and
    read from / written to files."""
    memory: float
    pcie: float = 0.0
    disk_read: float = 0.0
    disk_write: float = 0.0


@dataclass
class Case:
    name: str
    label: str
    run: Callable
    passes: Passes
    unit: str = "frames"          # what n counts
    cal: int = 16                 # calibration size (also the smallest run)
    warm: int = 8                 # untimed warm-up size on the GPU (0: none)
    cap_full: int = 10_000
    cap_quick: int = 500
    weight: float = 1.0           # share of the budget
    after: str | None = None      # runs at the size of, and on the result of, this case
    in_pipeline: bool = False     # part of the one-hour projection's stage sum
    notes: str = ""


@dataclass
class Context:
    """What the cases share: the movie, a scratch folder, results to reuse."""
    movie: BenchMovie
    work: str
    quick: bool
    oasis_frames: int
    stash: dict = field(default_factory=dict)
    _c_order: dict = field(default_factory=dict)
    _traces: dict = field(default_factory=dict)

    def images(self, n: int):
        """The first n frames as CNMF reads them: a C-order memmap, reshaped
        ``np.reshape(Yr.T, [T] + dims, order='F')`` as CaImAn users do."""
        from ..io import load_memmap, save_memmap

        if n not in self._c_order:
            for old in list(self._c_order):          # keep one on disk at a time
                _remove(self._c_order.pop(old)[0])
            path = save_memmap(self.movie.frames(n), os.path.join(self.work, f"Yr{n}"),
                               order="C")
            Yr, dims, T = load_memmap(path)
            self._c_order[n] = (path, np.reshape(Yr.T, [T] + list(dims), order="F"))
        return self._c_order[n][1]

    def traces(self, n: int) -> np.ndarray:
        """n AR(1) traces of ``oasis_frames`` frames (float32), seed 0."""
        from scipy.signal import lfilter

        have = self._traces.get("y")
        if have is None or have.shape[0] < n:
            rng = np.random.default_rng(0)
            s = (rng.random((n, self.oasis_frames)) < 1 / 60).astype(np.float32)
            c = lfilter([1.0], [1.0, -OASIS_G[0]], s, axis=1)
            c += 1.0 + rng.normal(0, OASIS_SN, c.shape)
            self._traces["y"] = c.astype(np.float32)
        return self._traces["y"][:n]


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _timed(device, fn):
    synchronize(device)
    t = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t, out


def _cuda(device) -> bool:
    return torch.device(device).type == "cuda"


# ----------------------------------------------------------------- motion
def _motion(ctx, device, n, pw_rigid):
    from ..motion import MotionCorrect

    Y = ctx.movie.frames(n)
    out = np.empty(Y.shape, np.float32)

    def go():
        mc = MotionCorrect(Y, max_shifts=(MAX_SHIFT + 2,) * 2, pw_rigid=pw_rigid,
                           strides=(96, 96), overlaps=(32, 32), max_deviation_rigid=3,
                           border_nan="copy", use_cuda=_cuda(device), progress=False)
        mc.motion_correct(out=out)
        return mc
    sec, _ = _timed(device, go)
    return sec


def run_rigid(ctx, device, n):
    return _motion(ctx, device, n, False)


def run_pw_rigid(ctx, device, n):
    return _motion(ctx, device, n, True)


def run_write(ctx, device, n):
    from ..motion import MotionCorrect

    Y = ctx.movie.frames(n)
    mc = MotionCorrect(Y, max_shifts=(MAX_SHIFT + 2,) * 2, pw_rigid=False,
                       border_nan="copy", use_cuda=_cuda(device), progress=False,
                       base_name=os.path.join(ctx.work, "mc_write"))
    try:
        sec, _ = _timed(device, lambda: mc.motion_correct(save_movie=True))
    finally:
        for f in mc.mmap_file:
            _remove(f)
    return sec


# ------------------------------------------------------------------- CNMF
def cnmf_params(dims, n_neurons, use_cuda):
    """Patches of 2 rf = 64 px (smaller on small test frames), K from the
    neuron density as in benchmarks/bench_cnmf.py."""
    from ..params import CNMFParams

    rf = 32 if min(dims) >= 128 else max(8, min(dims) // 4)
    density = n_neurons / float(np.prod(dims))
    k = max(2, int(np.ceil(1.2 * density * (2 * rf) ** 2)))
    p = CNMFParams()
    p.change_params({"data": {"fr": FR, "decay_time": DECAY_TIME},
                     "init": {"gSig": [GSIG, GSIG], "K": k},
                     "temporal": {"p": 1},
                     "patch": {"rf": rf, "stride": rf // 2, "only_init": True},
                     "motion": {"use_cuda": bool(use_cuda), "max_shifts": [MAX_SHIFT + 2] * 2}})
    return p


def run_cnmf_fit(ctx, device, n):
    from ..cnmf import CNMF

    images = ctx.images(n)
    p = cnmf_params(ctx.movie.dims, ctx.movie.n_neurons, _cuda(device))
    sec, cnm = _timed(device, lambda: CNMF(1, params=p).fit(images))
    ctx.stash[("cnmf_fit", device)] = (n, cnm)
    return sec


def run_refit(ctx, device, n):
    n_fit, cnm = ctx.stash[("cnmf_fit", device)]
    images = ctx.images(n_fit)
    sec, cnm2 = _timed(device, lambda: cnm.refit(images))
    return sec


# ------------------------------------------------------------------ OASIS
def run_oasis(ctx, device, n):
    from ..deconvolution import deconvolve_batch

    y = ctx.traces(n)
    if _cuda(device):
        y = torch.from_numpy(y).to(device)
    sec, _ = _timed(device, lambda: deconvolve_batch(y, p=1, g=OASIS_G, sn=OASIS_SN))
    return sec


# ---------------------------------------------- evaluation, summary images
def run_evaluation(ctx, device, n):
    from ..evaluation import evaluate_components

    images = ctx.images(n)
    tr = ctx.movie.truth(n)
    sec, _ = _timed(device, lambda: evaluate_components(
        images, tr.A, tr.C, tr.b, tr.f, None, ctx.movie.dims, FR, DECAY_TIME,
        use_cuda=_cuda(device), gSig=(GSIG, GSIG)))
    return sec


def run_summary(ctx, device, n):
    from ..summary import summary_images

    Y = ctx.movie.frames(n)
    sec, _ = _timed(device, lambda: summary_images(Y, use_cuda=_cuda(device)))
    return sec


# --------------------------------------------------------------- Ring-CNN
def run_ring_train(ctx, device, n):
    from ..ringcnn import fit_ring_cnn

    Y = ctx.movie.frames(n)
    sec, (model, _) = _timed(device, lambda: fit_ring_cnn(
        Y, GSIG, dict(max_epochs=1), use_cuda=_cuda(device), val_fraction=0.0))
    ctx.stash[("ringcnn", device)] = model
    return sec


def run_ring_infer(ctx, device, n):
    from ..ringcnn import fit_ring_cnn, subtract_background

    model = ctx.stash.get(("ringcnn", device))
    if model is None:            # training was skipped: a model from a few frames
        model, _ = fit_ring_cnn(ctx.movie.frames(32), GSIG, dict(max_epochs=1),
                                use_cuda=_cuda(device), val_fraction=0.0)
        ctx.stash[("ringcnn", device)] = model
    Y = ctx.movie.frames(n)
    sec, _ = _timed(device, lambda: subtract_background(Y, model))
    return sec


# --------------------------------------------------------------- pipeline
def run_pipeline_case(ctx, device, n):
    from ..pipeline import run_pipeline

    path = ctx.movie.npy(n, ctx.work)
    p = cnmf_params(ctx.movie.dims, ctx.movie.n_neurons, _cuda(device))
    out = os.path.join(ctx.work, f"pipeline_{torch.device(device).type}_{n}.hdf5")
    try:
        sec, _ = _timed(device, lambda: run_pipeline(path, p, out, progress=False,
                                                     work_dir=ctx.work))
    finally:
        _remove(out)
    return sec


CASES = [
    Case("rigid", "rigid registration", run_rigid, Passes(memory=2, pcie=2),
         notes="host RAM to host RAM: movie read once, corrected frames written once"),
    Case("pw_rigid", "piecewise-rigid registration", run_pw_rigid, Passes(memory=3, pcie=3),
         notes="a rigid pass for the template, then the piecewise pass (read + write)"),
    Case("write_movie", "write corrected movie", run_write,
         Passes(memory=2, pcie=2, disk_read=1, disk_write=1), in_pipeline=True,
         notes="rigid correction streamed to an F-order memmap file"),
    Case("cnmf_fit", "CNMF fit (patches)", run_cnmf_fit,
         Passes(memory=1, pcie=1, disk_read=1), cal=60, warm=0, cap_full=3000,
         cap_quick=300, weight=1.5, in_pipeline=True,
         notes="each patch read once (overlaps not counted)"),
    Case("refit", "refit (whole field)", run_refit, Passes(memory=2, pcie=2, disk_read=2),
         warm=0, after="cnmf_fit", in_pipeline=True,
         notes="on the fit's frames; spatial and temporal updates read the movie once each"),
    Case("oasis", "OASIS deconvolution", run_oasis, Passes(memory=3), unit="traces",
         cal=32, warm=4, cap_full=10_000, cap_quick=1000,
         notes="traces x frames float32: traces read, calcium and spikes written"),
    Case("evaluation", "component evaluation", run_evaluation,
         Passes(memory=1, pcie=1, disk_read=1), cal=32, warm=0, cap_full=5000, cap_quick=300,
         in_pipeline=True, notes="residual traces from the movie (one pass), ground-truth A, C"),
    Case("summary", "summary images", run_summary, Passes(memory=1, pcie=1), in_pipeline=True,
         notes="mean, max, std and Cn in one pass"),
    Case("ringcnn_train", "Ring-CNN training epoch", run_ring_train, Passes(memory=1, pcie=1),
         cap_full=5000, notes="one epoch over the frames, batch 32"),
    Case("ringcnn_infer", "Ring-CNN inference", run_ring_infer, Passes(memory=2, pcie=2),
         notes="background subtracted into a host array (read + write)"),
    Case("pipeline", "whole gpu-cnmf run", run_pipeline_case,
         Passes(memory=9, pcie=7, disk_read=7, disk_write=2), cal=60, warm=0, cap_full=3000,
         cap_quick=300, weight=2.0,
         notes="motion (template + pass, written), C-order memmap, fit, refit, evaluation, "
               "summary images, results file"),
]

CASE_NAMES = [c.name for c in CASES]
