"""Batched HALS: nonnegative least squares on Gram products.

Both CNMF sub-problems are ``min_W >= 0  1/2 ||Y - W H||^2 (+ lam |W|_1)``
for one factor ``W`` with the other ``H`` fixed, and both depend on ``Y``
only through ``P = Y H'`` and ``Q = H H'``:

- spatial: ``W = A`` (pixels x K), ``H = C``, ``P = Y C'``, ``Q = C C'``;
- temporal: ``W = C'`` (T x K), ``H = A'``, ``P = Y' A``, ``Q = A' A``.

Hierarchical ALS (Cichocki & Phan 2009) updates one column at a time,
``w_k <- max(0, w_k + (p_k - lam - W q_k) / q_kk)``. Two columns ``j, k``
with ``q_jk = 0`` in the temporal problem, or with disjoint supports in the
spatial one, do not interact, so a whole set of mutually independent
columns can be updated at once with exactly the result of updating them one
after the other. :func:`color_groups` partitions the columns into such sets
(a graph colouring of the overlap graph); a HALS pass is then one batched
update per colour instead of a Python loop over components.
"""
from __future__ import annotations

import torch


def color_groups(adj: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """Partition nodes into independent sets of the graph ``adj``.

    Parameters
    ----------
    adj : (K, K) bool tensor
        True where two nodes interact (the diagonal is ignored).

    Returns
    -------
    list of LongTensor
        Index sets, each free of internal edges, covering ``0..K-1``.

    Notes
    -----
    Each colour is a maximal independent set built by rounds of Luby's
    rule (a node joins when its priority beats every remaining neighbour's),
    all vectorised; higher-degree nodes get higher priority, which keeps the
    number of colours close to what a sequential greedy colouring finds.
    """
    K = adj.shape[0]
    dev = adj.device
    if K == 0:
        return []
    adj = adj.clone()
    adj.fill_diagonal_(False)
    gen = torch.Generator().manual_seed(seed)
    deg = adj.sum(1).float().cpu()
    prio = (deg * (K + 1) + torch.randperm(K, generator=gen).float()).to(dev)
    uncolored = torch.ones(K, dtype=torch.bool, device=dev)
    groups = []
    neg = torch.tensor(-1.0, device=dev)
    adj_f = adj.float()
    while bool(uncolored.any()):
        cand = uncolored.clone()
        chosen = torch.zeros(K, dtype=torch.bool, device=dev)
        while bool(cand.any()):
            nb = torch.where(adj & cand[None, :], prio[None, :], neg).amax(1)
            pick = cand & (prio > nb)
            chosen |= pick
            blocked = (adj_f @ pick.float()) > 0
            cand &= ~pick & ~blocked
        groups.append(torch.nonzero(chosen).flatten())
        uncolored &= ~chosen
    return groups


def group_columns(mask, groups, full_below=0.5):
    """For each group, the columns where any of its rows may be nonzero
    (None when that is most columns, meaning all)."""
    n = mask.shape[1]
    out = []
    for g in groups:
        cols = torch.nonzero(mask[g].any(0)).flatten()
        out.append(None if cols.numel() > full_below * n else cols)
    return out


def hals_rows(H, P, Q, groups, mask=None, lam=None, n_iter=1, tol=None, cols=None):
    """HALS passes over the rows of ``H``, in place.

    Rows are the components, so each colour group is a contiguous gather
    and the coupling term is one (|g| x K) @ (K x n) product.

    Parameters
    ----------
    H : (K, n) tensor
        Current nonnegative factor (components in rows), updated in place.
    P : (K, n) tensor
        The data projected on the other factor: ``A' Y`` for traces,
        ``C Y'`` for footprints.
    Q : (K, K) tensor
        Gram matrix of the other factor (``A'A`` or ``C C'``).
    groups : list of LongTensor
        From :func:`color_groups` on the interaction graph of the rows.
    mask : (K, n) bool tensor, optional
        Allowed support of each row (entries outside stay zero).
    lam : tensor broadcastable to (K, n), optional
        L1 penalty weights (lasso).
    n_iter : int
        Maximum number of passes.
    tol : float, optional
        Stop early when a pass changes ``H`` by less than ``tol`` relative
        to its norm.
    cols : list, optional
        From :func:`group_columns`: per group, the only columns its rows
        may occupy (footprints are small, so the spatial update then costs
        the size of the supports, not of the field of view).

    Returns
    -------
    H
    """
    diag = torch.diagonal(Q).clamp_min(torch.finfo(Q.dtype).tiny)
    full_lam = lam is not None and lam.ndim == 2 and lam.shape[0] == H.shape[0]
    if cols is None:
        cols = [None] * len(groups)
    for _ in range(int(n_iter)):
        change = 0.0
        for g, c in zip(groups, cols):
            if c is None:
                old = H[g]
                step = P[g] - Q[g] @ H
                if lam is not None:
                    step -= lam[g] if full_lam else lam
                new = (old + step / diag[g, None]).clamp_min_(0)
                if mask is not None:
                    new *= mask[g]
            else:
                gi, ci = g[:, None], c[None, :]
                old = H[gi, ci]
                step = P[gi, ci] - Q[g] @ H[:, c]
                if lam is not None:
                    step -= lam[gi, ci] if full_lam else lam
                new = (old + step / diag[g, None]).clamp_min_(0)
                if mask is not None:
                    new *= mask[gi, ci]
            if tol is not None:
                change += float(((new - old) ** 2).sum())
            if c is None:
                H[g] = new
            else:
                H[gi, ci] = new
        if tol is not None and change <= (tol ** 2) * float((H ** 2).sum() + 1e-30):
            break
    return H


def hals_update(W, P, Q, groups, mask=None, lam=None, n_iter=1, tol=None):
    """:func:`hals_rows` on the columns of ``W`` (n, K), in place.

    ``P`` is (n, K), ``mask`` (n, K) and ``lam`` broadcastable to (n, K).
    """
    Wt = W.T.contiguous()
    lt = None if lam is None else lam.T.contiguous()
    mt = None if mask is None else mask.T.contiguous()
    hals_rows(Wt, P.T.contiguous(), Q, groups, mask=mt, lam=lt, n_iter=n_iter, tol=tol)
    W.copy_(Wt.T)
    return W


def pack_rows(rows, cols, R, n, *vals):
    """Ragged rows as padded index rows (compact sparse storage).

    Parameters
    ----------
    rows, cols : LongTensors
        Entries, sorted by row then column.
    R : int
        Number of rows.
    n : int
        Number of columns; ``n`` is the padding index (a dummy column).
    *vals : tensors
        Values of the entries, packed alike.

    Returns
    -------
    idx : (R, L) LongTensor
        The columns of row r's entries, ascending, padded with ``n``;
        ``L`` is the largest row.
    *packed : (R, L) tensors, zero at the padding.
    """
    dev = cols.device
    counts = torch.bincount(rows, minlength=R) if rows.numel() else \
        torch.zeros(R, dtype=torch.long, device=dev)
    L = max(1, int(counts.max())) if R else 1
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=dev) - start[rows]
    idx = torch.full((R, L), n, dtype=torch.long, device=dev)
    idx[rows, pos] = cols
    out = [idx]
    for v in vals:
        p = torch.zeros((R, L), dtype=v.dtype, device=dev)
        p[rows, pos] = v
        out.append(p)
    return tuple(out)


