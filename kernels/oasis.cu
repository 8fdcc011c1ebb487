// OASIS deconvolution for AR(1) / AR(2) calcium, one thread per trace.
//
// Step-for-step port of gpu_cnmf/deconvolution/oasis_cpu.py (the numba CPU
// twin): same functions, same order of operations; change both together.
// See that module's docstring for the algorithm (Friedrich, Zhou & Paninski
// 2017; for AR(2) the greedy pools warm-start an exact active-set solve).
// Work is in double precision.
//
// Layout: traces are columns. Y, C, S are (T, N) row-major, so the threads
// of a warp read consecutive addresses at the same frame. Each thread owns a
// column of the scratch arrays, interleaved the same way: element k of the
// thread's array lives at [k * ns + i] where ns is the number of threads
// (traces) in the launch.

#define MODE_L1 0
#define MODE_THRESH 1
#define MODE_AUTO 2
#define H_FLOOR 1e-12
#define RSS_TOL 1e-4
#define N_BISECT 24
#define KKT_TOL 1e-9
#define AS_STEPS_PER_FRAME 2
#define BULK_STEPS 20

struct Scratch {
    double *h, *H1, *H2, *P;      // impulse response and its prefix sums
    int *pt, *pl;                  // pool start and length
    double *pS, *pv, *pu;          // pool sum of h_k y, value, preceding calcium
    double *xs, *w;                // exact AR(2): feasible spikes, residual gradient
    double *cA, *cB, *cD, *cDa, *cDb;  // exact AR(2): chain coefficients
    int *sk;                       // exact AR(2): split offset per pool
    long long ns;                  // stride between consecutive elements
};

#define AT(a, k) (a[(long long)(k) * sc.ns])
#define YAT(k) (y[(long long)(k) * ystride])

__device__ int kernel_fill(double g1, double g2, int T, const Scratch &sc) {
    AT(sc.h, 0) = 1.0;
    int hlen = 1;
    for (int k = 1; k < T; ++k) {
        double v = g1 * AT(sc.h, k - 1);
        if (k >= 2) v += g2 * AT(sc.h, k - 2);
        if (fabs(v) < H_FLOOR) v = 0.0;
        AT(sc.h, k) = v;
        if (v != 0.0) hlen = k + 1;
    }
    AT(sc.H1, 0) = 0.0;
    AT(sc.H2, 0) = 0.0;
    AT(sc.P, 0) = 0.0;
    for (int k = 0; k < T; ++k) {
        double hk = AT(sc.h, k);
        AT(sc.H1, k + 1) = AT(sc.H1, k) + hk;
        AT(sc.H2, k + 1) = AT(sc.H2, k) + hk * hk;
        AT(sc.P, k + 1) = AT(sc.P, k) + (k >= 1 ? hk * AT(sc.h, k - 1) : 0.0);
    }
    return hlen;
}

__device__ __forceinline__ double penalty_sum(int t, int l, int T, double g1, double g2,
                                              const Scratch &sc) {
    double v = (1.0 - g1 - g2) * AT(sc.H1, l);
    if (t <= T - 2 && T - 2 < t + l) v += g2 * AT(sc.h, T - 2 - t);
    if (T - 1 < t + l) v += (g1 + g2) * AT(sc.h, T - 1 - t);
    return v;
}

__device__ __forceinline__ double cval(double v, double u, int k, double g2, const Scratch &sc) {
    if (k >= 1) return v * AT(sc.h, k) + g2 * u * AT(sc.h, k - 1);
    return v;
}

__device__ __forceinline__ double veff(int j, const Scratch &sc) {
    double v = AT(sc.pv, j);
    if (j == 0 && v < 0.0) return 0.0;
    return v;
}

