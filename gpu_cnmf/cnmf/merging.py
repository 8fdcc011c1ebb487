"""Merging components that are one neuron split in two (or found twice).

Two components are linked when their footprints overlap (the parts at or
above ``OVERLAP_REL`` of each one's peak share a pixel) and their traces
correlate at ``thr`` or more; both tests come from K x K products (``M'M``
of those masks and ``C C'``). Each connected group of links is split into
clusters whose members all overlap pairwise and whose traces correlate at
``thr`` on average (:func:`_clusters`: a chain through a component that
straddles two neighbours must not merge the neighbours). Two footprints
alike to a cosine of ``SAME_FOOTPRINT`` are linked whatever their traces
(:func:`_link_corr`). Each cluster
(smaller than ``max_merge_area`` pixels in union) becomes one component: the best
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
# Footprints overlap when the parts of them at or above this fraction of
# their own peak share a pixel. Supports (A > 0) reach far into the faint
# tails, so with them two distinct cells whose activity correlates (two
# cells 20 px apart with traces correlated 0.98 on the hard two-photon
# movies) would be one neuron; 0.2 of the peak is where the ROI masks of
# the scores (metrics.binary_masks) and CaImAn's contours are drawn.
OVERLAP_REL = 0.2
# Two components are copies of one neuron (find_copies) when at least this
# share of the smaller one's core lies in the other's core.
COPY_OVERLAP = 0.5
# Two footprints this alike (cosine of the footprint vectors) are one
# neuron whatever their traces: for equal Gaussian footprints of width
# sigma, 0.8 means centres less than one sigma apart, which two somata in
# one plane never are (distinct cells of the dense hard two-photon movies
# reach 0.67). With footprints that alike the model cannot tell the two
# traces apart: the copies split the neuron's transients between them,
# their traces decorrelate (0.5-0.8 on the hard movies, below merge_thr)
# and both survive as accepted components.
SAME_FOOTPRINT = 0.8


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
    overlap = fp.overlap_counts(_cores(A)) > 0
    groups = _linked_groups(overlap, _link_corr(A, C), thr, C.device)
    if max_merge_area is not None and groups:
        _, _, _, _, _, um = _member_entries(A, groups)
        area = torch.bincount(um, minlength=len(groups)).cpu().numpy()
        groups = [g for g, a in zip(groups, area) if a <= max_merge_area]
    return groups


def find_copies(A, C, thr=0.8, min_overlap=None):
    """Groups of components that are copies of one neuron (found twice, e.g.
    by two patches whose overlap holds it).

    Two components are copies when most of the smaller one's core (its part
    at or above ``OVERLAP_REL`` of its peak) lies in the other's core (at
    least ``min_overlap``, default ``COPY_OVERLAP``, of the smaller core's
    pixels) and their traces correlate at ``thr`` or more. Unlike
    :func:`find_merges`, which also joins the pieces of a neuron split in
    two (cores that only touch), this is meant to run once where copies
    are expected, before the components have been refined together: two
    neighbours whose first traces still mix each other's activity touch,
    but neither lies within the other. Groups are clusters whose members
    are all copies of each other (:func:`_clusters`).

    Returns
    -------
    list of LongTensor (each of length >= 2)
    """
    K = A.shape[1]
    if K < 2:
        return []
    min_overlap = COPY_OVERLAP if min_overlap is None else float(min_overlap)
    inter = fp.overlap_counts(_cores(A)).float()
    size = torch.diagonal(inter)
    within = inter >= min_overlap * torch.minimum(size[:, None], size[None, :]).clamp_min(1)
    within &= inter > 0
    return _linked_groups(within, _link_corr(A, C), thr, C.device)


def _trace_corr(C):
    Cc = C - C.mean(1, keepdim=True)
    nrm = Cc.norm(dim=1).clamp_min(1e-12)
    return (Cc @ Cc.T) / (nrm[:, None] * nrm[None, :])


def _link_corr(A, C):
    """What links two components: their traces' correlation, set to 1 for
    pairs of footprints alike to a cosine of ``SAME_FOOTPRINT`` or more
    (always linked)."""
    corr = _trace_corr(C)
    G = fp.gram(A)
    nrm = torch.diagonal(G).clamp_min(1e-30).sqrt()
    same = G / (nrm[:, None] * nrm[None, :]) >= SAME_FOOTPRINT
    return torch.where(same, torch.ones_like(corr), corr)


def _linked_groups(overlap, corr, thr, dev):
    """Clusters (:func:`_clusters`) of the connected groups of links
    ``overlap & corr >= thr``."""
    K = overlap.shape[0]
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
    over_np = overlap.cpu().numpy()
    groups = []
    for lab in np.flatnonzero(sizes >= 2):
        groups.extend(_clusters(np.flatnonzero(labels == lab), corr_np, over_np, thr))
    return [torch.as_tensor(g, device=dev) for g in groups]


def _cores(A):
    """Indicator (layout of ``A``) of each footprint's pixels at or above
    ``OVERLAP_REL`` of its peak."""
    pix, comp, val = fp.entries(A)
    peak = torch.zeros(A.shape[1], dtype=val.dtype, device=val.device)
    peak = peak.scatter_reduce(0, comp, val, reduce="amax", include_self=True)
    sel = val >= OVERLAP_REL * peak[comp]
    return fp.from_entries(pix[sel], comp[sel], torch.ones_like(val[sel]), tuple(A.shape), A)


def _clusters(members, corr, overlap, thr):
    """Split a connected group of linked components into the clusters that
    merge: every two members of a cluster overlap, and the mean correlation
    between the traces of two clusters that join is at least ``thr``.

    Linking alone chains neighbours: a component whose footprint straddles
    two neurons (a copy cut by a patch's edge, or a trace mixing both) is
    linked to each, and the connected group would merge two distinct
    neurons into one two-lobed blob, even neurons 20 px apart when their
    activity is alike. Clusters grow from the most correlated linked pair
    (average linkage on the correlations, complete linkage on the overlaps),
    so copies of one compact neuron merge, even one whose trace is a little
    noisier than the others', and distinct neighbours do not.
    """
    if members.size == 2:
        return [members]
    sub = corr[np.ix_(members, members)]
    ov = overlap[np.ix_(members, members)]
    clusters = [[i] for i in range(members.size)]
    label = np.arange(members.size)
    pairs = np.argwhere(np.triu(ov & (sub >= thr), 1))
    order = np.argsort(-sub[pairs[:, 0], pairs[:, 1]], kind="stable")
    for i, j in pairs[order]:
        a, b = label[i], label[j]
        if a == b:
            continue
        ca, cb = clusters[a], clusters[b]
        if not ov[np.ix_(ca, cb)].all() or sub[np.ix_(ca, cb)].mean() < thr:
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