def lookup(keys, query):
    """Positions of ``query`` values in the ascending ``keys``.

    Returns ``(pos, found)``: ``keys[pos] == query`` where ``found``.
    """
    if keys.numel() == 0:
        z = torch.zeros(query.shape, dtype=torch.long, device=query.device)
        return z, torch.zeros(query.shape, dtype=torch.bool, device=query.device)
    pos = torch.searchsorted(keys, query.reshape(-1)).reshape(query.shape)
    pos = pos.clamp_max(keys.numel() - 1)
    return pos, keys[pos] == query


def hals_sparse_rows(W, P, Hb, Pb, Q, groups, idx, lam_row=None, lam_col=None, n_iter=1,
                     tol=None, dense_groups=(), overlap=None, b_mask=None):
    """HALS on footprints stored compactly, plus dense background rows; in place.

    Rows ``0..K-1`` are components whose entries are ``W[r, l]`` at column
    ``idx[r, l]``; rows ``K..K+nb-1`` are background rows stored whole in
    ``Hb``. Row ``r``'s coupling term ``sum_j Q[r, j] H[j, idx[r]]`` only
    gathers the rows ``j`` whose support overlaps its own (``overlap``), so
    a pass costs about ``sum(support) * max_degree``, and nothing of size
    rows x columns is formed.

    Parameters
    ----------
    W, P : (K, L) tensors
        Component entries and their data projections (0 at padding).
    Hb, Pb : (nb, n + 1) tensors
        Background rows and their projections, with one extra all-zero
        column that the padding of ``idx`` points to.
    Q : (K + nb, K + nb) tensor
    groups : list of LongTensor
        Colour groups of component rows.
    idx : (K, L) LongTensor
        From :func:`pack_rows`, padded with ``n``.
    lam_row, lam_col : tensors (K,), (n + 1,), optional
        L1 weight of entry (r, c) is ``lam_row[r] * lam_col[c]``.
    dense_groups : list of LongTensor
        Colour groups of background rows (indices ``>= K``).
    overlap : (K + nb, K + nb) bool tensor, optional
        Which rows share columns; all pairs when None.
    b_mask : (n, nb) bool tensor, optional
        Columns each background row may occupy.
    """
    K, L = W.shape
    nb, n1 = Hb.shape
    R = K + nb
    pad = n1 - 1
    dev = W.device
    diag = torch.diagonal(Q).clamp_min(torch.finfo(Q.dtype).tiny)
    if overlap is None:
        overlap = torch.ones((R, R), dtype=torch.bool, device=dev)
    # one flat buffer: component entries, background rows, a zero slot
    nW, nH = K * L, nb * n1
    buf = torch.zeros(nW + nH + 1, device=dev, dtype=W.dtype)
    buf[:nW] = W.reshape(-1)
    buf[nW:nW + nH] = Hb.reshape(-1)
    ZERO = nW + nH
    Wv, Hv = buf[:nW].view(K, L), buf[nW:nW + nH].view(nb, n1)
    valid = idx != pad
    # neighbour lists padded with row R (the zero slot)
    deg = overlap.sum(1)
    sparse_rows = torch.cat(list(groups)) if len(groups) else deg.new_zeros(0)
    D = max(1, int(deg[sparse_rows].max())) if sparse_rows.numel() else 1
    order = torch.argsort((~overlap).to(torch.uint8), dim=1, stable=True)[:, :D]
    nbr = torch.where(torch.arange(D, device=dev)[None, :] < deg[:, None], order,
                      torch.full_like(order, R))
    Qp = torch.cat([Q, torch.zeros((R, 1), device=dev, dtype=Q.dtype)], 1)
    Qn = Qp.gather(1, nbr)                                    # (R, D)
    # entry keys row * n1 + column ascend (columns ascend within a row)
    keys = (torch.arange(K, device=dev)[:, None] * n1 + idx).reshape(-1)

    def flat_of(rows_, cols_):
        """Buffer positions of rows ``rows_`` at columns ``cols_``."""
        comp = rows_ < K
        bg = (rows_ >= K) & (rows_ < R)
        pos, found = lookup(keys, rows_.clamp_max(K - 1) * n1 + cols_) if K else \
            (torch.zeros_like(rows_), torch.zeros_like(comp))
        out = torch.full_like(rows_, ZERO)
        out = torch.where(comp & found & (cols_ != pad), pos, out)
        out = torch.where(bg & (cols_ != pad), nW + (rows_ - K).clamp_min(0) * n1 + cols_, out)
        return out

    self_at = [(g[:, None] * L + torch.arange(L, device=dev)).reshape(-1) for g in groups]
    nbr_at = [flat_of(nbr[g][:, None, :].expand(-1, L, -1),
                      idx[g][:, :, None].expand(-1, -1, D)).reshape(-1) for g in groups]
    Pt = [P[g] for g in groups]
    lam_g = [lam_row[g, None] * lam_col[idx[g]] if lam_row is not None else None for g in groups]
    valid_g = [valid[g] for g in groups]
    # components seen from background rows: a sparse (n + 1, K) of W
    vr = torch.arange(K, device=dev)[:, None].expand(K, L)[valid]
    vflat = torch.nonzero(valid.reshape(-1)).flatten()
    w_ind = torch.stack([idx[valid], vr])
    bmask_t = None if b_mask is None else torch.cat(
        [b_mask.T, torch.zeros((nb, 1), dtype=torch.bool, device=dev)], 1)
    for _ in range(int(n_iter)):
        change, norm = 0.0, 0.0
        for gn, g in enumerate(groups):
            G = g.numel()
            old = buf.index_select(0, self_at[gn]).view(G, L)
            rows_ = buf.index_select(0, nbr_at[gn]).view(G, L, -1)   # (G, L, D)
            coup = torch.bmm(rows_, Qn[g][:, :, None])[..., 0]
            step = Pt[gn] - coup
            if lam_g[gn] is not None:
                step -= lam_g[gn]
            new = (old + step / diag[g, None]).clamp_min_(0)
            new *= valid_g[gn]
            if tol is not None:
                change += float(((new - old) ** 2).sum())
                norm += float((new ** 2).sum())
            buf.index_copy_(0, self_at[gn], new.view(-1))
        for g in dense_groups:
            gb = g - K
            Wsp = torch.sparse_coo_tensor(w_ind, Wv.reshape(-1)[vflat], (n1, K),
                                          check_invariants=False)
            coup = (torch.sparse.mm(Wsp, Q[:K, g].contiguous()).T if K else 0) + Q[g, K:] @ Hv
            old = Hv[gb]
            new = (old + (Pb[gb] - coup) / diag[g][:, None]).clamp_min_(0)
            new[:, pad] = 0
            if bmask_t is not None:
                new *= bmask_t[gb]
            if tol is not None:
                change += float(((new - old) ** 2).sum())
                norm += float((new ** 2).sum())
            Hv[gb] = new
        # relative change of the entries updated in this pass
        if tol is not None and change <= (tol ** 2) * (norm + 1e-30):
            break
    W.copy_(Wv)
    Hb.copy_(Hv)
    return W, Hb
