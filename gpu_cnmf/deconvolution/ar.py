"""Autoregressive (AR) coefficients of calcium traces from their autocovariance.

A trace y = c + b + noise with AR(p) calcium c_t = sum_j g_j c_{t-j} + s_t has,
for lags k >= 1, the Yule-Walker relations C(k) = sum_j g_j C(k - j), where
only the lag-0 autocovariance C(0) carries the white noise variance sn**2.
Using ``lags + p`` equations (k = 1..lags + p, CaImAn's count: ``lags`` beyond
the p that determine g) with sn**2 removed from C(0) and solving
them in the least-squares sense gives g. The roots of the AR polynomial are
then kept stable (in [0, 1)) and shrunk by ``fudge_factor``, which corrects
the upward bias of the discrete time constants.
"""
from __future__ import annotations

import math

import torch

from ..errors import ParameterError
from .noise import _as_2d_tensor, psd_noise

# Largest root allowed: a decay time of ~1000 frames; beyond it the AR model
# cannot be told apart from a drifting baseline.
MAX_ROOT = 0.999


def check_ar_params(p, lags, fudge_factor):
    if p not in (0, 1, 2) or isinstance(p, bool):
        raise ParameterError(f"p: expected the AR order 0, 1 or 2, got {p!r}")
    if int(lags) != lags or lags < max(p, 1):
        raise ParameterError(f"lags: expected an int >= p (= {p}), got {lags!r}")
    if not 0.0 < float(fudge_factor) <= 1.0:
        raise ParameterError(f"fudge_factor: expected a float in (0, 1], got {fudge_factor!r}")


def autocovariance(Y: torch.Tensor, max_lag: int) -> torch.Tensor:
    """Biased autocovariance C(0..max_lag) of each row, float64, (N, max_lag + 1)."""
    Y = Y.to(torch.float64)
    Y = Y - Y.mean(dim=1, keepdim=True)
    T = Y.shape[1]
    return torch.stack([(Y[:, k:] * Y[:, :T - k]).sum(dim=1) / T for k in range(max_lag + 1)], dim=1)


def ar_from_autocovariance(xc: torch.Tensor, sn2: torch.Tensor, p: int, lags: int,
                           fudge_factor: float) -> torch.Tensor:
    """Solve the noise-corrected Yule-Walker equations; ``xc`` (N, >= lags + p + 1)."""
    N = xc.shape[0]
    if p == 0:
        return xc.new_zeros((N, 0))
    k = torch.arange(lags + p, device=xc.device)
    j = torch.arange(p, device=xc.device)
    lag = (k[:, None] - j[None, :]).abs()                      # (lags, p)
    A = xc[:, lag]                                             # (N, lags + p, p)
    A = A - sn2[:, None, None] * (lag == 0).to(xc.dtype)[None]
    rhs = xc[:, 1:lags + p + 1]
    # Normal equations of the small (lags x p) systems, solved in closed form
    # so the same code runs everywhere, batched.
    AtA = A.transpose(1, 2) @ A
    Atb = (A.transpose(1, 2) @ rhs[..., None])[..., 0]
    if p == 1:
        g = Atb / AtA[:, :, 0].clamp_min(1e-300)
        root = g[:, 0].clamp(0.0, MAX_ROOT)
        return (fudge_factor * root)[:, None]
    det = AtA[:, 0, 0] * AtA[:, 1, 1] - AtA[:, 0, 1] * AtA[:, 1, 0]
    det = torch.where(det.abs() < 1e-300, torch.full_like(det, 1e-300), det)
    g1 = (AtA[:, 1, 1] * Atb[:, 0] - AtA[:, 0, 1] * Atb[:, 1]) / det
    g2 = (AtA[:, 0, 0] * Atb[:, 1] - AtA[:, 1, 0] * Atb[:, 0]) / det
    # Roots of z^2 - g1 z - g2; complex pairs are replaced by their real part.
    disc = g1 * g1 + 4 * g2
    sq = disc.clamp_min(0).sqrt()
    r1 = torch.where(disc >= 0, (g1 + sq) / 2, g1 / 2)
    r2 = torch.where(disc >= 0, (g1 - sq) / 2, g1 / 2)
    r1 = fudge_factor * r1.clamp(0.0, MAX_ROOT)
    r2 = fudge_factor * r2.clamp(0.0, MAX_ROOT)
    return torch.stack([r1 + r2, -r1 * r2], dim=1)


def time_constants(Y: torch.Tensor, p=2, sn=None, lags=5, fudge_factor=0.96, pooled=False,
                   noise_range=(0.25, 0.5), noise_method="mean", max_num_samples_fft=3072):
    """Tensor version of :func:`estimate_time_constant` (float32, (N, p), Y's device)."""
    check_ar_params(p, lags, fudge_factor)
    N, T = Y.shape
    if T <= lags + p:
        raise ParameterError(f"lags: {lags} lags need more than {lags + p} time points, got {T}")
    if sn is None:
        sn = psd_noise(Y, noise_range, noise_method, max_num_samples_fft)
    sn = torch.as_tensor(sn, device=Y.device).to(torch.float64).reshape(-1)
    if sn.numel() == 1:
        sn = sn.expand(N)
    if sn.numel() != N:
        raise ParameterError(f"sn: expected {N} noise levels, got {sn.numel()}")
    xc = autocovariance(Y, lags + p)
    sn2 = sn * sn
    if pooled:
        xc, sn2 = xc.mean(dim=0, keepdim=True), sn2.mean().reshape(1)
    g = ar_from_autocovariance(xc, sn2, p, int(lags), float(fudge_factor))
    return g.expand(N, p).to(torch.float32) if pooled else g.to(torch.float32)


