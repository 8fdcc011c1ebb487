"""Merging components that are one neuron split in two (or found twice).

Two components are linked when their footprints overlap and their traces
correlate at ``thr`` or more; both tests come from K x K products
(``(A>0)'(A>0)`` and ``C C'``). Each connected group of links is split by
complete linkage into clusters whose traces all correlate at ``thr``
(:func:`_complete_linkage`: a chain through a component that mixes two
neighbours must not merge the neighbours), and each cluster (smaller than
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
    corr_np = corr.cpu().numpy()
    link_np = link.cpu().numpy()
    groups = []
    for lab in np.flatnonzero(sizes >= 2):
        members = np.flatnonzero(labels == lab)
        groups.extend(_complete_linkage(members, corr_np, link_np, thr))
    if max_merge_area is not None and groups:
        _, _, _, _, _, um = _member_entries(A, groups)
        area = torch.bincount(um, minlength=len(groups)).cpu().numpy()
        groups = [g for g, a in zip(groups, area) if a <= max_merge_area]
    return [torch.as_tensor(g, device=dev) for g in groups]


def _complete_linkage(members, corr, link, thr):
    """Split a connected group of linked components into clusters whose
    every pair of traces correlates at ``thr`` or more.

    Linking alone chains neighbours: a component whose trace mixes two
    adjacent neurons (a footprint straddling both) correlates with each,
    and the connected group would merge two distinct neurons into one
    blob. Clusters grow from the most correlated linked pair, joining two
    clusters only when they are linked and all their cross pairs pass
    ``thr`` (complete linkage), so only components carrying the same
    activity merge.
    """
    if members.size == 2:
        return [members]
    sub = corr[np.ix_(members, members)]
    lk = link[np.ix_(members, members)]
    clusters = [[i] for i in range(members.size)]
    label = np.arange(members.size)
    pairs = np.argwhere(np.triu(lk, 1))
    order = np.argsort(-sub[pairs[:, 0], pairs[:, 1]], kind="stable")
    for i, j in pairs[order]:
        a, b = label[i], label[j]
        if a == b:
            continue
        ca, cb = clusters[a], clusters[b]
        if sub[np.ix_(ca, cb)].min() < thr:
            continue
        clusters[a] = ca + cb
        clusters[b] = []
        label[cb] = a
    return [members[np.asarray(c)] for c in clusters if len(c) >= 2]


def _indicator(groups, K, device):
    G = torch.zeros((K, len(groups)), device=device)
    for m, g in enumerate(groups):
        G[torch.as_tensor(g, device=device), m] = 1.0
    return G


def _member_entries(A, groups):
    """Footprint entries of the grouped components, keyed by (group, pixel).

    Returns ``(k, v, m, inv, up, um)``: component, value and group of each
    entry, its index ``inv`` among the unique (group, pixel) pairs, and those
    pairs' pixel ``up`` and group ``um`` (the union supports of the groups).
    """
    K, d = A.shape[1], A.shape[0]
    dev = A.device
    group_of = torch.full((K,), -1, dtype=torch.long, device=dev)
    for m, g in enumerate(groups):
        group_of[torch.as_tensor(g, device=dev)] = m
    pix, comp, val = fp.entries(A)
    m = group_of[comp]
    sel = m >= 0
    pix, k, v, m = pix[sel], comp[sel], val[sel], m[sel]
    keys, inv = torch.unique(m * d + pix, return_inverse=True)
    return k, v, m, inv, keys % d, keys // d


def merge_rank1(A, Craw, groups, n_iter=_RANK1_ITERS):
    """Rank-1 nonnegative approximation of each group's ``A_g Craw_g``.

    Alternates ``c_m = (a_m' A_g) Craw_g / ||a_m||^2`` and
    ``a_m = A_g (Craw_g c_m') / ||c_m||^2`` on the entries of the group's
    footprints only, so a merged footprint lives on the union of its
    members' supports and nothing pixels x groups is formed.

    Parameters
    ----------
    A : (d, K) tensor (dense or sparse), Craw : (K, T) tensor
    groups : list of index tensors

    Returns
    -------
    Am : (d, M) unit-norm footprints in ``A``'s layout, Cm : (M, T) traces
    """
    K, d = A.shape[1], A.shape[0]
    dev = Craw.device
    M = len(groups)
    G = _indicator([g.cpu().numpy() for g in groups], K, dev)
    k, v, m, inv, up, um = _member_entries(A, groups)
    U = up.numel()

    def per_group(x):
        return torch.zeros(M, device=dev).index_add_(0, um, x)

    # start: the group member with the largest energy
    energy = fp.sq_norms(A) * (Craw ** 2).sum(1)
    best = torch.argmax(energy[:, None] * G, 0)
    am = torch.zeros(U, device=dev).index_add_(0, inv, torch.where(k == best[m], v, 0.0))
    cm = torch.zeros((M, Craw.shape[1]), device=dev)
    for _ in range(n_iter):
        na = per_group(am ** 2).clamp_min(1e-12)
        s = torch.zeros(K, device=dev).index_add_(0, k, am[inv] * v)     # a_m' a_k
        cm = (G.T @ (s[:, None] * Craw)).clamp_min(0) / na[:, None]
        nc = (cm ** 2).sum(1).clamp_min(1e-12)
        w = ((Craw @ cm.T) * G)[k, m]                                    # c_k . c_m
        am = torch.zeros(U, device=dev).index_add_(0, inv, v * w).clamp_min(0) / nc[um]
    nrm = per_group(am ** 2).sqrt().clamp_min(1e-12)
    Am = fp.from_entries(up, um, am / nrm[um], (d, M), A)
    return Am, cm * nrm[:, None]
