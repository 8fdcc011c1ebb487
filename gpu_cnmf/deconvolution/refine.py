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

Cost: every sum over a pool that involves only the model is a geometric
series in the pool's length (closed form); the data enter through one sum
of q^k x_k per pool and candidate root q, so each evaluation of the
residual is one pass over the frames.
"""
from __future__ import annotations

import math
from typing import NamedTuple

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
ROOT_GAP = 1e-4  # AR(2) refit: least distance between decay and rise root
N_ALTERNATE = 4  # AR(2): most alternating searches of decay and rise per refit,
ALTERNATE_TOL = 1e-5  # ... stopping once neither root moves more than this


class Pools(NamedTuple):
    """Pools of a batch of traces. Frame-wise (N, T): k, the offset within
    the pool. Pool-wise (P,): trace, its trace; length; keep, 1.0 where the
    pool counts. end (P,): flat index of each pool's last frame; first (N,):
    index of each trace's first pool (pools are numbered trace by trace)."""
    k: torch.Tensor
    trace: torch.Tensor
    length: torch.Tensor
    keep: torch.Tensor
    end: torch.Tensor
    first: torch.Tensor


def _pools(S, n_events):
    """Split each trace into pools at its large spikes.

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
    onset = torch.cummax(torch.where(start, tt, torch.zeros_like(tt)), dim=1).values
    k = (tt - onset).to(torch.float64)
    last = torch.ones_like(start)
    last[:, :-1] = start[:, 1:]
    end = torch.nonzero(last.reshape(-1))[:, 0]
    trace = torch.div(end, T, rounding_mode="floor")
    # flat indices run on from one trace to the next, so one difference
    # of the ends gives every pool's length
    length = torch.diff(end, prepend=end.new_full((1,), -1)).to(torch.float64)
    n_pools = start.sum(dim=1)
    first = torch.cumsum(n_pools, dim=0) - n_pools
    if n_events is None:
        keep = torch.ones(len(end), dtype=torch.float64, device=dev)
    else:
        size = torch.where(start, S.to(torch.float64), torch.zeros_like(S, dtype=torch.float64))
        size[:, 0] = 0
        kth = torch.topk(size, min(n_events, T), dim=1).values[:, -1:]
        chosen = start & (size >= kth) & (size > 0)
        keep = chosen[start].to(torch.float64)
    return Pools(k, trace, length, keep, end, first)


def _segsum(v, pools):
    """Sum of v (N, T) over each pool (P,): differences of running sums
    along each trace (several times faster than a scatter-add)."""
    cs = torch.cumsum(v, dim=1).reshape(-1)[pools.end]
    out = cs.clone()
    out[1:] -= cs[:-1]
    out[pools.first] = cs[pools.first]
    return out


def _pow_sum(q, x, pools):
    """Sum over each pool of q^k x_k, q per trace (N,): the only part of a
    pool fit that needs every frame."""
    # exp(k log q) is about twice as fast as q ** k; q = 0 gives 0^0 = 1 as it should
    return _segsum(torch.exp(pools.k * q.clamp_min(1e-300).log()[:, None]) * x, pools)


def _geo(q, L):
    """Sum of q^k for k < L (per pool; 0 <= q < 1)."""
    return (1 - q ** L) / (1 - q)


def _per_trace(v, pools, N):
    return torch.zeros(N, dtype=v.dtype, device=v.device).index_add_(0, pools.trace, v)


def _rss_ar1(g, x, pools, xx):
    sgx = _pow_sum(g, x, pools)
    sgg = _geo(g[pools.trace] ** 2, pools.length).clamp_min(1e-300)
    return _per_trace((xx - sgx * sgx / sgg) * pools.keep, pools, g.numel())


def _rss_ar2(d, r, Dx, Rx, pools, pre, sums):
    """Summed residual of the AR(2) pool fits at roots d > r, per trace.

    Each counted pool is fitted as z_k = a h_k + delta, with z = x - q: q the
    calcium carried in from before the pool (the deconvolved calcium of the
    two frames before it, ``pre``, propagated with the candidate roots), a
    the event's amplitude and delta the pool's own baseline offset (2 x 2
    least squares per pool, closed form). With h_k = (d^(k+1) - r^(k+1)) /
    (d - r) every sum over a pool is a geometric series in its length,
    except those with the data: Dx, Rx = sum of d^k x_k, r^k x_k per pool.
    """
    L = pools.length
    dp, rp = d[pools.trace], r[pools.trace]
    e = dp - rp
    Gd, Gr = _geo(dp, L), _geo(rp, L)
    Gdd, Gdr, Grr = _geo(dp * dp, L), _geo(dp * rp, L), _geo(rp * rp, L)
    a = ((dp * dp * Gdd - 2 * dp * rp * Gdr + rp * rp * Grr) / (e * e)).clamp_min(1e-300)  # sum h0^2
    bb = (dp * Gdd - (dp + rp) * Gdr + rp * Grr) / (e * e)      # sum h0 h1 (h1: h one frame later)
    c = (Gdd - 2 * Gdr + Grr) / (e * e)                          # sum h1^2
    m0 = (dp * Gd - rp * Gr) / e                                 # sum h0
    m1 = (Gd - Gr) / e                                           # sum h1
    u = (dp * Dx - rp * Rx) / e                                  # sum h0 x
    v = (Dx - Rx) / e                                            # sum h1 x
    g1, g2 = dp + rp, -dp * rp
    al = g1 * pre[0] + g2 * pre[1]      # carried-in calcium: al h_k + be h_(k-1)
    be = g2 * pre[0]
    xx, sx = sums
    P = u - al * a - be * bb                                   # sum z h0
    Q0 = xx - 2 * al * u - 2 * be * v + al * al * a + 2 * al * be * bb + be * be * c   # sum z^2
    Q1 = sx - al * m0 - be * m1                                # sum z
    det = a * L - m0 * m0
    ok = det > 1e-9 * a * L     # else a one-frame pool (or flat h): the offset alone
    det = torch.where(ok, det, torch.ones_like(det))
    fit = torch.where(ok, (L * P * P - 2 * m0 * P * Q1 + a * Q1 * Q1) / det, Q1 * Q1 / L.clamp_min(1))
    return _per_trace((Q0 - fit) * pools.keep, pools, d.numel())


def _golden(f, lo, hi, n_iter=N_GOLDEN):
    """Per-trace minimiser of f on [lo, hi] (tensors (N,)); one evaluation
    of f per iteration."""
    a, b = lo.clone(), hi.clone()
    x1 = b - _GOLDEN * (b - a)
    x2 = a + _GOLDEN * (b - a)
    f1, f2 = f(x1), f(x2)
    for _ in range(n_iter):
        left = f1 < f2      # the minimum lies in [a, x2]
        b = torch.where(left, x2, b)
        a = torch.where(left, a, x1)
        xn = torch.where(left, b - _GOLDEN * (b - a), a + _GOLDEN * (b - a))
        fn = f(xn)
        x1, x2 = torch.where(left, xn, x2), torch.where(left, x1, xn)
        f1, f2 = torch.where(left, fn, f2), torch.where(left, f1, fn)
    return 0.5 * (a + b)


def _carried(C, pools):
    """Deconvolved calcium of the two frames before each pool (2, P); zero
    before the trace starts."""
    N, T = C.shape
    flat = C.to(torch.float64).reshape(-1)
    onset = pools.end - pools.length.to(torch.int64) + 1    # flat index of each pool's first frame
    pre = torch.zeros((2, len(onset)), dtype=torch.float64, device=C.device)
    within = onset % T                                      # its frame within the trace
    pre[0] = torch.where(within >= 1, flat[(onset - 1).clamp_min(0)], pre[0])
    pre[1] = torch.where(within >= 2, flat[(onset - 2).clamp_min(0)], pre[1])
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
    N = x.shape[0]
    dev = x.device
    pools = _pools(S, n_events)
    xx = _segsum(x * x, pools)
    out = G.clone()
    if p == 1:
        out[:, 0] = _golden(lambda g: _rss_ar1(g, x, pools, xx),
                            torch.full((N,), 1e-3, dtype=torch.float64, device=dev),
                            torch.full((N,), MAX_ROOT, dtype=torch.float64, device=dev))
        return out
    keep = pools.keep.clone()
    keep[pools.first] = 0.0                     # the stretch before the first event
    pools = pools._replace(keep=keep)
    pre = _carried(torch.zeros_like(x) if C is None else C, pools)
    sums = (xx, _segsum(x, pools))
    has = _per_trace(keep, pools, N) > 0
    g1, g2 = G[:, 0], G[:, 1]
    disc = (g1 * g1 + 4 * g2).clamp_min(0).sqrt()
    d = ((g1 + disc) / 2).clamp(ROOT_GAP, MAX_ROOT)
    r = ((g1 - disc) / 2).clamp(0.0, MAX_ROOT)
    # distinct roots keep the closed forms well conditioned; a gap of
    # ROOT_GAP changes the impulse response by far less than the noise
    r = torch.minimum(r, d - ROOT_GAP).clamp_min(0.0)
    Rx = _pow_sum(r, x, pools)
    for _ in range(N_ALTERNATE if rise else 1):
        d_old, r_old = d, r
        d = _golden(lambda z: _rss_ar2(z, r, _pow_sum(z, x, pools), Rx, pools, pre, sums),
                    r + ROOT_GAP, torch.full_like(d, MAX_ROOT), N_GOLDEN_AR2)
        if not rise:
            break
        Dx = _pow_sum(d, x, pools)
        r = _golden(lambda z: _rss_ar2(d, z, Dx, _pow_sum(z, x, pools), pools, pre, sums),
                    torch.zeros_like(r), d - ROOT_GAP, N_GOLDEN_AR2)
        Rx = _pow_sum(r, x, pools)
        if max((d - d_old).abs().max(), (r - r_old).abs().max()) < ALTERNATE_TOL:
            break
    out[:, 0] = torch.where(has, d + r, G[:, 0])
    out[:, 1] = torch.where(has, -d * r, G[:, 1])
    return out
