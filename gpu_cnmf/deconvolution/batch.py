"""Batched deconvolution of many traces: ``deconvolve_batch``.

The sequential OASIS pass runs once per trace: a CUDA kernel (one thread per
trace, ``kernels/oasis.cu``) for CUDA tensors, the numba twin (one trace per
core) otherwise. What is not sequential (noise, AR coefficients, the initial
baseline, refining g) is torch code shared by both devices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ParameterError
from . import oasis_cpu
from .ar import check_ar_params, time_constants
from .noise import _as_2d_tensor, check_noise_params, psd_noise

# Quantile of the trace used as the first guess of a free baseline: below the
# median because transients only add to the baseline.
BASELINE_QUANTILE = 0.15
DEFAULT_MAX_ITER = 50
# Two-stage AR(2) (support="ar1"): spikes of the AR(1) pass (decay = the
# dominant root) at least SUPPORT_FRACTION of the trace's largest one mark an
# event; the AR(2) solve may put spikes from SUPPORT_BEFORE frames before to
# SUPPORT_AFTER frames after it (the AR(1) fit cannot follow the rise, so its
# spike tends to come late).
SUPPORT_FRACTION = 0.1
SUPPORT_BEFORE = 2
SUPPORT_AFTER = 1
SUPPORT_MODES = (None, "ar1", "ar2")


@dataclass
class DeconvResult:
    """Result of :func:`deconvolve_batch`; unpacks as ``C, S, bl, c1, g, sn``.

    C : (N, T) denoised calcium (baseline removed); S : (N, T) spikes
    (S[:, 0] = 0, the initial calcium is c1); bl : (N,) baseline; c1 : (N,)
    calcium at the first frame; g : (N, p) AR coefficients used; sn : (N,)
    noise std used; lam : (N,) final sparsity penalty (0 for a thresholded
    s_min run); s_min : (N,) threshold used (0 without one).
    """
    C: object
    S: object
    bl: object
    c1: object
    g: object
    sn: object
    lam: object = None
    s_min: object = None

    def __iter__(self):
        return iter((self.C, self.S, self.bl, self.c1, self.g, self.sn))


def _check_params(p, s_min, bas_nonneg, optimize_g, noise_range, noise_method, lags, fudge_factor):
    check_ar_params(p, lags, fudge_factor)
    check_noise_params(noise_range, noise_method)
    if s_min is not None:
        try:
            float(s_min)
        except (TypeError, ValueError):
            raise ParameterError(f"s_min: expected None or a float, got {s_min!r}")
    if not isinstance(bas_nonneg, (bool, np.bool_)):
        raise ParameterError(f"bas_nonneg: expected a bool, got {bas_nonneg!r}")
    if isinstance(optimize_g, bool) or optimize_g is None:
        return
    if int(optimize_g) != optimize_g or optimize_g < 0:
        raise ParameterError(f"optimize_g: expected a bool or a number of events >= 0, got {optimize_g!r}")


def _per_trace(x, N, device, name):
    t = torch.as_tensor(x, device=device).to(torch.float64).reshape(-1)
    if t.numel() == 1:
        t = t.expand(N).clone()
    if t.numel() != N:
        raise ParameterError(f"{name}: expected a scalar or {N} values, got {t.numel()}")
    return t


def _g_matrix(g, p, N, device):
    """(N, 2) float64 (g1, g2) from None-free user input of AR order p."""
    G = torch.zeros((N, 2), dtype=torch.float64, device=device)
    if p == 0:
        return G
    gt = torch.as_tensor(g, device=device).to(torch.float64)
    if gt.ndim <= 1:
        gt = gt.reshape(1, -1).expand(N, -1)
    if gt.shape != (N, p):
        raise ParameterError(f"g: expected {p} AR coefficient(s) per trace (shape ({p},) or ({N}, {p})), "
                             f"got shape {tuple(gt.shape)}")
    G[:, :p] = gt
    return G


def run_oasis(Y: torch.Tensor, G, sn, b0, b_free, bmin, mode, smin, max_iter=DEFAULT_MAX_ITER,
              support=None, exact=True):
    """Dispatch the per-trace solver: CUDA kernel for cuda tensors, numba twin
    otherwise. ``support`` (N, T) bool, optional: spikes allowed only there;
    ``exact``: exact AR(2) solve after the greedy pass.
    Returns C, S (N, T) float32 and info (N, 5) float64 on Y's device."""
    if Y.device.type == "cuda":
        from .oasis_gpu import oasis_batch_cuda
        return oasis_batch_cuda(Y, G, sn, b0, b_free, bmin, mode, smin, max_iter, support, exact)
    y = Y.detach().contiguous().numpy()
    if y.dtype not in (np.float32, np.float64):
        y = y.astype(np.float32)
    N, T = y.shape
    C = np.empty((N, T), np.float32)
    S = np.empty((N, T), np.float32)
    info = np.empty((N, 5), np.float64)
    if support is None:
        M = np.ones((1, 1), np.uint8)
    else:
        M = np.ascontiguousarray(support.detach().cpu().numpy(), dtype=np.uint8)
    oasis_cpu.oasis_batch(y, G.numpy(), sn.numpy(), b0.numpy(), bool(b_free), bmin.numpy(),
                          int(mode), smin.numpy(), int(max_iter), M, support is not None, bool(exact),
                          C, S, info)
    return torch.from_numpy(C), torch.from_numpy(S), torch.from_numpy(info)