template <typename F>
__device__ int consolidate(int n_in, const F *y, long long ystride, int T, double g1, double g2,
                           double lam, double b, double thr, int hlen, const Scratch &sc) {
    int j = -1;
    for (int i = 0; i < n_in; ++i) {
        j += 1;
        AT(sc.pt, j) = AT(sc.pt, i);
        AT(sc.pl, j) = AT(sc.pl, i);
        AT(sc.pS, j) = AT(sc.pS, i);
        while (true) {
            double u = 0.0, uu = 0.0;
            if (j > 0) {
                double ve = veff(j - 1, sc);
                int lp = AT(sc.pl, j - 1);
                u = cval(ve, AT(sc.pu, j - 1), lp - 1, g2, sc);
                if (lp >= 2) uu = cval(ve, AT(sc.pu, j - 1), lp - 2, g2, sc);
                else uu = AT(sc.pu, j - 1);
            }
            AT(sc.pu, j) = u;
            int l = AT(sc.pl, j);
            AT(sc.pv, j) = (AT(sc.pS, j) - b * AT(sc.H1, l)
                            - lam * penalty_sum(AT(sc.pt, j), l, T, g1, g2, sc)
                            - g2 * u * AT(sc.P, l)) / AT(sc.H2, l);
            if (j == 0) break;
            double s = AT(sc.pv, j) - g1 * u - g2 * uu;
            if (s >= thr && !(thr == 0.0 && s < 0.0)) break;
            // merge pool j into j - 1
            int l1 = AT(sc.pl, j - 1);
            if (g2 == 0.0) {
                if (l1 < hlen) AT(sc.pS, j - 1) += AT(sc.h, l1) * AT(sc.pS, j);
            } else {
                int t2 = AT(sc.pt, j);
                int lj = AT(sc.pl, j);
                for (int k = 0; k < lj; ++k) {
                    if (l1 + k >= hlen) break;
                    AT(sc.pS, j - 1) += AT(sc.h, l1 + k) * (double)YAT(t2 + k);
                }
            }
            AT(sc.pl, j - 1) = l1 + AT(sc.pl, j);
            j -= 1;
        }
    }
    return j + 1;
}

// First pools: every frame without a mask, else one pool from each allowed
// frame (and frame 0) up to the next, with its sum of h_k y. The mask has
// the layout of y (stride ystride).
template <typename F>
__device__ int initial_pools(const F *y, long long ystride, int T, const unsigned char *mask,
                             bool use_mask, int hlen, const Scratch &sc) {
    int n = 0;
    for (int i = 0; i < T; ++i) {
        if (i == 0 || !use_mask || mask[(long long)i * ystride] != 0) {
            AT(sc.pt, n) = i;
            AT(sc.pl, n) = 1;
            AT(sc.pS, n) = (double)YAT(i);
            n += 1;
        } else {
            int k = AT(sc.pl, n - 1);
            if (k < hlen) AT(sc.pS, n - 1) += AT(sc.h, k) * (double)YAT(i);
            AT(sc.pl, n - 1) = k + 1;
        }
    }
    return n;
}

template <typename F>
__device__ double rss(int n, const F *y, long long ystride, double b, double g2, const Scratch &sc) {
    double out = 0.0;
    for (int j = 0; j < n; ++j) {
        double ve = veff(j, sc);
        int t = AT(sc.pt, j), l = AT(sc.pl, j);
        double u = AT(sc.pu, j);
        for (int k = 0; k < l; ++k) {
            double r = (double)YAT(t + k) - b - cval(ve, u, k, g2, sc);
            out += r * r;
        }
    }
    return out;
}

// accumulate (twin: _accumulate): one frame's residual and its derivatives
__device__ __forceinline__ void accumulate(double *acc, double r, double q1, double q2) {
    acc[0] += r;
    acc[1] += r * r;
    acc[2] += r * q1;
    acc[3] += r * q2;
    acc[4] += q1 * q1;
    acc[5] += q1 * q2;
    acc[6] += q2 * q2;
    acc[7] += q1;
    acc[8] += q2;
}

