"""Merging components that are one neuron split in two (or found twice).

Two components are linked when their footprints overlap and their traces
correlate at ``thr`` or more; both tests come from K x K products
(``(A>0)'(A>0)`` and ``C C'``). Each connected group of links (smaller than
``max_merge_area`` pixels in union) becomes one component: the best
rank-1 nonnegative approximation of ``sum_k a_k (c_k + YrA_k)`` over the
group, computed for all groups at once with an indicator matrix, whose
trace is then deconvolved again.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import footprints as fp

_RANK1_ITERS = 15


def find_merges(A, C, thr=0.8, max_merge_area=None):
    """Groups of components to merge.

    Parameters
    ----------
    A : (d, K) tensor, C : (K, T) tensor
    thr : float
        Trace correlation threshold.
    max_merge_area : int, optional
        Groups whose union footprint is larger are left alone.

    Returns
    -------
    list of LongTensor (each of length >= 2)
    """
    K = A.shape[1]
    if K < 2:
        return []
    dev = C.device
    overlap = fp.overlap_counts(A) > 0
    Cc = C - C.mean(1, keepdim=True)
    nrm = Cc.norm(dim=1).clamp_min(1e-12)
    corr = (Cc @ Cc.T) / (nrm[:, None] * nrm[None, :])
    link = overlap & (corr >= thr)
    link.fill_diagonal_(False)
    ii, jj = torch.nonzero(link, as_tuple=True)
    if ii.numel() == 0:
        return []
    ii, jj = ii.cpu().numpy(), jj.cpu().numpy()
    graph = coo_matrix((np.ones(ii.size), (ii, jj)), shape=(K, K))
    n, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=n)
    groups = [np.flatnonzero(labels == lab) for lab in np.flatnonzero(sizes >= 2)]
    if max_merge_area is not None and groups:
        G = _indicator(groups, K, dev)
        area = (fp.matmul(fp.indicator(A), G) > 0).sum(0).cpu().numpy()
        groups = [g for g, a in zip(groups, area) if a <= max_merge_area]
    return [torch.as_tensor(g, device=dev) for g in groups]


def _indicator(groups, K, device):
    G = torch.zeros((K, len(groups)), device=device)
    for m, g in enumerate(groups):
        G[torch.as_tensor(g, device=device), m] = 1.0
    return G


def merge_rank1(A, Craw, groups, n_iter=_RANK1_ITERS):
    """Rank-1 nonnegative approximation of each group's ``A_g Craw_g``.

    Parameters
    ----------
    A : (d, K) tensor, Craw : (K, T) tensor
    groups : list of index tensors

    Returns
    -------
    Am : (d, M) dense unit-norm footprints, Cm : (M, T) traces
    """
    K = A.shape[1]
    dev = Craw.device
    G = _indicator([g.cpu().numpy() for g in groups], K, dev)
    # start: the group member with the largest energy
    energy = fp.sq_norms(A) * (Craw ** 2).sum(1)
    best = torch.argmax(energy[:, None] * G, 0)
    am = fp.to_dense(fp.select(A, best)).clone()
    cm = torch.zeros((G.shape[1], Craw.shape[1]), device=dev)
    for _ in range(n_iter):
        na = (am ** 2).sum(0).clamp_min(1e-12)
        cm = ((fp.t_matmul(A, am).T * G.T) @ Craw).clamp_min(0) / na[:, None]
        nc = (cm ** 2).sum(1).clamp_min(1e-12)
        am = fp.matmul(A, (Craw @ cm.T) * G).clamp_min(0) / nc[None, :]
    nrm = am.norm(dim=0).clamp_min(1e-12)
    return am / nrm, cm * nrm[:, None]