def dominant_root(G):
    """Slowest decay factor of each AR polynomial z^2 - g1 z - g2 (G (N, 2))."""
    g1, g2 = G[:, 0], G[:, 1]
    return (g1 + (g1 * g1 + 4 * g2).clamp_min(0).sqrt()) / 2


def dilate_support(events, before=SUPPORT_BEFORE, after=SUPPORT_AFTER):
    """Frames from ``before`` frames before to ``after`` frames after each
    event of the (N, T) bool tensor ``events``."""
    out = events.clone()
    T = events.shape[1]
    for k in range(1, min(before, T - 1) + 1):
        out[:, :T - k] |= events[:, k:]
    for k in range(1, min(after, T - 1) + 1):
        out[:, k:] |= events[:, :T - k]
    return out


def spike_support(S, fraction=SUPPORT_FRACTION, before=SUPPORT_BEFORE, after=SUPPORT_AFTER):
    """Support mask (N, T) bool from a first pass's spikes S: the frames
    near spikes of at least ``fraction`` of the trace's largest spike."""
    S = S.clone()
    S[:, 0] = 0
    top = S.max(dim=1, keepdim=True).values
    events = (S >= fraction * top) & (S > 0)
    return dilate_support(events, before, after)


def _support(how, t32, G, sn_t, b0, b_free, bmin, max_iter, exact=True):
    """Support mask for the second stage: None (every frame), a user mask,
    or spikes of a first noise-constrained pass ('ar1': decay = dominant
    root; 'ar2': the exact-constraint AR(2) pass itself)."""
    N, T = t32.shape
    if how is None:
        return None
    if not isinstance(how, str):
        m = torch.as_tensor(how, device=t32.device).to(torch.bool)
        if m.ndim == 1:
            m = m.reshape(1, -1).expand(N, -1)
        if m.shape != (N, T):
            raise ParameterError(f"support: expected a bool mask of shape ({T},) or ({N}, {T}), "
                                 f"got {tuple(m.shape)}")
        return None if bool(m.all()) else m.contiguous()
    if (G[:, 1] == 0).all():
        return None     # AR(1) (or p = 0): the greedy pass is exact, no second stage
    G1 = G
    if how == "ar1":
        G1 = torch.zeros_like(G)
        G1[:, 0] = dominant_root(G)
    zeros = torch.zeros(N, dtype=torch.float64, device=t32.device)
    _, S1, _ = run_oasis(t32, G1, sn_t, b0, b_free, bmin, oasis_cpu.MODE_L1, zeros, max_iter,
                         exact=exact)
    return spike_support(S1)