template <typename F>
__device__ void linearize(int n, const F *y, long long ystride, int T, double g1, double g2,
                          double b, const Scratch &sc, double *acc) {
    for (int i = 0; i < 9; ++i) acc[i] = 0.0;
    double DuA = 0.0, DuB = 0.0;
    for (int j = 0; j < n; ++j) {
        int t = AT(sc.pt, j), l = AT(sc.pl, j);
        double ve = veff(j, sc);
        double u = AT(sc.pu, j);
        double DvA, DvB;
        if (j == 0 && AT(sc.pv, 0) < 0.0) {
            DvA = 0.0;
            DvB = 0.0;
        } else {
            DvA = (penalty_sum(t, l, T, g1, g2, sc) - g2 * AT(sc.P, l) * DuA) / AT(sc.H2, l);
            DvB = (AT(sc.H1, l) - g2 * AT(sc.P, l) * DuB) / AT(sc.H2, l);
        }
        double q1 = 0.0, dB = 0.0;
        for (int k = 0; k < l; ++k) {
            double hk = AT(sc.h, k);
            double hk1 = k >= 1 ? AT(sc.h, k - 1) : 0.0;
            double c = ve * hk + g2 * u * hk1;
            q1 = DvA * hk + g2 * DuA * hk1;
            dB = DvB * hk + g2 * DuB * hk1;
            double r = (double)YAT(t + k) - b - c;
            double q2 = 1.0 - dB;
            accumulate(acc, r, q1, q2);
        }
        DuA = q1;
        DuB = dB;
    }
}

// Larger root of A x^2 + 2 B x + C = 0; without one, the minimiser -B/A but
// never a step up (see _quad_root in oasis_cpu.py).
__device__ __forceinline__ double quad_root(double A, double B, double C) {
    if (A <= 0.0) return 0.0;
    double disc = B * B - A * C;
    if (disc < 0.0) return fmin(-B / A, 0.0);
    return (-B + sqrt(disc)) / A;
}

// ---- exact AR(2) solve (see _chain_backward ... _exact_l1 in oasis_cpu.py)

__device__ __forceinline__ double lag_penalty_sum(int t, int l, int T, double g1, double g2,
                                                  const Scratch &sc) {
    if (l < 2) return 0.0;
    double v = (1.0 - g1 - g2) * AT(sc.H1, l - 1);
    if (t + 1 <= T - 2 && T - 2 < t + l) v += g2 * AT(sc.h, T - 3 - t);
    if (T - 1 < t + l) v += (g1 + g2) * AT(sc.h, T - 2 - t);
    return v;
}

__device__ __forceinline__ double spike(int j, double g1, double g2, const Scratch &sc) {
    if (j == 0) return AT(sc.pv, 0);
    int lp = AT(sc.pl, j - 1);
    double uu = lp >= 2 ? cval(AT(sc.pv, j - 1), AT(sc.pu, j - 1), lp - 2, g2, sc)
                        : AT(sc.pu, j - 1);
    return AT(sc.pv, j) - g1 * AT(sc.pu, j) - g2 * uu;
}

