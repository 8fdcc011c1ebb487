"""OASIS for AR(1) and AR(2) calcium, one trace per thread: the CPU twin.

The compiled CUDA kernel ``kernels/oasis.cu`` runs the same functions step
for step (same names, same order of operations); change both together.

Algorithm (Friedrich, Zhou & Paninski 2017, "Fast online deconvolution of
calcium imaging data"). The calcium between two spikes follows the AR
dynamics, so c is a sequence of *pools*: pool j starts at time t_j with value
v_j and lasts l_j frames, c_{t_j+k} = v_j h_k + g2 u_j h_{k-1}, where h is the
AR impulse response (h_0 = 1, h_1 = g1, h_k = g1 h_{k-1} + g2 h_{k-2}) and u_j
is the calcium just before the pool (for AR(1), g2 = 0 and h_k = g1**k).
Given the pools, v_j is a least-squares fit to y' = y - b - lam * a, with a
the weight of each c_t in sum(s) (the L1 penalty). Pools are pushed one frame
at a time; while the newest pool would need a negative spike (or one smaller
than a threshold s_min) at its start, it is merged into the previous one.
Pool sums S_j = sum_k h_k y_{t_j+k} are kept so a merge does not revisit the
whole pool.

The constrained problem min ||s||_1 s.t. ||y - b - c||^2 = sn^2 T (and, with
a free baseline, sum(y - b - c) = 0) is solved for lam and b: with the pools
fixed, c is affine in (lam, b), so both equations are solved exactly (one
quadratic); the pools are then updated with the new lam and b and merged where
needed (warm start, no pass over the frames), and this repeats until the
residual is on target. Variants: s_min > 0 thresholds the spike sizes
(lam = 0, merge while a spike < s_min), and an automatic s_min is found by
bisection as the largest threshold that keeps the residual within sn^2 T.

For AR(1) this greedy pass is exact. For AR(2) it is not: a pool's value
is fitted to its own frames, though it also sets the state entering the next
pools (2-3 % more L1 at the same residual, events smeared over 1-2 frames).
So for AR(2) the greedy result is only the warm start of an exact solve
(``exact``, on by default):

* Least squares on fixed pools is a chain: pool j's cost is quadratic in
  (v_j, u_j) and u_{j+1} = v_j h_{l-1} + g2 u_j h_{l-2}, so one backward
  pass with a scalar quadratic cost-to-go alpha_j u^2 + 2 beta_j u and one
  forward pass give the exact pool values in O(#pools) (plus the pool sums).
* The non-negativity of the spikes is handled by a primal active set
  (Lawson & Hanson 1974) on the pool starts: a negative spike in the
  least-squares solution merges its pool into the previous one (after a
  step back along the segment to a feasible point); a positive gradient
  w_t = sum_k h_k r_{t+k} of the residual inside a pool (a failed KKT
  condition) splits the pool there. The first steps drop all negative
  spikes at once, which saves most of the steps from the greedy start.
* c stays affine in (lam, b) on fixed pools (the same chain with the
  right-hand sides a and 1), so the (lam, b) update keeps its form, with
  exact derivatives; each update restarts the active set from the last
  solution (a spike vector >= 0 is feasible for any lam, b).

The result satisfies the KKT conditions to ~1e-6 lam and matches a convex
solver (cvxpy). The thresholded modes (s_min != None) take b from it; their
spikes come from the greedy thresholded pass (a non-convex problem).

Support mask (optional, per frame): spikes are allowed only where it is
set. A pool can start only at an allowed frame (frame 0 always starts one),
so the first pools are the runs of frames from one allowed frame to the
next, not single frames; s_t = 0 elsewhere by construction. The same
noise-constrained problem is then solved on that support; where even the
fit without penalty (lam = 0, a non-negative least-squares fit on the
support) leaves a residual above sn^2 T, lam stays 0.

The solver stays in this one file: numba's on-disk cache (cache=True) does
not notice edits to jitted functions imported from other files, so a split
would let stale compiled code survive a change.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

MODE_L1 = 0        # noise-constrained L1 (lam found from sn)
MODE_THRESH = 1    # s_min given: thresholded spikes, lam = 0
MODE_AUTO = 2      # s_min = 0: largest threshold with RSS <= sn^2 T

H_FLOOR = 1e-12    # impulse-response entries below this (relative) are treated as 0
RSS_TOL = 1e-4     # relative tolerance on the residual target
N_BISECT = 24      # bisection steps of the automatic threshold
KKT_TOL = 1e-9     # gradient tolerance of the exact AR(2) solve (relative)
AS_STEPS_PER_FRAME = 2  # cap on active-set steps (per frame; never reached in practice)
BULK_STEPS = 20    # active-set steps that drop all negative spikes at once


@njit(cache=True, inline="always")
def _kernel_fill(g1, g2, T, h, H1, H2, P):
    """Impulse response h and prefix sums H1 = sum h, H2 = sum h^2,
    P = sum h_k h_{k-1}; returns the length beyond which h is 0."""
    h[0] = 1.0
    hlen = 1
    for k in range(1, T):
        v = g1 * h[k - 1]
        if k >= 2:
            v += g2 * h[k - 2]
        if abs(v) < H_FLOOR:
            v = 0.0
        h[k] = v
        if v != 0.0:
            hlen = k + 1
    H1[0] = 0.0
    H2[0] = 0.0
    P[0] = 0.0
    for k in range(T):
        H1[k + 1] = H1[k] + h[k]
        H2[k + 1] = H2[k] + h[k] * h[k]
        P[k + 1] = P[k] + (h[k] * h[k - 1] if k >= 1 else 0.0)
    return hlen


@njit(cache=True, inline="always")
def _penalty_sum(t, l, T, g1, g2, h, H1):
    """sum_k h_k a_{t+k}: a = 1 - g1 - g2 except a_{T-2} = 1 - g1, a_{T-1} = 1."""
    v = (1.0 - g1 - g2) * H1[l]
    if t <= T - 2 and T - 2 < t + l:
        v += g2 * h[T - 2 - t]
    if T - 1 < t + l:
        v += (g1 + g2) * h[T - 1 - t]
    return v


@njit(cache=True, inline="always")
def _cval(v, u, k, g2, h):
    """Calcium at offset k >= 0 of a pool with value v and preceding calcium u."""
    if k >= 1:
        return v * h[k] + g2 * u * h[k - 1]
    return v


@njit(cache=True, inline="always")
def _veff(j, pv):
    # Only the first pool can hold a negative fit (later pools cannot be
    # smaller than the decay of their predecessor); c >= 0 clamps it at 0.
    if j == 0 and pv[0] < 0.0:
        return 0.0
    return pv[j]


@njit(cache=True)
def _consolidate(n_in, y, T, g1, g2, lam, b, thr, h, H1, H2, P, hlen, pt, pl, pS, pv, pu):
    """Merge pass over pools 0..n_in-1 (in place, in time order); returns the
    number of pools. Pools come either as single frames (a fresh run) or from
    the previous (lam, b) (warm start)."""
    j = -1
    for i in range(n_in):
        j += 1
        pt[j] = pt[i]
        pl[j] = pl[i]
        pS[j] = pS[i]
        while True:
            u = 0.0
            uu = 0.0
            if j > 0:
                ve = _veff(j - 1, pv)
                lp = pl[j - 1]
                u = _cval(ve, pu[j - 1], lp - 1, g2, h)
                if lp >= 2:
                    uu = _cval(ve, pu[j - 1], lp - 2, g2, h)
                else:
                    uu = pu[j - 1]
            pu[j] = u
            l = pl[j]
            pv[j] = (pS[j] - b * H1[l] - lam * _penalty_sum(pt[j], l, T, g1, g2, h, H1)
                     - g2 * u * P[l]) / H2[l]
            if j == 0:
                break
            s = pv[j] - g1 * u - g2 * uu
            if s >= thr and not (thr == 0.0 and s < 0.0):
                break
            # merge pool j into j - 1
            l1 = pl[j - 1]
            if g2 == 0.0:
                if l1 < hlen:
                    pS[j - 1] += h[l1] * pS[j]
            else:
                t2 = pt[j]
                for k in range(pl[j]):
                    if l1 + k >= hlen:
                        break
                    pS[j - 1] += h[l1 + k] * y[t2 + k]
            pl[j - 1] = l1 + pl[j]
            j -= 1
    return j + 1


@njit(cache=True)
def _initial_pools(y, T, mask, use_mask, h, hlen, pt, pl, pS):
    """First pools: every frame without a mask, else one pool from each
    allowed frame (and frame 0) up to the next, with its sum of h_k y."""
    n = 0
    for i in range(T):
        if i == 0 or not use_mask or mask[i] != 0:
            pt[n] = i
            pl[n] = 1
            pS[n] = y[i]
            n += 1
        else:
            k = pl[n - 1]
            if k < hlen:
                pS[n - 1] += h[k] * y[i]
            pl[n - 1] = k + 1
    return n


@njit(cache=True)
def _rss(n, y, T, b, g2, h, pt, pl, pv, pu):
    out = 0.0
    for j in range(n):
        ve = _veff(j, pv)
        for k in range(pl[j]):
            r = y[pt[j] + k] - b - _cval(ve, pu[j], k, g2, h)
            out += r * r
    return out


@njit(cache=True, inline="always")
def _accumulate(acc, r, q1, q2):
    """Add one frame's residual r and its derivatives q1 (lam), q2 (b) to
    the nine sums of the (lam, b) update."""
    acc[0] += r
    acc[1] += r * r
    acc[2] += r * q1
    acc[3] += r * q2
    acc[4] += q1 * q1
    acc[5] += q1 * q2
    acc[6] += q2 * q2
    acc[7] += q1
    acc[8] += q2


@njit(cache=True)
def _linearize(n, y, T, g1, g2, b, h, H1, H2, P, pt, pl, pv, pu, acc):
    """Residual r = y - b - c and its derivatives along lam (q1 = -dc/dlam)
    and b (q2 = 1 + dc/db) with the pools fixed; the nine sums land in acc:
    R, RR, Rq1, Rq2, Q11, Q12, Q22, S1, S2."""
    for i in range(9):
        acc[i] = 0.0
    DuA = 0.0
    DuB = 0.0
    for j in range(n):
        t = pt[j]
        l = pl[j]
        ve = _veff(j, pv)
        u = pu[j]
        if j == 0 and pv[0] < 0.0:
            DvA = 0.0
            DvB = 0.0
        else:
            DvA = (_penalty_sum(t, l, T, g1, g2, h, H1) - g2 * P[l] * DuA) / H2[l]
            DvB = (H1[l] - g2 * P[l] * DuB) / H2[l]
        q1 = 0.0
        dB = 0.0
        for k in range(l):
            hk = h[k]
            hk1 = h[k - 1] if k >= 1 else 0.0
            c = ve * hk + g2 * u * hk1
            q1 = DvA * hk + g2 * DuA * hk1
            dB = DvB * hk + g2 * DuB * hk1
            r = y[t + k] - b - c
            q2 = 1.0 - dB
            _accumulate(acc, r, q1, q2)
        DuA = q1
        DuB = dB


@njit(cache=True, inline="always")
def _quad_root(A, B, C):
    """Larger root of A x^2 + 2 B x + C = 0; without one (C > 0: the target
    residual is below reach), the minimiser -B/A, but never a step up: more
    penalty cannot bring the residual down to the target (this keeps lam at
    exactly 0 when even the unpenalised fit, e.g. on a support, is too coarse)."""
    if A <= 0.0:
        return 0.0
    disc = B * B - A * C
    if disc < 0.0:
        return min(-B / A, 0.0)
    return (-B + np.sqrt(disc)) / A


@njit(cache=True, inline="always")
def _lag_penalty_sum(t, l, T, g1, g2, h, H1):
    """sum_k h_{k-1} a_{t+k} over the pool (k >= 1), the lagged twin of _penalty_sum."""
    if l < 2:
        return 0.0
    v = (1.0 - g1 - g2) * H1[l - 1]
    if t + 1 <= T - 2 and T - 2 < t + l:
        v += g2 * h[T - 3 - t]
    if T - 1 < t + l:
        v += (g1 + g2) * h[T - 2 - t]
    return v


@njit(cache=True, inline="always")
def _spike(j, g1, g2, h, pl, pv, pu):
    """Spike at the start of pool j from the pool values (s_0 = v_0)."""
    if j == 0:
        return pv[0]
    lp = pl[j - 1]
    uu = _cval(pv[j - 1], pu[j - 1], lp - 2, g2, h) if lp >= 2 else pu[j - 1]
    return pv[j] - g1 * pu[j] - g2 * uu


@njit(cache=True)
def _chain_backward(n, y, T, g1, g2, lam, b, h, H1, H2, P, hlen, pt, pl, cA, cB, cD, cDa, cDb):
    """Backward pass of the exact least squares on fixed pools.

    With pool values v_j and u_j the calcium before pool j, pool j costs
    sum_k (y'_{t+k} - v_j h_k - g2 u_j h_{k-1})^2 (y' = y - b - lam a) and
    hands u_{j+1} = v_j h_{l-1} + g2 u_j h_{l-2} to the next pool. The cost
    of pools j.. given u_j is a quadratic alpha u^2 + 2 beta u + const;
    minimising over v_j gives v_j = -(cB_j u_j + cD_j) / cA_j. cDa, cDb hold
    cD for the right-hand sides a and 1 instead of y' (for d/dlam, d/db).
    """
    alpha = 0.0
    beta = 0.0
    beta_a = 0.0
    beta_b = 0.0
    for j in range(n - 1, -1, -1):
        t = pt[j]
        l = pl[j]
        e = h[l - 1]
        e2 = h[l - 2] if l >= 2 else 0.0
        sy = 0.0
        smy = 0.0
        kmax = min(l, hlen + 1)
        for k in range(kmax):
            yk = y[t + k]
            if k < hlen:
                sy += h[k] * yk
            if k >= 1:
                smy += h[k - 1] * yk
        pa = _penalty_sum(t, l, T, g1, g2, h, H1)
        pma = _lag_penalty_sum(t, l, T, g1, g2, h, H1)
        hm = H1[l - 1] if l >= 1 else 0.0
        A = H2[l] + alpha * e * e
        B = g2 * (P[l] + alpha * e * e2)
        Cq = g2 * g2 * (H2[l - 1] + alpha * e2 * e2)
        D = -(sy - b * H1[l] - lam * pa) + beta * e
        E = -g2 * (smy - b * hm - lam * pma) + beta * g2 * e2
        Da = -pa + beta_a * e
        Ea = -g2 * pma + beta_a * g2 * e2
        Db = -H1[l] + beta_b * e
        Eb = -g2 * hm + beta_b * g2 * e2
        cA[j] = A
        cB[j] = B
        cD[j] = D
        cDa[j] = Da
        cDb[j] = Db
        alpha = Cq - B * B / A
        beta = E - B * D / A
        beta_a = Ea - B * Da / A
        beta_b = Eb - B * Db / A


@njit(cache=True)
def _chain_forward(n, g2, h, pl, zero0, cA, cB, cD, pv, pu):
    """Forward pass: pool values v_j and preceding calcium u_j (u_0 = 0;
    v_0 = 0 when the first pool is pinned at zero calcium)."""
    u = 0.0
    for j in range(n):
        v = -(cB[j] * u + cD[j]) / cA[j]
        if j == 0 and zero0:
            v = 0.0
        pv[j] = v
        pu[j] = u
        l = pl[j]
        un = v * h[l - 1]
        if l >= 2:
            un += g2 * u * h[l - 2]
        u = un


@njit(cache=True)
def _active_set(n, zero0, y, T, g1, g2, lam, b, tol, max_steps, bulk, mask, use_mask, h, H1, H2,
                P, hlen, pt, pl, pv, pu, xs, w, cA, cB, cD, cDa, cDb, sk):
    """Exact non-negative least squares for y - b - lam a on the spike
    support (Lawson-Hanson primal active set, warm-started).

    The support is the pool starts; xs holds the current feasible spikes
    (one per pool, xs[0] = c_0). Each step solves the least squares on the
    pools exactly (chain passes). If a spike of that solution is negative,
    move from xs towards it until the first spike reaches 0 and merge that
    pool into its predecessor; otherwise take it, and where the gradient
    w_t = sum_k h_k r_{t+k} of the residual r is positive inside a pool (the
    KKT condition fails, a spike there would lower the cost) split the pool
    at its largest w. Returns the number of pools, the first-pool pin and
    the steps taken; pv, pu hold the solution.

    One spike leaves the support per step: far from the optimum (e.g. the
    first call, from the greedy pools) that takes hundreds of O(T) steps. So
    the first ``bulk`` infeasible steps drop all negative spikes at once
    (x = max(z, 0) is feasible too); Lawson-Hanson steps then finish, which
    keeps the result exact whatever the bulk steps did.
    """
    steps = 0
    while steps < max_steps:
        steps += 1
        _chain_backward(n, y, T, g1, g2, lam, b, h, H1, H2, P, hlen, pt, pl, cA, cB, cD, cDa, cDb)
        _chain_forward(n, g2, h, pl, zero0, cA, cB, cD, pv, pu)
        alpha = 1.0
        jmin = -1
        for j in range(n):
            z = _spike(j, g1, g2, h, pl, pv, pu)
            w[j] = z
            if z < 0.0 and not (j == 0 and zero0):
                a = xs[j] / (xs[j] - z)
                if jmin < 0 or a < alpha:
                    alpha = a
                    jmin = j
        if jmin >= 0:
            if bulk > 0:
                # drop every negative spike at once and keep the rest of the
                # solution (clipped at 0: still a feasible point)
                bulk -= 1
                alpha = 1.0
            m = 0
            for j in range(n):
                z = w[j]
                x = xs[j] + alpha * (z - xs[j])
                drop = j == jmin or (z < 0.0 and x <= 0.0)
                if j == 0:
                    if drop and not zero0:
                        zero0 = True
                    xs[0] = 0.0 if zero0 else x
                    m = 1
                    continue
                if drop:
                    pl[m - 1] += pl[j]
                    continue
                pt[m] = pt[j]
                pl[m] = pl[j]
                xs[m] = max(x, 0.0)
                m += 1
            n = m
            continue
        # feasible: take the solution, then check the KKT conditions
        for j in range(n):
            xs[j] = w[j]
        if zero0:
            xs[0] = 0.0
        for j in range(n):
            t = pt[j]
            for k in range(pl[j]):
                w[t + k] = y[t + k] - b - _cval(pv[j], pu[j], k, g2, h)
        w[T - 1] -= lam
        if T >= 2:
            w[T - 2] -= lam * (1.0 - g1)
        base = lam * (1.0 - g1 - g2)
        for t in range(T - 3, -1, -1):
            w[t] -= base
        # w_t = r_t + g1 w_{t+1} + g2 w_{t+2} (backward AR filter)
        if T >= 2:
            w[T - 2] += g1 * w[T - 1]
        for t in range(T - 3, -1, -1):
            w[t] += g1 * w[t + 1] + g2 * w[t + 2]
        adds = 0
        for j in range(n):
            t = pt[j]
            best = tol
            sk[j] = 0
            for k in range(1, pl[j]):
                if w[t + k] > best and (not use_mask or mask[t + k] != 0):
                    best = w[t + k]
                    sk[j] = k
            if sk[j] > 0:
                adds += 1
        unpin = zero0 and w[0] > tol
        if adds == 0 and not unpin:
            break
        if unpin:
            zero0 = False
        i = n + adds - 1
        for j in range(n - 1, -1, -1):
            t = pt[j]
            l = pl[j]
            x = xs[j]
            k = sk[j]
            if k > 0:
                pt[i] = t + k
                pl[i] = l - k
                xs[i] = 0.0
                i -= 1
                l = k
            pt[i] = t
            pl[i] = l
            xs[i] = x
            i -= 1
        n += adds
    return n, zero0, steps


@njit(cache=True)
def _linearize_exact(n, y, T, g1, g2, b, zero0, h, pt, pl, pv, pu, cA, cB, cDa, cDb, acc):
    """_linearize for the exact solution on fixed pools: v is affine in
    (lam, b) through the same chain, with right-hand sides a and 1."""
    for i in range(9):
        acc[i] = 0.0
    DuA = 0.0
    DuB = 0.0
    for j in range(n):
        t = pt[j]
        l = pl[j]
        # v = L(y) - b L(1) - lam L(a): -dv/dlam = L(a), dv/db = -L(1)
        DvA = -(cB[j] * DuA + cDa[j]) / cA[j]
        DvB = -(cB[j] * DuB + cDb[j]) / cA[j]
        if j == 0 and zero0:
            DvA = 0.0
            DvB = 0.0
        for k in range(l):
            hk = h[k]
            hk1 = h[k - 1] if k >= 1 else 0.0
            c = pv[j] * hk + g2 * pu[j] * hk1
            q1 = DvA * hk + g2 * DuA * hk1
            dB = DvB * hk + g2 * DuB * hk1
            r = y[t + k] - b - c
            q2 = 1.0 - dB
            _accumulate(acc, r, q1, q2)
        nA = DvA * h[l - 1]
        nB = DvB * h[l - 1]
        if l >= 2:
            nA += g2 * DuA * h[l - 2]
            nB += g2 * DuB * h[l - 2]
        DuA = nA
        DuB = nB


@njit(cache=True)
def _lam_b_step(acc, thresh, lam, b, use_b, bmin):
    """(lam, b) step that puts the linearised residual on target: RSS =
    thresh and (with use_b) zero mean; lam >= 0, b >= bmin."""
    R = acc[0]
    RR = acc[1]
    Rq1 = acc[2]
    Rq2 = acc[3]
    Q11 = acc[4]
    Q12 = acc[5]
    Q22 = acc[6]
    S1 = acc[7]
    S2 = acc[8]
    db = 0.0
    dl = 0.0
    if use_b:
        m = R / S2
        f = S1 / S2
        A = Q11 - 2.0 * f * Q12 + f * f * Q22
        B = Rq1 - f * Rq2 - m * Q12 + m * f * Q22
        C = RR - 2.0 * m * Rq2 + m * m * Q22 - thresh
        dl = _quad_root(A, B, C)
        if lam + dl < 0.0:
            dl = -lam
        db = (R + dl * S1) / S2
        if b + db < bmin:
            db = bmin - b
            use_b = False
    if not use_b:
        C = RR - 2.0 * db * Rq2 + db * db * Q22 - thresh
        dl = _quad_root(Q11, Rq1 - db * Q12, C)
        if lam + dl < 0.0:
            dl = -lam
    return dl, db


@njit(cache=True)
def _exact_l1(n, y, T, g1, g2, sn, lam, b, b_free, bmin, maxiter, mask, use_mask, h, H1, H2, P,
              hlen, pt, pl, pv, pu, acc, xs, w, cA, cB, cD, cDa, cDb, sk):
    """From the greedy pools (a feasible start), the exact noise-constrained
    solution: the active set at the current (lam, b), then the same (lam, b)
    update with the exact derivatives, until the residual is on target.
    Returns (n, lam, b, updates)."""
    thresh = sn * sn * T
    tol = KKT_TOL * (sn * np.sqrt(H2[T]) + lam) + 1e-300
    zero0 = pv[0] < 0.0
    for j in range(n):
        if j == 0:
            xs[0] = 0.0 if zero0 else pv[0]
        else:
            lp = pl[j - 1]
            ve = _veff(j - 1, pv)
            uu = _cval(ve, pu[j - 1], lp - 2, g2, h) if lp >= 2 else pu[j - 1]
            xs[j] = max(pv[j] - g1 * pu[j] - g2 * uu, 0.0)
    max_steps = AS_STEPS_PER_FRAME * T + 100
    it = 0
    while True:
        n, zero0, _ = _active_set(n, zero0, y, T, g1, g2, lam, b, tol, max_steps, BULK_STEPS,
                                  mask, use_mask, h, H1, H2, P, hlen, pt, pl, pv, pu, xs, w, cA,
                                  cB, cD, cDa, cDb, sk)
        _linearize_exact(n, y, T, g1, g2, b, zero0, h, pt, pl, pv, pu, cA, cB, cDa, cDb, acc)
        RR = acc[1]
        use_b = b_free and acc[8] > 1e-3 * T
        done_rss = abs(RR - thresh) <= RSS_TOL * thresh or (lam == 0.0 and RR > thresh)
        done_b = (not use_b) or abs(acc[0]) <= RSS_TOL * np.sqrt(thresh * T) + 1e-12
        if (done_rss and done_b) or it >= maxiter:
            break
        dl, db = _lam_b_step(acc, thresh, lam, b, use_b, bmin)
        lam += dl
        b += db
        it += 1
    return n, lam, b, it


@njit(cache=True)
def _solve_trace(y, T, g1, g2, sn, b, b_free, bmin, mode, smin, maxiter, mask, use_mask, exact,
                 h, H1, H2, P, pt, pl, pS, pv, pu, acc, xs, w, cA, cB, cD, cDa, cDb, sk,
                 c_out, s_out, info):
    """Deconvolve one trace; writes c_out, s_out and info = (b, lam, c1, iters, s_min)."""
    hlen = _kernel_fill(g1, g2, T, h, H1, H2, P)
    thresh = sn * sn * T
    lam = 0.0
    n = _initial_pools(y, T, mask, use_mask, h, hlen, pt, pl, pS)
    n = _consolidate(n, y, T, g1, g2, lam, b, 0.0, h, H1, H2, P, hlen, pt, pl, pS, pv, pu)
    it = 0
    fresh = False
    while it < maxiter:
        _linearize(n, y, T, g1, g2, b, h, H1, H2, P, pt, pl, pv, pu, acc)
        R = acc[0]
        RR = acc[1]
        S2 = acc[8]
        # The baseline is left alone on the first step: with tiny pools
        # (lam = 0) c can absorb any offset and the b equation is singular.
        use_b = b_free and it > 0 and S2 > 1e-3 * T
        done_rss = abs(RR - thresh) <= RSS_TOL * thresh or (lam == 0.0 and RR > thresh)
        done_b = (not use_b) or abs(R) <= RSS_TOL * np.sqrt(thresh * T) + 1e-12
        if it > 0 and done_rss and done_b:
            if fresh or not use_mask:
                break
            # Merges are never undone, so a step that overshot (lam or b)
            # leaves pools merged too far. That matters on a support (long
            # first pools; at lam = 0 the b steps alone decide the merges):
            # one fresh pass at the converged (lam, b), then (rarely) a few
            # more steps. Without a support its effect is below 1e-3 in
            # spike correlation and it would cost ~50 % more time.
            fresh = True
            n = _initial_pools(y, T, mask, use_mask, h, hlen, pt, pl, pS)
            n = _consolidate(n, y, T, g1, g2, lam, b, 0.0, h, H1, H2, P, hlen, pt, pl, pS, pv, pu)
            continue
        dl, db = _lam_b_step(acc, thresh, lam, b, use_b, bmin)
        lam += dl
        b += db
        it += 1
        n = _consolidate(n, y, T, g1, g2, lam, b, 0.0, h, H1, H2, P, hlen, pt, pl, pS, pv, pu)
    if exact and g2 != 0.0:
        n, lam, b, it2 = _exact_l1(n, y, T, g1, g2, sn, lam, b, b_free, bmin, maxiter, mask,
                                   use_mask, h, H1, H2, P, hlen, pt, pl, pv, pu, acc, xs, w, cA,
                                   cB, cD, cDa, cDb, sk)
        it += it2
    if mode == MODE_THRESH:
        lam = 0.0
        n = _initial_pools(y, T, mask, use_mask, h, hlen, pt, pl, pS)
        n = _consolidate(n, y, T, g1, g2, 0.0, b, smin, h, H1, H2, P, hlen, pt, pl, pS, pv, pu)
    elif mode == MODE_AUTO:
        lam = 0.0
        lo = 0.0
        hi = 0.0
        for t in range(T):
            if y[t] - b > hi:
                hi = y[t] - b
        for _ in range(N_BISECT):
            mid = 0.5 * (lo + hi)
            n = _initial_pools(y, T, mask, use_mask, h, hlen, pt, pl, pS)
            n = _consolidate(n, y, T, g1, g2, 0.0, b, mid, h, H1, H2, P, hlen, pt, pl, pS, pv, pu)
            if _rss(n, y, T, b, g2, h, pt, pl, pv, pu) <= thresh:
                lo = mid
            else:
                hi = mid
        smin = lo
        n = _initial_pools(y, T, mask, use_mask, h, hlen, pt, pl, pS)
        n = _consolidate(n, y, T, g1, g2, 0.0, b, lo, h, H1, H2, P, hlen, pt, pl, pS, pv, pu)
    # write out calcium and spikes (spikes only at pool starts after the first)
    for j in range(n):
        ve = _veff(j, pv)
        t = pt[j]
        for k in range(pl[j]):
            c_out[t + k] = _cval(ve, pu[j], k, g2, h)
            s_out[t + k] = 0.0
        if j > 0:
            lp = pl[j - 1]
            vp = _veff(j - 1, pv)
            uu = _cval(vp, pu[j - 1], lp - 2, g2, h) if lp >= 2 else pu[j - 1]
            s_out[t] = pv[j] - g1 * pu[j] - g2 * uu
    info[0] = b
    info[1] = lam
    info[2] = c_out[0]
    info[3] = it
    info[4] = smin


@njit(parallel=True, cache=True)
def oasis_batch(Y, g, sn, b0, b_free, bmin, mode, smin, maxiter, M, use_mask, exact, C, S, info):
    """Deconvolve each row of Y (N, T) in parallel (one trace per thread).

    g (N, 2) holds (g1, g2) with g2 = 0 for AR(1); b0 the initial (or fixed)
    baseline, bmin its lower bound, smin the per-trace threshold (MODE_THRESH).
    M (N, T) uint8 is the support mask (spikes only where M != 0), read only
    when use_mask (pass any uint8 2-d array otherwise).
    Writes C, S (N, T) and info (N, 5) = (b, lam, c1, iterations, s_min used).
    """
    N, T = Y.shape
    for i in prange(N):
        y = Y[i].astype(np.float64)
        h = np.empty(T)
        H1 = np.empty(T + 1)
        H2 = np.empty(T + 1)
        P = np.empty(T + 1)
        pt = np.empty(T, np.int32)
        pl = np.empty(T, np.int32)
        pS = np.empty(T)
        pv = np.empty(T)
        pu = np.empty(T)
        acc = np.empty(9)
        xs = np.empty(T)
        w = np.empty(T)
        cA = np.empty(T)
        cB = np.empty(T)
        cD = np.empty(T)
        cDa = np.empty(T)
        cDb = np.empty(T)
        sk = np.empty(T, np.int32)
        c = np.empty(T)
        s = np.empty(T)
        row = np.empty(5)
        m = M[i] if use_mask else M[0]
        _solve_trace(y, T, g[i, 0], g[i, 1], sn[i], b0[i], b_free, bmin[i], mode, smin[i],
                     maxiter, m, use_mask, exact, h, H1, H2, P, pt, pl, pS, pv, pu, acc, xs, w,
                     cA, cB, cD, cDa, cDb, sk, c, s, row)
        for t in range(T):
            C[i, t] = c[t]
            S[i, t] = s[t]
        for k in range(5):
            info[i, k] = row[k]