def deconvolve_batch(Y, p=2, g=None, sn=None, s_min=None, bas_nonneg=True, optimize_g=False,
                     noise_range=(0.25, 0.5), noise_method="mean", lags=5, fudge_factor=0.96,
                     *, bl=None, max_iter=DEFAULT_MAX_ITER, support=None, exact=True, refit_rise=True):
    """Deconvolve many calcium traces at once with OASIS (noise-constrained).

    For each trace y, finds calcium c (AR(p) dynamics), spikes s >= 0 and a
    baseline b minimising ||s||_1 subject to ||y - c - b||^2 = sn^2 T.

    Parameters
    ----------
    Y : ndarray or tensor, (N, T) or (T,)
        Traces in rows. Results come back as the same kind (numpy, or torch
        on Y's device); CUDA tensors run on the GPU kernel.
    p : {0, 1, 2}
        AR order of the calcium dynamics (0: no dynamics, soft threshold).
    g : array (p,) or (N, p), optional
        AR coefficients; estimated per trace from the autocovariance when None.
    sn : float or array (N,), optional
        Noise std; estimated from the PSD when None.
    s_min : float, optional
        None: L1 penalty tuned to the noise. > 0: every spike is 0 or >= s_min
        (lam = 0). < 0: threshold |s_min| * sn * sqrt(1 - sum(g)). 0: the
        largest threshold that keeps ||y - c - b||^2 <= sn^2 T.
    bas_nonneg : bool
        Baseline b >= 0 if True, else b >= min(y).
    optimize_g : bool or int
        Re-estimate g by fitting the decays of the inferred events (True: all
        events, int k: the k largest), then deconvolve again with it.
    noise_range, noise_method, lags, fudge_factor
        Used to estimate sn and g when not given (see :func:`estimate_noise`,
        :func:`estimate_time_constant`).
    bl : float or array (N,), keyword-only, optional
        A known baseline (not estimated).
    max_iter : int, keyword-only
        Most (lam, b) updates per trace.
    support : {None, 'ar1', 'ar2'} or bool array (T,) or (N, T), keyword-only
        Frames where spikes may occur. None: every frame. 'ar1' (AR(2)
        only, two-stage as in Friedrich et al. 2017): a first pass with
        the AR(1) decay of the dominant root finds the events; spikes of at
        least ``SUPPORT_FRACTION`` of the trace's largest, widened by
        ``SUPPORT_BEFORE`` / ``SUPPORT_AFTER`` frames, form the support of
        the AR(2) solve. 'ar2': the same from a first AR(2) pass. A mask:
        used as given. Outside the support s = 0; the noise constraint is
        kept unless even lam = 0 cannot reach it (then lam = 0).
    exact : bool, keyword-only
        AR(2): solve the L1 problem exactly (active set on the spike support,
        warm-started from the greedy OASIS pools; matches a convex solver).
        False: the greedy pool merge alone (faster, 2-3 % more L1 at the same
        residual, spikes smeared over 1-2 frames). AR(1) is exact either way.
        The thresholded modes (s_min != None) take b from this solve; their
        spikes come from the greedy thresholded pass.
    refit_rise : bool, keyword-only
        AR(2) with ``optimize_g``: refit the rise root as well as the decay
        (default). False keeps the rise root of the initial g (estimated or
        given) and refits only the decay: on real recordings, bursts and
        onsets between frames make the fitted rise slower than a single
        event's.

    Returns
    -------
    DeconvResult
        ``C, S, bl, c1, g, sn`` (plus ``lam`` and ``s_min`` attributes).

    Notes
    -----
    The defaults are CaImAn's. AR(2) results depend most on the rise root,
    which one trace's autocovariance estimates poorly; the rise is a property
    of the indicator, the decay varies from cell to cell. On real GCaMP6s
    recordings with ground-truth spikes (CASCADE DS14, ~60 Hz;
    ``benchmarks/cascade_compare.py``) the best AR(2) use measured holds the
    indicator's rise and refits the decay (any starting decay will do)::

        g0 = g_from_tau(tau_decay=1.0, tau_rise=0.09, fr=60)   # GCaMP6s
        res = deconvolve_batch(F, p=2, g=g0, optimize_g=True, refit_rise=False)

    A wrong held rise drags the decay with it (on synthetic traces with a
    0.1 s rise and 1.5 s decay, a rise held at 0.3 s gave decays of
    8-11 s). Without a known rise the best estimated rule was
    ``optimize_g=True, refit_rise=False, lags=10, fudge_factor=0.98``; for
    AR(1), ``optimize_g=True, s_min=-2``.
    """
    _check_params(p, s_min, bas_nonneg, optimize_g, noise_range, noise_method, lags, fudge_factor)
    if not isinstance(refit_rise, (bool, np.bool_)):
        raise ParameterError(f"refit_rise: expected a bool, got {refit_rise!r}")
    if isinstance(support, str) and support not in SUPPORT_MODES:
        raise ParameterError(f"support: expected None, 'ar1', 'ar2' or a bool mask, got {support!r}")
    t, is_numpy = _as_2d_tensor(Y)
    squeeze = (np.ndim(Y) == 1) if is_numpy else (Y.ndim == 1)
    if not torch.isfinite(t).all():
        raise ParameterError("Y: traces contain NaN or inf values")
    N, T = t.shape
    if T < 8:
        raise ParameterError(f"Y: at least 8 time points are needed, got {T}")
    dev = t.device
    if sn is None:
        # few traces: the whole of each is used (robust to one noisy stretch)
        sn_t = psd_noise(t, noise_range, noise_method, max(3072, T)).to(torch.float64)
    else:
        sn_t = _per_trace(sn, N, dev, "sn")
        if (sn_t < 0).any():
            raise ParameterError("sn: noise levels must be >= 0")
    if g is None:
        G = _g_matrix(time_constants(t, p, sn_t, lags, fudge_factor) if p else None, p, N, dev)
    else:
        G = _g_matrix(g, p, N, dev)
    if p and not _stable(G).all():
        raise ParameterError(f"g: AR coefficients must describe a stable decay (roots in [0, 1)), got {g!r}")
    t32 = t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)
    bmin = (torch.zeros(N, dtype=torch.float64, device=dev) if bas_nonneg
            else t32.min(dim=1).values.to(torch.float64))
    if bl is None:
        b_free = True
        # selection, not a sort: kthvalue is O(T) per trace
        k = max(1, int(BASELINE_QUANTILE * T))
        if dev.type == "cpu":   # numpy's introselect is ~2x faster than kthvalue here
            b0 = torch.from_numpy(np.partition(t32.numpy(), k - 1, axis=1)[:, k - 1].astype(np.float64))
        else:
            b0 = torch.kthvalue(t32, k, dim=1).values.to(torch.float64)
        b0 = torch.maximum(b0, bmin)
    else:
        b_free = False
        b0 = _per_trace(bl, N, dev, "bl")
    mode, smin = _threshold(s_min, sn_t, G, N, dev)
    M = _support(support, t32, G, sn_t, b0, b_free, bmin, max_iter, exact)
    C, S, info = run_oasis(t32, G, sn_t, b0, b_free, bmin, mode, smin, max_iter, M, exact)
    if optimize_g and p:
        C, S, info, G = _optimize_g(t32, C, S, info, G, p, optimize_g, refit_rise, s_min, sn_t, b0, b_free,
                                    bmin, max_iter, support, M, exact)
    S[:, 0] = 0
    res = DeconvResult(C=C, S=S, bl=info[:, 0].to(torch.float32), c1=info[:, 2].to(torch.float32),
                       g=G[:, :p].to(torch.float32), sn=sn_t.to(torch.float32),
                       lam=info[:, 1].to(torch.float32), s_min=info[:, 4].to(torch.float32))
    return _deliver(res, is_numpy, squeeze, t.dtype)