template <typename F>
__device__ void chain_backward(int n, const F *y, long long ystride, int T, double g1, double g2,
                               double lam, double b, int hlen, const Scratch &sc) {
    double alpha = 0.0, beta = 0.0, beta_a = 0.0, beta_b = 0.0;
    for (int j = n - 1; j >= 0; --j) {
        int t = AT(sc.pt, j), l = AT(sc.pl, j);
        double e = AT(sc.h, l - 1);
        double e2 = l >= 2 ? AT(sc.h, l - 2) : 0.0;
        double sy = 0.0, smy = 0.0;
        int kmax = l < hlen + 1 ? l : hlen + 1;
        for (int k = 0; k < kmax; ++k) {
            double yk = (double)YAT(t + k);
            if (k < hlen) sy += AT(sc.h, k) * yk;
            if (k >= 1) smy += AT(sc.h, k - 1) * yk;
        }
        double pa = penalty_sum(t, l, T, g1, g2, sc);
        double pma = lag_penalty_sum(t, l, T, g1, g2, sc);
        double hm = l >= 1 ? AT(sc.H1, l - 1) : 0.0;
        double A = AT(sc.H2, l) + alpha * e * e;
        double B = g2 * (AT(sc.P, l) + alpha * e * e2);
        double Cq = g2 * g2 * (AT(sc.H2, l - 1) + alpha * e2 * e2);
        double D = -(sy - b * AT(sc.H1, l) - lam * pa) + beta * e;
        double E = -g2 * (smy - b * hm - lam * pma) + beta * g2 * e2;
        double Da = -pa + beta_a * e;
        double Ea = -g2 * pma + beta_a * g2 * e2;
        double Db = -AT(sc.H1, l) + beta_b * e;
        double Eb = -g2 * hm + beta_b * g2 * e2;
        AT(sc.cA, j) = A;
        AT(sc.cB, j) = B;
        AT(sc.cD, j) = D;
        AT(sc.cDa, j) = Da;
        AT(sc.cDb, j) = Db;
        alpha = Cq - B * B / A;
        beta = E - B * D / A;
        beta_a = Ea - B * Da / A;
        beta_b = Eb - B * Db / A;
    }
}

__device__ void chain_forward(int n, double g2, bool zero0, const Scratch &sc) {
    double u = 0.0;
    for (int j = 0; j < n; ++j) {
        double v = -(AT(sc.cB, j) * u + AT(sc.cD, j)) / AT(sc.cA, j);
        if (j == 0 && zero0) v = 0.0;
        AT(sc.pv, j) = v;
        AT(sc.pu, j) = u;
        int l = AT(sc.pl, j);
        double un = v * AT(sc.h, l - 1);
        if (l >= 2) un += g2 * u * AT(sc.h, l - 2);
        u = un;
    }
}

