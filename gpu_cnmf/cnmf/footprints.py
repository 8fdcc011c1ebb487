"""Footprints ``A`` (pixels x K), dense in a patch, sparse on the whole field.

Inside a patch ``A`` is a dense (d, K) tensor: the patch is small. On the
whole field of view ``A`` is a coalesced torch sparse COO tensor: a 512 x 512
field with 1,200 components is 1.26 GB dense and a few MB sparse, since
each footprint covers a few hundred pixels. The functions here give both
layouts one interface, so every CNMF step is written once; each returns
footprints in the layout it was given.

Pixel order is Fortran order, as everywhere (:mod:`.products`).
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def coo(indices, values, shape):
    """A coalesced sparse COO tensor (the one constructor used here)."""
    return torch.sparse_coo_tensor(indices, values, shape, device=values.device,
                                   check_invariants=False).coalesce()


def _spgram(M):
    """``M' M`` of a sparse ``M`` as a dense matrix."""
    with warnings.catch_warnings():
        # torch routes sparse x sparse through its CSR kernels and says so
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse.mm(M.t().coalesce(), M).to_dense()


def is_sparse(A) -> bool:
    return A.layout == torch.sparse_coo


def to_sparse(A):
    """Coalesced sparse COO copy of ``A`` (zeros dropped)."""
    if is_sparse(A):
        return A.coalesce()
    return A.to_sparse().coalesce()


def to_dense(A):
    return A.to_dense() if is_sparse(A) else A


def entries(A):
    """``(pix, comp, val)`` of the nonzero entries, sorted by component
    then pixel."""
    if is_sparse(A):
        A = A.coalesce()
        pix, comp = A.indices()
        val = A.values()
    else:
        pix, comp = torch.nonzero(A, as_tuple=True)
        val = A[pix, comp]
    keep = val != 0
    pix, comp, val = pix[keep], comp[keep], val[keep]
    order = torch.argsort(comp * A.shape[0] + pix)
    return pix[order], comp[order], val[order]


def from_entries(pix, comp, val, shape, like):
    """Footprints of ``shape`` from entries, in the layout of ``like``."""
    if is_sparse(like):
        return coo(torch.stack([pix, comp]), val.float(), shape)
    out = torch.zeros(shape, dtype=torch.float32, device=like.device)
    out[pix, comp] = val.float()
    return out


def select(A, keep):
    """Columns of ``A`` where the bool tensor ``keep`` is True (or at the
    given indices)."""
    if keep.dtype == torch.bool:
        if not is_sparse(A):
            return A[:, keep]
        keep = torch.nonzero(keep).flatten()
    if not is_sparse(A):
        return A[:, keep]
    return A.index_select(1, keep.to(A.device)).coalesce()


def cat(*As):
    """Columns side by side; sparse when the first is sparse."""
    if not is_sparse(As[0]):
        return torch.cat([to_dense(a) for a in As], 1)
    d = As[0].shape[0]
    idx, vals, k0 = [], [], 0
    for a in As:
        a = to_sparse(a)
        i = a.indices().clone()
        i[1] += k0
        idx.append(i)
        vals.append(a.values())
        k0 += a.shape[1]
    return coo(torch.cat(idx, 1), torch.cat(vals), (d, k0))


def nonempty(A):
    """(K,) bool: components with a positive entry."""
    if not is_sparse(A):
        return (A > 0).any(0)
    A = A.coalesce()
    out = torch.zeros(A.shape[1], dtype=torch.bool, device=A.device)
    comp = A.indices()[1][A.values() > 0]
    out[comp] = True
    return out


def sq_norms(A):
    """(K,) squared norm of each footprint."""
    if not is_sparse(A):
        return (A ** 2).sum(0)
    A = A.coalesce()
    out = torch.zeros(A.shape[1], device=A.device)
    return out.index_add_(0, A.indices()[1], A.values() ** 2)


def centres(A, dims):
    """(K,) row and column of each footprint's centre of mass."""
    d1, d2 = dims
    dev = A.device
    ii = torch.arange(d1, device=dev, dtype=torch.float32).repeat(d2)
    jj = torch.arange(d2, device=dev, dtype=torch.float32).repeat_interleave(d1)
    m = t_matmul(A, torch.stack([torch.ones_like(ii), ii, jj], 1))      # (K, 3)
    w = m[:, 0].clamp_min(1e-12)
    return m[:, 1] / w, m[:, 2] / w