def _optimize_g(t32, C, S, info, G, p, optimize_g, refit_rise, s_min, sn_t, b0, b_free, bmin, max_iter,
                support, M, exact):
    """Rounds of refitting g to the events and deconvolving again.

    AR(2) runs until g settles (a wrong rise shifts the onsets, and the
    pools with them), each trace on its own: a trace whose coefficients
    moved less than G_TOL in two rounds in a row drops out, so its result
    does not depend on the other traces of the batch, and one slow trace
    does not keep the whole batch busy. AR(1) settles in N_ROUNDS_AR1 rounds.
    """
    from .refine import G_TOL, N_ROUNDS, N_ROUNDS_AR1, refine_g
    N = t32.shape[0]
    n_events = None if optimize_g is True else int(optimize_g)
    fixed_mask = not isinstance(support, str)     # None or the user's mask, as checked
    active = torch.arange(N, device=t32.device)
    was_quiet = torch.zeros(N, dtype=torch.bool, device=t32.device)
    for _ in range(N_ROUNDS if p == 2 else N_ROUNDS_AR1):
        y = t32[active]
        G_old = G[active]
        G_new = refine_g(y, S[active], info[active, 0], G_old, p, n_events, C[active], refit_rise)
        G[active] = G_new
        sn, b, lo = sn_t[active], b0[active], bmin[active]
        mode, smin = _threshold(s_min, sn, G_new, len(active), t32.device)
        if fixed_mask:
            Ma = None if M is None else M[active]
        else:
            Ma = _support(support, y, G_new, sn, b, b_free, lo, max_iter, exact)
        C[active], S[active], info[active] = run_oasis(y, G_new, sn, b, b_free, lo, mode, smin, max_iter, Ma,
                                                       exact)
        if p == 2:
            # the refit and the spikes it sees move together, in fits and
            # starts: a trace is done after two quiet rounds in a row
            quiet = (G_new - G_old).abs().amax(dim=1) < G_TOL
            done = quiet & was_quiet[active]
            was_quiet[active] = quiet
            active = active[~done]
            if active.numel() == 0:
                break
    return C, S, info, G