// Exact non-negative least squares on the spike support, Lawson-Hanson
// primal active set warm-started from the pools (see _active_set).
template <typename F>
__device__ int active_set(int n, bool &zero0, const F *y, long long ystride, int T, double g1,
                          double g2, double lam, double b, double tol, int max_steps,
                          int bulk, const unsigned char *mask, bool use_mask, int hlen, const Scratch &sc) {
    int steps = 0;
    while (steps < max_steps) {
        steps += 1;
        chain_backward(n, y, ystride, T, g1, g2, lam, b, hlen, sc);
        chain_forward(n, g2, zero0, sc);
        double alpha = 1.0;
        int jmin = -1;
        for (int j = 0; j < n; ++j) {
            double z = spike(j, g1, g2, sc);
            AT(sc.w, j) = z;
            if (z < 0.0 && !(j == 0 && zero0)) {
                double a = AT(sc.xs, j) / (AT(sc.xs, j) - z);
                if (jmin < 0 || a < alpha) {
                    alpha = a;
                    jmin = j;
                }
            }
        }
        if (jmin >= 0) {
            if (bulk > 0) {
                // drop every negative spike at once (see _active_set)
                bulk -= 1;
                alpha = 1.0;
            }
            int m = 0;
            for (int j = 0; j < n; ++j) {
                double z = AT(sc.w, j);
                double x = AT(sc.xs, j) + alpha * (z - AT(sc.xs, j));
                bool drop = j == jmin || (z < 0.0 && x <= 0.0);
                if (j == 0) {
                    if (drop && !zero0) zero0 = true;
                    AT(sc.xs, 0) = zero0 ? 0.0 : x;
                    m = 1;
                    continue;
                }
                if (drop) {
                    AT(sc.pl, m - 1) += AT(sc.pl, j);
                    continue;
                }
                AT(sc.pt, m) = AT(sc.pt, j);
                AT(sc.pl, m) = AT(sc.pl, j);
                AT(sc.xs, m) = fmax(x, 0.0);
                m += 1;
            }
            n = m;
            continue;
        }
        for (int j = 0; j < n; ++j) AT(sc.xs, j) = AT(sc.w, j);
        if (zero0) AT(sc.xs, 0) = 0.0;
        for (int j = 0; j < n; ++j) {
            int t = AT(sc.pt, j), l = AT(sc.pl, j);
            for (int k = 0; k < l; ++k)
                AT(sc.w, t + k) = (double)YAT(t + k) - b
                                  - cval(AT(sc.pv, j), AT(sc.pu, j), k, g2, sc);
        }
        AT(sc.w, T - 1) -= lam;
        if (T >= 2) AT(sc.w, T - 2) -= lam * (1.0 - g1);
        double base = lam * (1.0 - g1 - g2);
        for (int t = T - 3; t >= 0; --t) AT(sc.w, t) -= base;
        if (T >= 2) AT(sc.w, T - 2) += g1 * AT(sc.w, T - 1);
        for (int t = T - 3; t >= 0; --t)
            AT(sc.w, t) += g1 * AT(sc.w, t + 1) + g2 * AT(sc.w, t + 2);
        int adds = 0;
        for (int j = 0; j < n; ++j) {
            int t = AT(sc.pt, j), l = AT(sc.pl, j);
            double best = tol;
            AT(sc.sk, j) = 0;
            for (int k = 1; k < l; ++k) {
                double wk = AT(sc.w, t + k);
                if (wk > best && (!use_mask || mask[(long long)(t + k) * ystride] != 0)) {
                    best = wk;
                    AT(sc.sk, j) = k;
                }
            }
            if (AT(sc.sk, j) > 0) adds += 1;
        }
        bool unpin = zero0 && AT(sc.w, 0) > tol;
        if (adds == 0 && !unpin) break;
        if (unpin) zero0 = false;
        int i = n + adds - 1;
        for (int j = n - 1; j >= 0; --j) {
            int t = AT(sc.pt, j), l = AT(sc.pl, j);
            double x = AT(sc.xs, j);
            int k = AT(sc.sk, j);
            if (k > 0) {
                AT(sc.pt, i) = t + k;
                AT(sc.pl, i) = l - k;
                AT(sc.xs, i) = 0.0;
                i -= 1;
                l = k;
            }
            AT(sc.pt, i) = t;
            AT(sc.pl, i) = l;
            AT(sc.xs, i) = x;
            i -= 1;
        }
        n += adds;
    }
    return n;
}

template <typename F>
__device__ void linearize_exact(int n, const F *y, long long ystride, double g2, double b,
                                bool zero0, const Scratch &sc, double *acc) {
    for (int i = 0; i < 9; ++i) acc[i] = 0.0;
    double DuA = 0.0, DuB = 0.0;
    for (int j = 0; j < n; ++j) {
        int t = AT(sc.pt, j), l = AT(sc.pl, j);
        double DvA = -(AT(sc.cB, j) * DuA + AT(sc.cDa, j)) / AT(sc.cA, j);
        double DvB = -(AT(sc.cB, j) * DuB + AT(sc.cDb, j)) / AT(sc.cA, j);
        if (j == 0 && zero0) {
            DvA = 0.0;
            DvB = 0.0;
        }
        double pvj = AT(sc.pv, j), puj = AT(sc.pu, j);
        for (int k = 0; k < l; ++k) {
            double hk = AT(sc.h, k);
            double hk1 = k >= 1 ? AT(sc.h, k - 1) : 0.0;
            double c = pvj * hk + g2 * puj * hk1;
            double q1 = DvA * hk + g2 * DuA * hk1;
            double dB = DvB * hk + g2 * DuB * hk1;
            double r = (double)YAT(t + k) - b - c;
            double q2 = 1.0 - dB;
            accumulate(acc, r, q1, q2);
        }
        double nA = DvA * AT(sc.h, l - 1);
        double nB = DvB * AT(sc.h, l - 1);
        if (l >= 2) {
            nA += g2 * DuA * AT(sc.h, l - 2);
            nB += g2 * DuB * AT(sc.h, l - 2);
        }
        DuA = nA;
        DuB = nB;
    }
}

