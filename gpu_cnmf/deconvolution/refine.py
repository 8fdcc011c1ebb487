"""Refining the AR coefficients from the events OASIS found (``optimize_g``).

With the spike times fixed, each inter-spike stretch (pool) of y - b is a
decay of known shape whose amplitude(s) can be fitted by least squares; the
time constant(s) that minimise the summed residual of these fits are the
refined g. AR(1): one amplitude per pool, one decay g. AR(2): two amplitudes
per pool (the pool's first value and the calcium before it), decay d and
rise r, g = (d + r, -d r). Searched by golden section, batched over traces
(each trace its own interval), the same torch code on every device.
"""
from __future__ import annotations

import math

import torch

_GOLDEN = (math.sqrt(5) - 1) / 2
N_GOLDEN = 30
BIG_SPIKE = 0.2
N_ROUNDS = 3   # refit / deconvolve rounds of deconvolve_batch
MAX_ROOT = 0.999


def _segments(S, n_events):
    """Pool index and offset within the pool of every frame, and which pools count.

    Pools start at the large spikes only (>= BIG_SPIKE x the trace's largest):
    with a decay that is too fast, the first deconvolution fills the true
    decays with small spikes, and cutting the pools there would hide the
    misfit that the refit must see. With ``n_events`` only the pools after
    the n largest spikes count.
    """
    N, T = S.shape
    dev = S.device
    big = BIG_SPIKE * S.max(dim=1, keepdim=True).values
    start = (S > 0) & (S >= big)
    start[:, 0] = True
    tt = torch.arange(T, device=dev).expand(N, T)
    first = torch.cummax(torch.where(start, tt, torch.zeros_like(tt)), dim=1).values
    k = (tt - first).to(torch.float64)
    seg = torch.cumsum(start.to(torch.int64), dim=1) - 1
    flat = seg + torch.arange(N, device=dev)[:, None] * T
    if n_events is None:
        keep = torch.ones(N * T, dtype=torch.float64, device=dev)
    else:
        size = torch.where(start, S.to(torch.float64), torch.zeros_like(S, dtype=torch.float64))
        size[:, 0] = 0
        kth = torch.topk(size, min(n_events, T), dim=1).values[:, -1:]
        chosen = start & (size >= kth) & (size > 0)
        keep = torch.zeros(N * T, dtype=torch.float64, device=dev)
        keep[flat[chosen]] = 1.0
    return k, flat, keep


def _segsum(v, flat, NT):
    out = torch.zeros(NT, dtype=v.dtype, device=v.device)
    return out.index_add_(0, flat.reshape(-1), v.reshape(-1))


def _impulse(d, r, k):
    """AR(2) impulse response at offsets k for roots d >= r (per trace)."""
    d = d[:, None]
    r = r[:, None]
    close = (d - r).abs() < 1e-6
    diff = torch.where(close, torch.ones_like(d), d - r)
    h = (d ** (k + 1) - r ** (k + 1)) / diff
    return torch.where(close, (k + 1) * d ** k, h)


def _rss_ar1(g, x, k, flat, keep, xx):
    NT = x.numel()
    w = g[:, None] ** k
    sgx = _segsum(w * x, flat, NT)
    sgg = _segsum(w * w, flat, NT).clamp_min(1e-300)
    per = (xx - sgx * sgx / sgg) * keep
    return per.reshape(x.shape).sum(dim=1)


def _rss_ar2(d, r, x, k, flat, keep, xx):
    NT = x.numel()
    h0 = _impulse(d, r, k)
    h1 = torch.where(k >= 1, _impulse(d, r, (k - 1).clamp_min(0)), torch.zeros_like(h0))
    a = _segsum(h0 * h0, flat, NT)
    bb = _segsum(h0 * h1, flat, NT)
    c = _segsum(h1 * h1, flat, NT)
    u = _segsum(h0 * x, flat, NT)
    v = _segsum(h1 * x, flat, NT)
    det = a * c - bb * bb
    ok = det > 1e-12 * (a * c).clamp_min(1e-300)
    fit2 = torch.where(ok, (c * u * u - 2 * bb * u * v + a * v * v) / torch.where(ok, det, torch.ones_like(det)),
                       u * u / a.clamp_min(1e-300))
    per = (xx - fit2) * keep
    return per.reshape(x.shape).sum(dim=1)


def _golden(f, lo, hi):
    """Per-trace minimiser of f on [lo, hi] (tensors (N,))."""
    a, b = lo.clone(), hi.clone()
    x1 = b - _GOLDEN * (b - a)
    x2 = a + _GOLDEN * (b - a)
    f1, f2 = f(x1), f(x2)
    for _ in range(N_GOLDEN):
        left = f1 < f2
        b = torch.where(left, x2, b)
        a = torch.where(left, a, x1)
        x2n = torch.where(left, x1, a + _GOLDEN * (b - a))
        x1n = torch.where(left, b - _GOLDEN * (b - a), x2)
        x1, x2 = x1n, x2n
        f1, f2 = f(x1), f(x2)
    return 0.5 * (a + b)


def refine_g(Y, S, bl, G, p, n_events=None):
    """Refit g to the decays after the events in S; returns G (N, 2) float64.

    Parameters
    ----------
    Y : tensor (N, T)
    S : tensor (N, T) spikes from a first deconvolution
    bl : tensor (N,) baselines
    G : tensor (N, 2) current (g1, g2)
    p : 1 or 2
    n_events : int or None
        Use only the pools after the n largest spikes (None: all pools).
    """
    x = Y.to(torch.float64) - bl.to(torch.float64)[:, None]
    k, flat, keep = _segments(S, n_events)
    NT = x.numel()
    xx = _segsum(x * x, flat, NT)
    N = x.shape[0]
    dev = x.device
    out = G.clone()
    if p == 1:
        f = lambda g: _rss_ar1(g, x, k, flat, keep, xx)  # noqa: E731
        out[:, 0] = _golden(f, torch.full((N,), 1e-3, dtype=torch.float64, device=dev),
                            torch.full((N,), MAX_ROOT, dtype=torch.float64, device=dev))
        return out
    g1, g2 = G[:, 0], G[:, 1]
    disc = (g1 * g1 + 4 * g2).clamp_min(0).sqrt()
    d = ((g1 + disc) / 2).clamp(1e-3, MAX_ROOT)
    r = ((g1 - disc) / 2).clamp(0.0, MAX_ROOT)
    r = torch.minimum(r, d)
    for _ in range(2):
        d = _golden(lambda z: _rss_ar2(z, r, x, k, flat, keep, xx), r.clamp_min(1e-3),
                    torch.full_like(d, MAX_ROOT))
        r = _golden(lambda z: _rss_ar2(d, z, x, k, flat, keep, xx), torch.zeros_like(r), d)
    out[:, 0] = d + r
    out[:, 1] = -d * r
    return out