def _stable(G):
    """True where the AR polynomial's roots lie inside the unit circle
    (and, for real roots, the dominant one is a decay in [0, 1))."""
    g1, g2 = G[:, 0], G[:, 1]
    disc = g1 * g1 + 4 * g2
    sq = disc.clamp_min(0).sqrt()
    real_ok = ((g1 + sq) / 2 < 1) & ((g1 + sq) / 2 >= 0) & ((g1 - sq) / 2 > -1)
    return torch.where(disc >= 0, real_ok, -g2 < 1)


def _threshold(s_min, sn, G, N, dev):
    """Mode and per-trace threshold from CaImAn's s_min convention."""
    if s_min is None:
        return oasis_cpu.MODE_L1, torch.zeros(N, dtype=torch.float64, device=dev)
    s_min = float(s_min)
    if s_min == 0:
        return oasis_cpu.MODE_AUTO, torch.zeros(N, dtype=torch.float64, device=dev)
    if s_min > 0:
        return oasis_cpu.MODE_THRESH, torch.full((N,), s_min, dtype=torch.float64, device=dev)
    scale = (1 - G[:, 0] - G[:, 1]).clamp_min(0).sqrt()
    return oasis_cpu.MODE_THRESH, -s_min * sn * scale


def _deliver(res, is_numpy, squeeze, dtype):
    out = {}
    for name in ("C", "S", "bl", "c1", "g", "sn", "lam", "s_min"):
        v = getattr(res, name)
        if name in ("C", "S") and dtype == torch.float64:
            v = v.to(torch.float64)
        if squeeze:
            v = v[0]
        out[name] = v.cpu().numpy() if is_numpy else v
    return DeconvResult(**out)