// (lam, b) step putting the linearised residual on target (see _lam_b_step).
__device__ void lam_b_step(const double *acc, double thresh, double lam, double b, bool use_b,
                           double bmin, double &dl, double &db) {
    double R = acc[0], RR = acc[1], Rq1 = acc[2], Rq2 = acc[3], Q11 = acc[4];
    double Q12 = acc[5], Q22 = acc[6], S1 = acc[7], S2 = acc[8];
    db = 0.0;
    dl = 0.0;
    if (use_b) {
        double m = R / S2, f = S1 / S2;
        double A = Q11 - 2.0 * f * Q12 + f * f * Q22;
        double B = Rq1 - f * Rq2 - m * Q12 + m * f * Q22;
        double C = RR - 2.0 * m * Rq2 + m * m * Q22 - thresh;
        dl = quad_root(A, B, C);
        if (lam + dl < 0.0) dl = -lam;
        db = (R + dl * S1) / S2;
        if (b + db < bmin) {
            db = bmin - b;
            use_b = false;
        }
    }
    if (!use_b) {
        double C = RR - 2.0 * db * Rq2 + db * db * Q22 - thresh;
        dl = quad_root(Q11, Rq1 - db * Q12, C);
        if (lam + dl < 0.0) dl = -lam;
    }
}

// From the greedy pools, the exact noise-constrained solution (see _exact_l1).
template <typename F>
__device__ int exact_l1(int n, const F *y, long long ystride, int T, double g1, double g2,
                        double sn, double &lam, double &b, bool b_free, double bmin, int maxiter,
                        const unsigned char *mask, bool use_mask, int hlen, const Scratch &sc,
                        double *acc, int &iters) {
    double thresh = sn * sn * T;
    double tol = KKT_TOL * (sn * sqrt(AT(sc.H2, T)) + lam) + 1e-300;
    bool zero0 = AT(sc.pv, 0) < 0.0;
    for (int j = 0; j < n; ++j) {
        if (j == 0) {
            AT(sc.xs, 0) = zero0 ? 0.0 : AT(sc.pv, 0);
        } else {
            int lp = AT(sc.pl, j - 1);
            double ve = veff(j - 1, sc);
            double uu = lp >= 2 ? cval(ve, AT(sc.pu, j - 1), lp - 2, g2, sc) : AT(sc.pu, j - 1);
            AT(sc.xs, j) = fmax(AT(sc.pv, j) - g1 * AT(sc.pu, j) - g2 * uu, 0.0);
        }
    }
    int max_steps = AS_STEPS_PER_FRAME * T + 100;
    int it = 0;
    while (true) {
        n = active_set(n, zero0, y, ystride, T, g1, g2, lam, b, tol, max_steps, BULK_STEPS, mask,
                       use_mask, hlen, sc);
        linearize_exact(n, y, ystride, g2, b, zero0, sc, acc);
        double RR = acc[1];
        bool use_b = b_free && acc[8] > 1e-3 * T;
        bool done_rss = fabs(RR - thresh) <= RSS_TOL * thresh || (lam == 0.0 && RR > thresh);
        bool done_b = (!use_b) || fabs(acc[0]) <= RSS_TOL * sqrt(thresh * T) + 1e-12;
        if ((done_rss && done_b) || it >= maxiter) break;
        double dl, db;
        lam_b_step(acc, thresh, lam, b, use_b, bmin, dl, db);
        lam += dl;
        b += db;
        it += 1;
    }
    iters = it;
    return n;
}

