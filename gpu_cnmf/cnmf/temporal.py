"""Temporal update: traces C (denoised calcium), S (spikes) and f.

With ``A`` and ``b`` fixed, one pass over the movie gives ``[A b]' Y`` and
the Gram matrix ``[A b]'[A b]``. ``ITER`` block-coordinate passes then
update the traces by colour groups of components that do not overlap (see
:mod:`.hals`): for a group, the raw trace of each component is
``y_k = c_k + (a_k'Y - a_k'[A b][C; f]) / ||a_k||^2`` (its current trace
plus its share of the residual, CaImAn's ``C + YrA``), and all of them are
deconvolved at once with OASIS (:func:`gpu_cnmf.deconvolution.deconvolve_batch`,
AR order ``p``), which returns the denoised trace ``c``, spikes ``s``,
baseline ``bl``, initial value ``c1``, AR coefficients ``g`` and noise
``sn``. Background traces get the nonnegative least squares step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ParameterError
from . import footprints as fp
from .hals import color_groups


@dataclass
class TemporalResult:
    """Output of :func:`update_temporal` (tensors on the device)."""

    C: torch.Tensor
    f: torch.Tensor
    S: torch.Tensor
    bl: torch.Tensor
    c1: torch.Tensor
    g: torch.Tensor
    neurons_sn: torch.Tensor
    YrA: torch.Tensor


def deconvolve(Y, p, *, g=None, method_deconvolution="oasis", bas_nonneg=True,
               noise_range=(0.25, 0.5), noise_method="mean", lags=5, fudge_factor=0.96,
               s_min=None, optimize_g=False, solvers=None):
    """Deconvolve raw traces (N, T) on their device.

    Returns ``(c, s, bl, c1, g, sn)`` as tensors; ``p == 0`` means no
    dynamics: ``c = max(y, 0)``, ``s = c``.
    """
    from ..deconvolution import deconvolve_batch, estimate_noise

    N, T = Y.shape
    dev = Y.device
    if N == 0:
        z = torch.zeros((0,), device=dev)
        return (Y.clone(), Y.clone(), z, z, torch.zeros((0, max(p, 0)), device=dev), z)
    if p == 0:
        c = Y.clamp_min(0)
        sn = torch.as_tensor(estimate_noise(Y, noise_range=tuple(noise_range),
                                            noise_method=noise_method),
                             device=dev, dtype=torch.float32)
        z = torch.zeros(N, device=dev)
        return c, c.clone(), z, z.clone(), torch.zeros((N, 0), device=dev), sn
    if method_deconvolution == "oasis":
        r = deconvolve_batch(Y, p=p, g=g, sn=None, s_min=s_min, bas_nonneg=bas_nonneg,
                             optimize_g=optimize_g, noise_range=tuple(noise_range),
                             noise_method=noise_method, lags=lags, fudge_factor=fudge_factor)
        out = [r.C, r.S, r.bl, r.c1, r.g, r.sn]
        return tuple(torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x,
                                     device=dev, dtype=torch.float32) for x in out)
    if method_deconvolution in ("cvxpy", "cvx"):
        # the exact solver is per trace by nature; it is the user's explicit choice
        from ..deconvolution import constrained_foopsi
        Yn = Y.detach().cpu().numpy().astype(np.float64)
        res = [constrained_foopsi(y, g=None if g is None else np.asarray(g[i].cpu()), p=p,
                                  method_deconvolution="cvxpy", bas_nonneg=bas_nonneg,
                                  noise_range=list(noise_range), noise_method=noise_method,
                                  lags=lags, fudge_factor=fudge_factor, solvers=solvers,
                                  s_min=s_min) for i, y in enumerate(Yn)]
        c = np.stack([r[0] for r in res])
        s = np.stack([r[5] for r in res])
        bl = np.array([float(np.ravel(r[1])[0]) if r[1] is not None else 0.0 for r in res])
        c1 = np.array([float(np.ravel(r[2])[0]) if r[2] is not None else 0.0 for r in res])
        gg = np.stack([np.ravel(r[3])[:p] for r in res])
        sn = np.array([float(r[4]) for r in res])
        return tuple(torch.as_tensor(x, device=dev, dtype=torch.float32)
                     for x in (c, s, bl, c1, gg, sn))
    raise ParameterError(f"method_deconvolution: expected 'oasis' or 'cvxpy', got {method_deconvolution!r}")


def residual_traces(AtY, AtA, Ct, K):
    """CaImAn's ``YrA``: each component's share of the residual (K, T)."""
    nA = torch.diagonal(AtA)[:K].clamp_min(1e-12)
    return (AtY[:K] - AtA[:K] @ Ct) / nA[:, None]


def update_temporal(mm, A, b, C, f, *, p=2, ITER=2, method_deconvolution="oasis",
                    bas_nonneg=True, noise_range=(0.25, 0.5), noise_method="mean", lags=5,
                    fudge_factor=0.96, s_min=None, optimize_g=False, solvers=None, AtY=None,
                    g_fixed=None):
    """``ITER`` block-coordinate passes on the traces (one movie pass).

    Parameters
    ----------
    mm : MovieMatrix
    A : (d, K), b : (d, nb), C : (K, T), f : (nb, T) tensors
    p : int
        AR order of the calcium dynamics (0: no deconvolution).
    AtY : (K + nb, T) tensor, optional
        Precomputed ``[A b]' Y``.
    g_fixed : (1, p) tensor, optional
        One AR model for every trace (``preprocess['compute_g']``).

    Returns
    -------
    TemporalResult
    """
    K = A.shape[1]
    dev = C.device
    if AtY is None:
        AtY = mm.AtY(A, b)
    AtA = fp.gram(A, b)
    Ct = torch.cat([C, f], 0).clone()
    nA = torch.diagonal(AtA).clamp_min(1e-12)
    groups = color_groups(AtA.abs() > 1e-12 * float(nA.max())) if nA.numel() else []
    T = Ct.shape[1]
    S = torch.zeros((K, T), device=dev)
    bl = torch.zeros(K, device=dev)
    c1 = torch.zeros(K, device=dev)
    g = torch.zeros((K, max(p, 0)), device=dev)
    sn = torch.zeros(K, device=dev)
    kw = dict(method_deconvolution=method_deconvolution, bas_nonneg=bas_nonneg,
              noise_range=noise_range, noise_method=noise_method, lags=lags,
              fudge_factor=fudge_factor, s_min=s_min, optimize_g=optimize_g, solvers=solvers)
    for it in range(max(1, int(ITER))):
        for grp in groups:
            y = Ct[grp] + (AtY[grp] - AtA[grp] @ Ct) / nA[grp, None]
            neu = grp < K
            if bool(neu.any()):
                idx = grp[neu]
                gi = g[idx] if (it > 0 and p > 0) else None
                if g_fixed is not None:
                    gi = g_fixed.expand(idx.numel(), -1)
                c, s, b_, c1_, g_, sn_ = deconvolve(y[neu], p, g=gi, **kw)
                Ct[idx] = c
                S[idx], bl[idx], c1[idx], sn[idx] = s, b_, c1_, sn_
                if p > 0:
                    g[idx] = g_.reshape(idx.numel(), -1)[:, :p]
            if bool((~neu).any()):
                Ct[grp[~neu]] = y[~neu].clamp_min(0)
    YrA = residual_traces(AtY, AtA, Ct, K)
    return TemporalResult(C=Ct[:K], f=Ct[K:], S=S, bl=bl, c1=c1, g=g, neurons_sn=sn, YrA=YrA)


def compute_residuals(mm, A, b, C, f):
    """``YrA`` for the current model (one movie pass)."""
    AtY = mm.AtY(A, b)
    return residual_traces(AtY, fp.gram(A, b), torch.cat([C, f], 0), A.shape[1])
