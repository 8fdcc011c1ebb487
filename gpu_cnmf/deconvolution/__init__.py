"""Deconvolution of calcium traces: noise, AR dynamics, OASIS.

CaImAn's names: a trace y (fluorescence of one component) is modelled as
y = c + b + noise, where c is the calcium (C for many traces), following
AR(p) dynamics c_t = g_1 c_{t-1} + ... + g_p c_{t-p} + s_t driven by
non-negative spikes s (S), b the baseline (bl), c1 the calcium at the first
frame, sn the noise standard deviation and lam the sparsity penalty.

- :func:`estimate_noise` — sn of each trace/pixel from its spectrum.
- :func:`estimate_time_constant` — g from the autocovariance;
  :func:`g_from_tau` / :func:`tau_from_g` — g from known time constants and back.
- :func:`deconvolve_batch` — OASIS on an (N, T) block: CUDA kernel on the
  GPU, compiled numba twin on the CPU.
- :func:`constrained_foopsi` — one trace, CaImAn's signature and returns.
"""
from .ar import estimate_time_constant, g_from_tau, tau_from_g
from .batch import DeconvResult, deconvolve_batch
from .foopsi import constrained_foopsi
from .noise import estimate_noise

__all__ = ["estimate_noise", "estimate_time_constant", "g_from_tau", "tau_from_g", "deconvolve_batch",
           "DeconvResult", "constrained_foopsi"]
