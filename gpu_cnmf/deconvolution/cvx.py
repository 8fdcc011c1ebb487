"""The noise-constrained deconvolution as a convex program (cvxpy).

min ||s||_1  s.t.  s = G c >= 0,  ||y - c - b||_2 <= sn sqrt(T),
b >= 0 (or >= min(y)), where G is the (T x T) AR(p) difference operator with
zero calcium before the first frame (so s_0 = c_0 carries the initial value,
as in OASIS). A reference solver, slow but general:
method_deconvolution='cvxpy'.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp_

from ..errors import ParameterError

# CaImAn lists ECOS then SCS; recent cvxpy ships CLARABEL instead of ECOS.
DEFAULT_SOLVERS = ("ECOS", "CLARABEL", "SCS")


def _import_cvxpy():
    try:
        import cvxpy
    except ImportError as err:
        raise ParameterError("method_deconvolution='cvxpy' needs cvxpy, which is not installed: "
                             "pip install gpu_cnmf[cvxpy]") from err
    return cvxpy


def ar_operator(g, T):
    """Sparse (T, T) matrix G with (G c)_t = c_t - sum_j g_j c_{t-1-j}."""
    diags = [np.ones(T)] + [-float(gj) * np.ones(T - 1 - j) for j, gj in enumerate(g)]
    return sp_.diags(diags, [0] + [-(j + 1) for j in range(len(g))], shape=(T, T), format="csc")


def cvxpy_foopsi(y, g, sn, bl=None, bas_nonneg=True, solvers=None):
    """Solve one trace with cvxpy; returns (c, bl, sp, lam) like OASIS (lam:
    the noise constraint's multiplier in the units of
    0.5 ||y - c - b||^2 + lam ||s||_1)."""
    cp = _import_cvxpy()
    y = np.asarray(y, dtype=np.float64)
    T = y.size
    g = np.asarray(g, dtype=np.float64).ravel()
    solvers = DEFAULT_SOLVERS if solvers is None else ([solvers] if isinstance(solvers, str) else list(solvers))
    installed = set(cp.installed_solvers())
    usable = [s for s in solvers if s in installed]
    if not usable:
        raise ParameterError(f"solvers: none of {list(solvers)} is installed for cvxpy "
                             f"(installed: {sorted(installed)})")
    G = ar_operator(g, T)
    c = cp.Variable(T)
    b = cp.Variable() if bl is None else float(bl)
    s = G @ c
    cons = [s >= 0]
    if bl is None:
        cons.append(b >= (0.0 if bas_nonneg else float(y.min())))
    noise = cp.SOC(float(sn) * np.sqrt(T), y - c - b)
    cons.append(noise)
    prob = cp.Problem(cp.Minimize(cp.sum(s)), cons)
    last = None
    for name in usable:
        try:
            prob.solve(solver=name)
        except cp.error.SolverError as err:
            last = err
            continue
        if prob.status in ("optimal", "optimal_inaccurate"):
            break
    if c.value is None:
        raise ParameterError(f"solvers: cvxpy could not solve the deconvolution with {usable} "
                             f"(status {prob.status}): {last}")
    cv = np.asarray(c.value).ravel()
    sp = np.maximum(G @ cv, 0)
    b_val = float(b.value) if bl is None else float(bl)
    # Lagrangian ||s||_1 + mu (||r|| - eps): at the optimum the penalised form
    # 0.5 ||r||^2 + lam ||s||_1 has the same solution for lam = eps / mu.
    dual = noise.dual_value
    mu = float(np.ravel(dual[0] if isinstance(dual, (list, tuple)) else dual)[0]) if dual is not None else 0.0
    lam = float(sn) * np.sqrt(T) / mu if mu > 0 else 0.0
    return cv, b_val, sp, lam
