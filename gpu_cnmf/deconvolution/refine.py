"""Refining the AR coefficients from the events OASIS found (``optimize_g``).

With the spike times fixed, each stretch from one large spike to the next
(pool) of y - b is a decay of known shape whose amplitude is fitted by least
squares; the time constant(s) that minimise the summed residual of these
fits are the refined g. AR(1): one amplitude per pool, one decay g. AR(2):
decay d and rise r, g = (d + r, -d r); per pool one event amplitude and a
local baseline offset, on top of the calcium carried in from before the pool
(see :func:`refine_g`). Searched by golden section (AR(2): alternating
between d and r), batched over traces (each trace its own interval), the
same torch code on every device.
"""
from __future__ import annotations

import math

import torch

_GOLDEN = (math.sqrt(5) - 1) / 2
N_GOLDEN = 30
# AR(2): 0.618^20 ~ 7e-5 of the interval is well below G_TOL, and the
# alternating searches repeat it many times
N_GOLDEN_AR2 = 20
BIG_SPIKE = 0.2
N_ROUNDS_AR1 = 3  # refit / deconvolve rounds of deconvolve_batch, AR(1)
N_ROUNDS = 10  # most rounds for AR(2), ...
G_TOL = 1e-3   # ... stopping once no coefficient moves more than this
MAX_ROOT = 0.999
N_ALTERNATE = 8  # AR(2): most alternating searches of decay and rise per refit,
ALTERNATE_TOL = 1e-5  # ... stopping once neither root moves more than this


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


def _rss_ar2(d, r, x, k, flat, keep, pre, sums):
    """Summed residual of the AR(2) pool fits at roots (d, r), per trace.

    Each counted pool is fitted as z_k = a h_k + delta, with z = x - q: q the
    calcium carried in from before the pool (the deconvolved calcium of the
    two frames before it, ``pre``, propagated with the candidate roots), a
    the event's amplitude and delta the pool's own baseline offset (2 x 2
    least squares per pool, closed form).
    """
    NT = x.numel()
    h0 = _impulse(d, r, k)
    h1 = torch.where(k >= 1, _impulse(d, r, (k - 1).clamp_min(0)), torch.zeros_like(h0))
    g1 = (d + r).repeat_interleave(x.shape[1])
    g2 = (-d * r).repeat_interleave(x.shape[1])
    al = g1 * pre[0] + g2 * pre[1]      # carried-in calcium: al h_k + be h_(k-1)
    be = g2 * pre[0]
    a = _segsum(h0 * h0, flat, NT).clamp_min(1e-300)
    bb = _segsum(h0 * h1, flat, NT)
    c = _segsum(h1 * h1, flat, NT)
    u = _segsum(h0 * x, flat, NT)
    v = _segsum(h1 * x, flat, NT)
    m0 = _segsum(h0, flat, NT)
    m1 = _segsum(h1, flat, NT)
    xx, sx, n = sums
    P = u - al * a - be * bb                                   # sum z h0
    Q0 = xx - 2 * al * u - 2 * be * v + al * al * a + 2 * al * be * bb + be * be * c   # sum z^2
    Q1 = sx - al * m0 - be * m1                                # sum z
    det = a * n - m0 * m0
    ok = det > 1e-9 * a * n     # else a one-frame pool (or flat h): the offset alone
    det = torch.where(ok, det, torch.ones_like(det))
    fit = torch.where(ok, (n * P * P - 2 * m0 * P * Q1 + a * Q1 * Q1) / det, Q1 * Q1 / n.clamp_min(1))
    return ((Q0 - fit) * keep).reshape(x.shape).sum(dim=1)


def _golden(f, lo, hi, n_iter=N_GOLDEN):
    """Per-trace minimiser of f on [lo, hi] (tensors (N,))."""
    a, b = lo.clone(), hi.clone()
    x1 = b - _GOLDEN * (b - a)
    x2 = a + _GOLDEN * (b - a)
    f1, f2 = f(x1), f(x2)
    for _ in range(n_iter):
        left = f1 < f2
        b = torch.where(left, x2, b)
        a = torch.where(left, a, x1)
        x2n = torch.where(left, x1, a + _GOLDEN * (b - a))
        x1n = torch.where(left, b - _GOLDEN * (b - a), x2)
        x1, x2 = x1n, x2n
        f1, f2 = f(x1), f(x2)
    return 0.5 * (a + b)


def _carried(C, flat):
    """Deconvolved calcium of the two frames before each pool (N*T,) x 2,
    indexed like the pools; zero before the trace starts."""
    N, T = C.shape
    Cd = C.to(torch.float64)
    m1 = torch.zeros_like(Cd)
    m2 = torch.zeros_like(Cd)
    m1[:, 1:] = Cd[:, :-1]
    m2[:, 2:] = Cd[:, :-2]
    first = torch.zeros(N, T, dtype=torch.bool, device=C.device)
    first[:, 1:] = flat[:, 1:] != flat[:, :-1]
    pre = torch.zeros((2, N * T), dtype=torch.float64, device=C.device)
    pre[0, flat[first]] = m1[first]
    pre[1, flat[first]] = m2[first]
    return pre


def refine_g(Y, S, bl, G, p, n_events=None, C=None, rise=True):
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
    C : tensor (N, T), optional
        The calcium of that deconvolution (AR(2): the calcium entering each
        pool is taken from it; zero if None).

    Notes
    -----
    AR(2): fitting each pool with two free amplitudes (its first value and
    the calcium before it) spans every combination of d^k and r^k; for
    d, r -> 1 that is any straight line per pool, which fits slow baseline
    drift better than any decay, and both roots run to the bound. Here each
    pool gets one amplitude (its event) on top of the calcium carried in
    from the previous pools, so the size of the jump at the event and the
    decay after it are tied: a slow drift cannot pass for a decay. A local
    baseline offset per pool absorbs the drift itself (with one global
    baseline, drift over the long pools of sparse recordings still pulled
    both roots towards 1 on real data). The stretch before the first event
    (unknown initial state) is not counted. The refit / deconvolution
    rounds of :func:`deconvolve_batch` carry the calcium forward.
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
    T = x.shape[1]
    flat2 = flat.reshape(N, T)
    keep = keep.clone()
    keep[flat2[:, 0]] = 0.0                     # the stretch before the first event
    pre = _carried(torch.zeros_like(x) if C is None else C, flat2)
    sums = (xx, _segsum(x, flat, NT), _segsum(torch.ones_like(x), flat, NT))
    has = (keep.reshape(N, T).sum(dim=1) > 0)
    g1, g2 = G[:, 0], G[:, 1]
    disc = (g1 * g1 + 4 * g2).clamp_min(0).sqrt()
    d = ((g1 + disc) / 2).clamp(1e-3, MAX_ROOT)
    r = ((g1 - disc) / 2).clamp(0.0, MAX_ROOT)
    r = torch.minimum(r, d)
    for _ in range(N_ALTERNATE):
        d_old, r_old = d, r
        d = _golden(lambda z: _rss_ar2(z, r, x, k, flat, keep, pre, sums), r.clamp_min(1e-3),
                    torch.full_like(d, MAX_ROOT), N_GOLDEN_AR2)
        if rise:
            r = _golden(lambda z: _rss_ar2(d, z, x, k, flat, keep, pre, sums), torch.zeros_like(r), d,
                        N_GOLDEN_AR2)
        if max((d - d_old).abs().max(), (r - r_old).abs().max()) < ALTERNATE_TOL:
            break
    out[:, 0] = torch.where(has, d + r, G[:, 0])
    out[:, 1] = torch.where(has, -d * r, G[:, 1])
    return out
