"""Background components b (pixels x nb) and f (nb x T).

The neuropil and other diffuse fluorescence is modelled as a rank-``nb``
nonnegative matrix ``b f``. It is found by small NMFs (:func:`nmf_hals`) at
initialisation, updated with the footprints in the spatial step and with the
traces in the temporal step, and, when patches each bring their own
``nb_patch`` local components, compressed back to a global rank-``nb``
background (:func:`compress_background`, ``low_rank_background=True``)
without ever forming the pixels x T matrix.
"""
from __future__ import annotations

import torch

from .hals import hals_rows


def _single_groups(k, device):
    return [torch.tensor([i], device=device) for i in range(k)]


def nmf_hals(Y, k, n_iter=50, W=None, H=None):
    """Nonnegative rank-``k`` factorisation ``Y ~ W H`` of a dense matrix.

    Parameters
    ----------
    Y : (n, m) tensor, nonnegative
    k : int
    n_iter : int
        Alternating HALS rounds.
    W, H : tensors, optional
        Initial factors; by default a nonnegative SVD start.

    Returns
    -------
    W (n, k), H (k, m)
    """
    if W is None or H is None:
        W, H = _svd_start(Y, k)
    groups = _single_groups(k, Y.device)
    Wt = W.T.contiguous()
    for _ in range(n_iter):
        hals_rows(H, Wt @ Y, Wt @ Wt.T, groups)
        hals_rows(Wt, H @ Y.T, H @ H.T, groups)
    return Wt.T.contiguous(), H


def _svd_start(Y, k):
    """NNDSVD-style start: leading singular pairs with their sign fixed."""
    q = min(k + 4, min(Y.shape))
    U, S, V = torch.svd_lowrank(Y, q=q, niter=3)
    W = torch.zeros((Y.shape[0], k), device=Y.device)
    H = torch.zeros((k, Y.shape[1]), device=Y.device)
    for i in range(min(k, q)):
        u, v = U[:, i], V[:, i]
        up, vp = u.clamp_min(0), v.clamp_min(0)
        un, vn = (-u).clamp_min(0), (-v).clamp_min(0)
        if up.norm() * vp.norm() >= un.norm() * vn.norm():
            u, v = up, vp
        else:
            u, v = un, vn
        s = torch.sqrt(S[i] * u.norm() * v.norm())
        W[:, i] = s * u / u.norm().clamp_min(1e-12)
        H[i] = s * v / v.norm().clamp_min(1e-12)
    # empty columns get a small positive start so HALS can grow them
    W = W + 1e-6 * W.abs().max().clamp_min(1e-6)
    H = H + 1e-6 * H.abs().max().clamp_min(1e-6)
    return W, H


def compress_background(B, Fb, nb, n_iter=30):
    """Rank-``nb`` NMF of ``B @ Fb`` using only products of the factors.

    Parameters
    ----------
    B : (d, m) tensor, Fb : (m, T) tensor
        Patch backgrounds stacked (each column nonzero in its patch).
    nb : int

    Returns
    -------
    b (d, k), f (k, T)
        ``k = min(nb, m)``: the product has rank at most ``m`` (one patch
        with ``nb_patch < nb`` gives fewer), and components beyond its rank
        would only split one background in two.
    """
    if nb <= 0 or B.shape[1] == 0:
        return (torch.zeros((B.shape[0], max(nb, 0)), device=B.device),
                torch.zeros((max(nb, 0), Fb.shape[1]), device=B.device))
    nb = min(int(nb), B.shape[1], Fb.shape[0])
    # start from the leading singular pairs of the product via two QRs
    Qb, Rb = torch.linalg.qr(B)
    Qf, Rf = torch.linalg.qr(Fb.T)
    u, s, vt = torch.linalg.svd(Rb @ Rf.T)
    W = (Qb @ u[:, :nb]) * torch.sqrt(s[:nb])
    H = (torch.sqrt(s[:nb])[:, None] * vt[:nb]) @ Qf.T
    sgn = torch.sign(W.sum(0) + 1e-30)
    W, H = (W * sgn).clamp_min(0) + 1e-8, (H * sgn[:, None]).clamp_min(0) + 1e-8
    groups = _single_groups(nb, B.device)
    Wt = W.T.contiguous()
    H = H.contiguous()
    for _ in range(n_iter):
        # temporal factor: W' (B Fb) = (W' B) Fb
        hals_rows(H, (Wt @ B) @ Fb, Wt @ Wt.T, groups)
        # spatial factor: H (B Fb)' = (H Fb') B'
        hals_rows(Wt, (H @ Fb.T) @ B.T, H @ H.T, groups)
    return Wt.T.contiguous(), H