template <typename F>
__device__ void solve_trace(const F *y, long long ystride, int T, double g1, double g2, double sn,
                            double b, bool b_free, double bmin, int mode, double smin, int maxiter,
                            const unsigned char *mask, bool use_mask, bool exact,
                            const Scratch &sc, float *c_out, float *s_out, long long ostride,
                            double *info) {
    int hlen = kernel_fill(g1, g2, T, sc);
    double thresh = sn * sn * T;
    double lam = 0.0;
    double acc[9];
    int n = initial_pools(y, ystride, T, mask, use_mask, hlen, sc);
    n = consolidate(n, y, ystride, T, g1, g2, lam, b, 0.0, hlen, sc);
    int it = 0;
    bool fresh = false;
    while (it < maxiter) {
        linearize(n, y, ystride, T, g1, g2, b, sc, acc);
        double R = acc[0], RR = acc[1], S2 = acc[8];
        bool use_b = b_free && it > 0 && S2 > 1e-3 * T;
        bool done_rss = fabs(RR - thresh) <= RSS_TOL * thresh || (lam == 0.0 && RR > thresh);
        bool done_b = (!use_b) || fabs(R) <= RSS_TOL * sqrt(thresh * T) + 1e-12;
        if (it > 0 && done_rss && done_b) {
            if (fresh || !use_mask) break;
            // merges are never undone: on a support, one fresh pass at the
            // converged (lam, b) (see _solve_trace in oasis_cpu.py)
            fresh = true;
            n = initial_pools(y, ystride, T, mask, use_mask, hlen, sc);
            n = consolidate(n, y, ystride, T, g1, g2, lam, b, 0.0, hlen, sc);
            continue;
        }
        double dl, db;
        lam_b_step(acc, thresh, lam, b, use_b, bmin, dl, db);
        lam += dl;
        b += db;
        it += 1;
        n = consolidate(n, y, ystride, T, g1, g2, lam, b, 0.0, hlen, sc);
    }
    if (exact && g2 != 0.0) {
        int it2 = 0;
        n = exact_l1(n, y, ystride, T, g1, g2, sn, lam, b, b_free, bmin, maxiter, mask, use_mask,
                     hlen, sc, acc, it2);
        it += it2;
    }
    if (mode == MODE_THRESH) {
        lam = 0.0;
        n = initial_pools(y, ystride, T, mask, use_mask, hlen, sc);
        n = consolidate(n, y, ystride, T, g1, g2, 0.0, b, smin, hlen, sc);
    } else if (mode == MODE_AUTO) {
        lam = 0.0;
        double lo = 0.0, hi = 0.0;
        for (int t = 0; t < T; ++t) {
            double v = (double)YAT(t) - b;
            if (v > hi) hi = v;
        }
        for (int q = 0; q < N_BISECT; ++q) {
            double mid = 0.5 * (lo + hi);
            n = initial_pools(y, ystride, T, mask, use_mask, hlen, sc);
            n = consolidate(n, y, ystride, T, g1, g2, 0.0, b, mid, hlen, sc);
            if (rss(n, y, ystride, b, g2, sc) <= thresh) lo = mid;
            else hi = mid;
        }
        smin = lo;
        n = initial_pools(y, ystride, T, mask, use_mask, hlen, sc);
        n = consolidate(n, y, ystride, T, g1, g2, 0.0, b, lo, hlen, sc);
    }
    double c0 = 0.0;
    for (int j = 0; j < n; ++j) {
        double ve = veff(j, sc);
        int t = AT(sc.pt, j), l = AT(sc.pl, j);
        double u = AT(sc.pu, j);
        for (int k = 0; k < l; ++k) {
            double c = cval(ve, u, k, g2, sc);
            if (t + k == 0) c0 = c;
            c_out[(long long)(t + k) * ostride] = (float)c;
            s_out[(long long)(t + k) * ostride] = 0.0f;
        }
        if (j > 0) {
            int lp = AT(sc.pl, j - 1);
            double vp = veff(j - 1, sc);
            double uu = lp >= 2 ? cval(vp, AT(sc.pu, j - 1), lp - 2, g2, sc) : AT(sc.pu, j - 1);
            s_out[(long long)t * ostride] = (float)(AT(sc.pv, j) - g1 * AT(sc.pu, j) - g2 * uu);
        }
    }
    info[0] = b;
    info[1] = lam;
    info[2] = c0;
    info[3] = it;
    info[4] = smin;
}

