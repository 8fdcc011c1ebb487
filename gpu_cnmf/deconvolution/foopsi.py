"""One trace at a time with CaImAn's signature: ``constrained_foopsi``."""
from __future__ import annotations

import difflib

import numpy as np
import torch

from ..errors import ParameterError
from .ar import estimate_time_constant
from .batch import deconvolve_batch
from .noise import estimate_noise

METHODS = ("oasis", "cvxpy", "cvx")
# Parameters of CaImAn's preprocess / temporal groups that callers pass along
# in **kwargs and that do not change a single-trace deconvolution.
_IGNORED = {"ITER", "memory_efficient", "nb", "block_size", "num_blocks_per_run", "n_pixels_per_process",
            "max_num_samples_fft", "compute_g", "include_noise", "pixels", "check_nan", "sn",
            "method", "bas_nonneg", "s_min", "p", "verbosity", "solvers", "optimize_g"}


def _impulse(g, T):
    d = np.zeros(T)
    d[0] = 1.0
    for t in range(1, T):
        d[t] = sum(g[j] * d[t - 1 - j] for j in range(len(g)) if t - 1 - j >= 0)
    return d


def constrained_foopsi(fluor, bl=None, c1=None, g=None, sn=None, p=None, method_deconvolution="oasis",
                       bas_nonneg=True, noise_range=(0.25, 0.5), noise_method="logmexp", lags=5,
                       fudge_factor=1.0, verbosity=False, solvers=None, optimize_g=0, s_min=None,
                       support=None, refit_rise=True, **kwargs):
    """Infer calcium and spikes of one trace under a noise constraint.

    Solves min ||s||_1 s.t. ||fluor - c - bl||^2 <= sn^2 T, s = G c >= 0
    (G the AR(p) operator), with the baseline bl estimated unless given.

    Parameters
    ----------
    fluor : array (T,)
        Fluorescence trace.
    bl : float, optional
        Known baseline (estimated when None; >= 0 if bas_nonneg).
    c1 : float, optional
        Known initial calcium; its decay is removed before deconvolution and
        added back to c. Estimated (as part of c) when None.
    g : array (p,), optional
        AR coefficients; estimated from the autocovariance when None.
    sn : float, optional
        Noise std; estimated from the PSD when None.
    p : {0, 1, 2}, optional
        AR order; len(g) when g is given, else 2.
    method_deconvolution : {'oasis', 'cvxpy'}
        OASIS (default) or the convex program through cvxpy (optional
        extra ``pip install gpu_cnmf[cvxpy]``; 'cvx' is an alias).
    bas_nonneg : bool
        Baseline >= 0 (else >= min(fluor)).
    noise_range, noise_method, lags, fudge_factor
        Noise and AR estimation (see estimate_noise, estimate_time_constant).
    verbosity : bool
        Print the parameters found.
    solvers : list of str, optional
        cvxpy solvers tried in order (method 'cvxpy' only).
    optimize_g : int or bool
        Refit g to the decays of the inferred events (OASIS only).
    s_min : float, optional
        Spike-size threshold (see deconvolve_batch); OASIS only.
    support : {None, 'ar1', 'ar2'} or bool array (T,), optional
        Frames where spikes may occur (see deconvolve_batch); OASIS only.
        None (default): every frame.
    refit_rise : bool
        AR(2) with ``optimize_g``: False keeps the rise root of g and refits
        only the decay (see deconvolve_batch); OASIS only.

    Returns
    -------
    c : ndarray (T,)      denoised calcium (without baseline)
    bl : float            baseline
    c1 : float            initial calcium value
    g : ndarray (p,)      AR coefficients used
    sn : float            noise std used
    sp : ndarray (T,)     spikes (sp[0] = 0; the initial value is c1)
    lam : float           sparsity penalty matching the noise constraint
    """
    unknown = [k for k in kwargs if k not in _IGNORED]
    if unknown:
        k = unknown[0]
        near = difflib.get_close_matches(k, list(_IGNORED) + ["noise_range", "noise_method", "lags",
                                                              "fudge_factor", "method_deconvolution"], 1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ParameterError(f"constrained_foopsi: unknown parameter {k!r}{hint}")
    if method_deconvolution not in METHODS:
        raise ParameterError(f"method_deconvolution: expected 'oasis' or 'cvxpy', got {method_deconvolution!r}")
    y = np.asarray(fluor.detach().cpu().numpy() if isinstance(fluor, torch.Tensor) else fluor,
                   dtype=np.float64)
    if y.ndim != 1:
        raise ParameterError(f"fluor: expected one trace (T,), got shape {y.shape}")
    T = y.size
    if p is None:
        p = 2 if g is None else int(np.size(g))
    if g is not None and np.size(g) != p:
        raise ParameterError(f"g: expected {p} AR coefficient(s) for p={p}, got {np.size(g)}")
    if sn is None:
        sn = float(estimate_noise(y, noise_range, noise_method)[0])
    if g is None:
        g = (estimate_time_constant(y, p, sn=sn, lags=lags, fudge_factor=fudge_factor)[0]
             if p else np.zeros(0))
    g = np.asarray(g, dtype=np.float64).ravel()
    init = np.zeros(T) if c1 is None else float(c1) * _impulse(g, T)
    if method_deconvolution in ("cvxpy", "cvx"):
        if optimize_g or s_min is not None or support is not None or not refit_rise:
            raise ParameterError("optimize_g / s_min / support / refit_rise: only supported with "
                                 "method_deconvolution='oasis'")
        from .cvx import cvxpy_foopsi
        c, bl_out, sp, lam = cvxpy_foopsi(y - init, g, sn, bl, bas_nonneg, solvers)
        g_out = g
    else:
        res = deconvolve_batch(y - init, p=p, g=g if p else None, sn=sn, s_min=s_min,
                               bas_nonneg=bas_nonneg, optimize_g=optimize_g, bl=bl, support=support,
                               refit_rise=refit_rise)
        c = res.C.astype(np.float64)
        sp = res.S.astype(np.float64)
        bl_out, lam = float(res.bl), float(res.lam)
        g_out = np.asarray(res.g, dtype=np.float64)
    c = c + init
    c1_out = float(c[0]) if c1 is None else float(c1)
    sp = sp.copy()
    sp[0] = 0.0
    if verbosity:
        print(f"constrained_foopsi: method={method_deconvolution} p={p} g={np.round(g_out, 4)} "
              f"sn={sn:.4g} bl={bl_out:.4g} c1={c1_out:.4g} lam={lam:.4g}")
    return c, bl_out, c1_out, g_out, float(sn), sp, lam