def matmul(A, X):
    """``A @ X`` for dense ``X`` (K, m) or (K,) -> dense."""
    vec = X.ndim == 1
    X2 = X[:, None] if vec else X
    out = torch.sparse.mm(A, X2) if is_sparse(A) else A @ X2
    return out[:, 0] if vec else out


def t_matmul(A, X):
    """``A' @ X`` for dense ``X`` (d, m) -> dense (K, m)."""
    if is_sparse(A):
        return torch.sparse.mm(A.t().coalesce(), X)
    return A.T @ X


def indicator(A):
    """``A > 0`` as float, in ``A``'s layout."""
    if not is_sparse(A):
        return (A > 0).float()
    A = A.coalesce()
    keep = A.values() > 0
    return coo(A.indices()[:, keep], torch.ones(int(keep.sum()), device=A.device), A.shape)


def overlap_counts(A):
    """(K, K) dense: pixels shared by each pair of supports (diagonal:
    support sizes)."""
    M = indicator(A)
    if is_sparse(M):
        return _spgram(M)
    return M.T @ M


def gram(A, b=None):
    """``[A b]' [A b]`` as a dense (K + nb, K + nb) matrix."""
    if is_sparse(A):
        AtA = _spgram(A)
    else:
        AtA = A.T @ A
    if b is None or b.shape[1] == 0:
        return AtA
    Atb = t_matmul(A, b)
    return torch.cat([torch.cat([AtA, Atb], 1), torch.cat([Atb.T, b.T @ b], 1)], 0)


def zero_pixels(A, pixel_mask):
    """``A`` with the rows where ``pixel_mask`` (d,) is True set to zero."""
    if not is_sparse(A):
        A = A.clone()
        A[pixel_mask] = 0
        return A
    A = A.coalesce()
    keep = ~pixel_mask[A.indices()[0]]
    return coo(A.indices()[:, keep], A.values()[keep], A.shape)


def row_block(A, p0, p1):
    """Rows ``p0:p1`` of ``A`` (a (p1 - p0, K) slice in ``A``'s layout)."""
    if not is_sparse(A):
        return A[p0:p1]
    A = A.coalesce()
    rows = A.indices()[0]
    a, b = (int(x) for x in torch.searchsorted(rows, torch.tensor([p0, p1], device=rows.device)))
    idx = A.indices()[:, a:b].clone()
    idx[0] -= p0
    return coo(idx, A.values()[a:b], (p1 - p0, A.shape[1]))


def rows(A, index):
    """``A[index]`` for a LongTensor of pixels (dense result rows of a
    sparse ``A`` are gathered through a lookup of the entries)."""
    if not is_sparse(A):
        return A[index]
    A = A.coalesce()
    pos = torch.full((A.shape[0],), -1, dtype=torch.long, device=A.device)
    pos[index] = torch.arange(index.numel(), device=A.device)
    r = pos[A.indices()[0]]
    keep = r >= 0
    idx = torch.stack([r[keep], A.indices()[1][keep]])
    return coo(idx, A.values()[keep], (index.numel(), A.shape[1]))


def embed(A, index, d):
    """The inverse of :func:`rows`: footprints on a piece's pixels put on
    ``d`` pixels, row ``i`` going to ``index[i]`` (sparse ``A``)."""
    A = A.coalesce()
    pix, comp = A.indices()
    return coo(torch.stack([index[pix], comp]), A.values(), (d, A.shape[1]))


def to_scipy(A):
    """Host ``scipy.sparse.csc_matrix`` (float32) without densifying."""
    if not is_sparse(A):
        out = sp.csc_matrix(A.detach().cpu().numpy().astype(np.float32))
    else:
        A = A.coalesce()
        pix, comp = A.indices().cpu().numpy()
        out = sp.csc_matrix((A.values().detach().cpu().numpy().astype(np.float32), (pix, comp)),
                            shape=tuple(A.shape))
    out.eliminate_zeros()
    return out


def from_scipy(M, device, sparse=True):
    """Torch footprints from a scipy sparse or dense (d, K) array."""
    if not sparse:
        M = M.toarray() if sp.issparse(M) else np.asarray(M)
        return torch.as_tensor(M.astype(np.float32), device=device)
    M = sp.coo_matrix(M)
    idx = torch.as_tensor(np.vstack([M.row, M.col]).astype(np.int64), device=device)
    return coo(idx, torch.as_tensor(M.data.astype(np.float32), device=device), M.shape)