// Y, C, S: (T, N) row-major (traces are columns); G: (N, 2); sn, b0, bmin,
// smin: (N,); info: (N, 5); M: support mask (T, N) uint8, read only when
// use_mask (spikes only where M != 0; any valid pointer otherwise).
// exact: nonzero for the exact AR(2) solve (ignored for AR(1), which the
// greedy pass solves exactly). Scratch: ints (3, T + 1, N) and doubles
// (14, T + 1, N) for the N traces of this launch.
template <typename F>
__device__ void oasis_batch_impl(const F *Y, int N, int T, const double *G, const double *sn,
                                 const double *b0, int b_free, const double *bmin, int mode,
                                 const double *smin, int maxiter, const unsigned char *M,
                                 int use_mask, int exact, float *C, float *S, double *info,
                                 int *iscratch, double *dscratch) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    long long ns = N;
    long long plane = (long long)(T + 1) * ns;
    Scratch sc;
    sc.ns = ns;
    sc.h = dscratch + i;
    sc.H1 = dscratch + plane + i;
    sc.H2 = dscratch + 2 * plane + i;
    sc.P = dscratch + 3 * plane + i;
    sc.pS = dscratch + 4 * plane + i;
    sc.pv = dscratch + 5 * plane + i;
    sc.pu = dscratch + 6 * plane + i;
    sc.xs = dscratch + 7 * plane + i;
    sc.w = dscratch + 8 * plane + i;
    sc.cA = dscratch + 9 * plane + i;
    sc.cB = dscratch + 10 * plane + i;
    sc.cD = dscratch + 11 * plane + i;
    sc.cDa = dscratch + 12 * plane + i;
    sc.cDb = dscratch + 13 * plane + i;
    sc.pt = iscratch + i;
    sc.pl = iscratch + plane + i;
    sc.sk = iscratch + 2 * plane + i;
    double row[5];
    const unsigned char *m = use_mask ? M + i : M;
    solve_trace<F>(Y + i, ns, T, G[2 * i], G[2 * i + 1], sn[i], b0[i], b_free != 0, bmin[i], mode,
                   smin[i], maxiter, m, use_mask != 0, exact != 0, sc, C + i, S + i, ns, row);
    for (int k = 0; k < 5; ++k) info[5 * (long long)i + k] = row[k];
}

extern "C" __global__ void oasis_batch_f32(const float *Y, int N, int T, const double *G,
                                           const double *sn, const double *b0, int b_free,
                                           const double *bmin, int mode, const double *smin,
                                           int maxiter, const unsigned char *M, int use_mask,
                                           int exact, float *C, float *S, double *info,
                                           int *iscratch, double *dscratch) {
    oasis_batch_impl<float>(Y, N, T, G, sn, b0, b_free, bmin, mode, smin, maxiter, M, use_mask,
                            exact, C, S, info, iscratch, dscratch);
}

extern "C" __global__ void oasis_batch_f64(const double *Y, int N, int T, const double *G,
                                           const double *sn, const double *b0, int b_free,
                                           const double *bmin, int mode, const double *smin,
                                           int maxiter, const unsigned char *M, int use_mask,
                                           int exact, float *C, float *S, double *info,
                                           int *iscratch, double *dscratch) {
    oasis_batch_impl<double>(Y, N, T, G, sn, b0, b_free, bmin, mode, smin, maxiter, M, use_mask,
                            exact, C, S, info, iscratch, dscratch);
}