def estimate_time_constant(Y, p=2, sn=None, lags=5, fudge_factor=0.96, pooled=False,
                           include_noise=True, noise_range=(0.25, 0.5), noise_method="mean",
                           max_num_samples_fft=3072):
    """AR(p) coefficients of each trace from its autocovariance.

    Parameters
    ----------
    Y : array or tensor, (N, T) or (T,)
        Traces in rows; a tensor is processed on its own device.
    p : {0, 1, 2}
        AR order (p = 0 gives an (N, 0) result).
    sn : array, tensor, float or None
        Noise std per trace; estimated from the PSD (``noise_*`` parameters)
        when None.
    lags : int
        Autocovariance lags used beyond the first p (lags + p Yule-Walker
        equations, as in CaImAn).
    fudge_factor : float in (0, 1]
        Shrinks the roots of the AR polynomial (bias correction).
    pooled : bool
        One g for all traces (CaImAn's ``compute_g``): the noise-corrected
        autocovariances of all traces are averaged first; the same row is
        returned for every trace.
    include_noise : bool
        When False the noise variance is not removed from C(0) (the
        ``include_noise=False`` preprocess setting).

    Returns
    -------
    g : ndarray or tensor, (N, p) float32
        g[:, 0] = g_1, g[:, 1] = g_2 in c_t = g_1 c_{t-1} + g_2 c_{t-2} + s_t.
    """
    t, is_numpy = _as_2d_tensor(Y)
    if not include_noise:
        sn = torch.zeros(t.shape[0], dtype=torch.float64, device=t.device)
    g = time_constants(t, p, sn, lags, fudge_factor, pooled, noise_range, noise_method,
                       max_num_samples_fft)
    return g.cpu().numpy() if is_numpy else g


def g_from_tau(tau_decay, tau_rise=0.0, fr=30.0):
    """AR coefficients of a transient with known time constants.

    A spike's calcium decays as d**k with d = exp(-1 / (tau_decay * fr));
    with a rise, it is proportional to d**k - r**k, r = exp(-1 / (tau_rise * fr)).

    Parameters
    ----------
    tau_decay : float
        Decay time constant in seconds (> 0).
    tau_rise : float
        Rise time constant in seconds, 0 for an instantaneous rise (AR(1));
        otherwise 0 < tau_rise < tau_decay (AR(2)).
    fr : float
        Frame rate in Hz.

    Returns
    -------
    g : tuple
        (d,) for AR(1), (d + r, -d r) for AR(2); pass as ``g`` to
        :func:`deconvolve_batch` with the matching ``p``.
    """
    fr, tau_decay, tau_rise = float(fr), float(tau_decay), float(tau_rise)
    if not fr > 0:
        raise ParameterError(f"fr: expected a frame rate > 0 Hz, got {fr!r}")
    if not tau_decay > 0:
        raise ParameterError(f"tau_decay: expected a decay time > 0 s, got {tau_decay!r}")
    if not 0 <= tau_rise < tau_decay:
        raise ParameterError(f"tau_rise: expected 0 (AR(1)) or a rise time in (0, tau_decay = {tau_decay}) s, "
                             f"got {tau_rise!r}")
    d = math.exp(-1.0 / (tau_decay * fr))
    if tau_rise == 0:
        return (d,)
    r = math.exp(-1.0 / (tau_rise * fr))
    return (d + r, -d * r)


def tau_from_g(g, fr=30.0):
    """Decay and rise time constants (seconds) of AR coefficients g.

    Parameters
    ----------
    g : sequence of 1 or 2 floats
        (g1,) or (g1, g2) as in c_t = g1 c_{t-1} + g2 c_{t-2} + s_t.
    fr : float
        Frame rate in Hz.

    Returns
    -------
    (tau_decay, tau_rise) : tuple of float
        tau_rise is 0 for AR(1) and for a zero rise root.
    """
    fr = float(fr)
    if not fr > 0:
        raise ParameterError(f"fr: expected a frame rate > 0 Hz, got {fr!r}")
    g = [float(v) for v in g]
    if len(g) not in (1, 2):
        raise ParameterError(f"g: expected 1 or 2 AR coefficients, got {len(g)}")
    g1, g2 = g[0], (g[1] if len(g) == 2 else 0.0)
    disc = g1 * g1 + 4 * g2
    if disc < 0:
        raise ParameterError(f"g: {tuple(g)} has complex roots (an oscillation), no decay and rise times")
    d, r = (g1 + math.sqrt(disc)) / 2, (g1 - math.sqrt(disc)) / 2
    if not (0 < d < 1 and 0 <= r < 1):
        raise ParameterError(f"g: {tuple(g)} has roots {d:.4g}, {r:.4g}; expected a decay root in (0, 1) "
                             "and a rise root in [0, 1)")

    def tau(q):
        return 0.0 if q == 0 else -1.0 / (fr * math.log(q))
    return tau(d), tau(r)
