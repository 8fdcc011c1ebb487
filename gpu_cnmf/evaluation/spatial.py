"""Spatial consistency of footprints with the movie (CaImAn's ``r_values``).

A real cell brightens with the shape of its footprint whenever it fires. For
each component we pick its active frames (the windows around the largest
peaks of its denoised trace ``C``), leave out those where a component whose
footprint overlaps it is active too (as CaImAn does: there the movie shows
the neighbour as well; when that leaves nothing, all active frames are
kept), average the movie minus the background ``b f`` over them, and
correlate that mean image with the footprint over the footprint's support.
Noise blobs and components fitted to nothing in particular get low values.

What it reads: nothing for the components whose values a refit in tiles
kept (:class:`MovieSamples`). For the others, when the movie is the pixels
x T C-order memory map (what the pipeline and CaImAn's ``load_memmap``
give, viewed as frames), only the rows of pixels on some footprint's
support, each once, in blocks sized from the host memory budget -- at most
one pass over the file, usually a fraction of one -- and the arithmetic
touches only each component's active frames (``nnz(support) x ~70``
products). Any other movie (a frame-major array, a MovieSource) is read
once in chunks of frames.

Names: ``A`` footprints (pixels x K, scipy.sparse, Fortran pixel order),
``C`` traces (K x T), ``b``/``f`` background footprints (pixels x nb) and
traces (nb x T), ``YrA`` residual traces (K x T).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..backend import count_movie_io, get_device, host_budget, memory_budget, to_numpy, to_tensor
from ..errors import ParameterError
from ..summary import iter_movie, movie_shape

__all__ = ["active_frames", "spatial_correlation", "compute_residuals", "flatten_frames",
           "MovieSamples"]

# A footprint's support: its pixels at or above this share of its peak.
ATHRESH = 0.1


class MovieSamples:
    """The movie's values at some (pixel, frame) pairs, kept by a pass that
    held them so that :func:`spatial_correlation` need not read them again:
    the refit in tiles (:mod:`gpu_cnmf.cnmf.tiles`) keeps, for each
    component, its support's pixels at its active frames. A lookup that
    finds a pair missing answers None and the movie is read instead, so
    samples that no longer match the components only cost that read.

    Parameters
    ----------
    T : int
        Frames in the movie.
    """

    def __init__(self, T):
        self.T = int(T)
        self._parts = []
        self.keys = np.zeros(0, np.int64)
        self.values = np.zeros(0, np.float32)

    def key(self, pix, frames):
        """(len(pix), len(frames)) keys of pixels ``pix`` x ``frames``
        (integer numpy arrays or tensors, kept as given)."""
        return pix[:, None] * self.T + frames[None, :]

    def add(self, keys, values):
        """Values at ``keys`` (:meth:`key`, flattened or not)."""
        self._parts.append((np.asarray(keys, np.int64).ravel(),
                            np.asarray(values, np.float32).ravel()))

    def finish(self):
        """Sort what was added (call once, before lookups)."""
        if self._parts:
            keys = np.concatenate([self.keys] + [k for k, _ in self._parts])
            vals = np.concatenate([self.values] + [v for _, v in self._parts])
            self.keys, first = np.unique(keys, return_index=True)
            self.values = vals[first]
            self._parts = []
        return self

    def lookup(self, pix, frames):
        """(len(pix), len(frames)) values, or None when a pair is missing."""
        want = self.key(np.asarray(pix, np.int64), np.asarray(frames, np.int64)).ravel()
        if not len(want):
            return np.zeros((len(pix), len(frames)), np.float32)
        at = np.searchsorted(self.keys, want).clip(max=max(len(self.keys) - 1, 0))
        if not len(self.keys) or not np.array_equal(self.keys[at], want):
            return None
        return self.values[at].reshape(len(pix), len(frames))


def flatten_frames(x: torch.Tensor) -> torch.Tensor:
    """``(n, *dims)`` frames to ``(n, pixels)`` in Fortran pixel order."""
    n = x.shape[0]
    return x.permute(0, *range(x.ndim - 1, 0, -1)).reshape(n, -1)


def _check_A(A, dims, what="A") -> sp.csc_matrix:
    if not sp.issparse(A):
        A = sp.csc_matrix(np.asarray(A))
    A = sp.csc_matrix(A, dtype=np.float32, copy=True)   # scipy sorts indices in place
    if A.shape[0] != int(np.prod(dims)):
        raise ParameterError(f"{what}: has {A.shape[0]} rows but dims {tuple(dims)} "
                             f"make {int(np.prod(dims))} pixels")
    return A


def active_frames(C, Npeaks: int = 5, tB: int = -3, tA: int = 10, thres: float = 0.3
                  ) -> torch.Tensor:
    """Boolean (K, T) mask of each component's active frames.

    The ``Npeaks`` largest local maxima of each trace that rise above
    ``thres`` of its range, each with the frames from ``tB`` before to ``tA``
    after it.
    """
    C = torch.as_tensor(C)
    K, T = C.shape
    if T < 3:
        return torch.ones((K, T), dtype=torch.bool, device=C.device)
    lo = C.amin(1, keepdim=True)
    hi = C.amax(1, keepdim=True)
    up = torch.ones_like(C, dtype=torch.bool)
    down = torch.ones_like(C, dtype=torch.bool)
    up[:, 1:] = C[:, 1:] >= C[:, :-1]
    down[:, :-1] = C[:, :-1] > C[:, 1:]
    peak = up & down & (C >= lo + thres * (hi - lo)) & (hi > lo)
    score = torch.where(peak, C, torch.full_like(C, -torch.inf))
    k = min(int(Npeaks), T)
    val, idx = score.topk(k, dim=1)
    mask = torch.zeros((K, T), dtype=torch.bool, device=C.device)
    ok = torch.isfinite(val)
    rows = torch.arange(K, device=C.device)[:, None].expand(K, k)
    for lag in range(int(tB), int(tA) + 1):
        t = idx + lag
        good = ok & (t >= 0) & (t < T)
        mask[rows[good], t[good]] = True
    return mask


def spatial_correlation(images, A, C, b=None, f=None, dims=None, Npeaks: int = 5,
                        tB: int = -3, tA: int = 10, thres: float = 0.3,
                        Athresh: float = ATHRESH, use_cuda=False,
                        chunk_frames: int | None = None,
                        samples: MovieSamples | None = None) -> np.ndarray:
    """Correlation of each footprint with the movie (minus background) over
    its active frames (see the module doc).

    Parameters
    ----------
    images : ndarray, tensor or MovieSource, ``(T, *dims)``
    A : sparse (pixels, K);  C : (K, T);  b : (pixels, nb);  f : (nb, T)
    dims : tuple, optional
        Frame shape (taken from ``images`` when omitted).
    Npeaks, tB, tA, thres
        Active frames, see :func:`active_frames`.
    Athresh : float
        Support of a footprint: its pixels at or above ``Athresh`` of its max.
    samples : MovieSamples, optional
        The movie's values where known already; components whose support
        and active frames they hold are not read from the movie.

    Returns
    -------
    ndarray (K,)
        Pearson correlations in [-1, 1]; NaN for a component with a flat trace
        (no active frames) or fewer than 2 support pixels.
    """
    device = get_device(use_cuda)
    T, mdims = movie_shape(images)
    dims = tuple(mdims) if dims is None else tuple(dims)
    if tuple(mdims) != dims:
        raise ParameterError(f"dims: {dims} does not match the movie's frames {tuple(mdims)}")
    A = _check_A(A, dims)
    K = A.shape[1]
    C = np.asarray(C, dtype=np.float32).reshape(K, -1)
    if C.shape[1] != T:
        raise ParameterError(f"C: has {C.shape[1]} frames, the movie {T}")
    if K == 0:
        return np.zeros(0)

    # support entries e = (pixel, component) of each footprint
    comp = np.repeat(np.arange(K), np.diff(A.indptr))
    colmax = A.max(axis=0).toarray().ravel()
    keep = A.data >= Athresh * colmax[comp]
    keep &= A.data > 0
    pix, comp, aval = A.indices[keep], comp[keep], A.data[keep]

    Ct = to_tensor(C, device)
    act = active_frames(Ct, Npeaks, tB, tA, thres)
    # frames where an overlapping component is active as well
    overlap = (A.T @ A).tocoo()
    off = overlap.row != overlap.col
    O = torch.sparse_coo_tensor(np.vstack([overlap.row[off], overlap.col[off]]),
                                np.ones(int(off.sum()), np.float32), (K, K), device=device,
                                check_invariants=False).coalesce()
    busy = torch.sparse.mm(O, act.to(torch.float32)) > 0
    alone = act & ~busy
    act = torch.where(alone.any(1, keepdim=True), alone, act)
    n_act = act.sum(1)
    W = act.to(torch.float32) / n_act.clamp_min(1)[:, None]        # (K, T)

    W_np = to_numpy(W)
    M = np.zeros(len(pix), dtype=np.float64)
    todo = np.ones(len(pix), dtype=bool)
    if samples is not None:
        bounds = np.searchsorted(comp, np.arange(K + 1))
        for k in range(K):
            e = slice(bounds[k], bounds[k + 1])
            fr = np.flatnonzero(W_np[k])
            v = samples.lookup(pix[e], fr)
            if v is not None:
                M[e] = v.astype(np.float64) @ W_np[k, fr].astype(np.float64)
                todo[e] = False
    if todo.any():
        p, c = pix[todo], comp[todo]
        Yr = _pixel_rows(images)
        if Yr is not None:
            M[todo] = _support_means_rows(Yr, p, c, W_np)
        else:
            M[todo] = _support_means_frames(images, p, c, W, device, chunk_frames)

    if b is not None and f is not None and np.size(b) and np.size(f):
        b = np.asarray(b.toarray() if sp.issparse(b) else b, dtype=np.float64)
        b = b.reshape(A.shape[0], -1)
        f = np.asarray(f, dtype=np.float64).reshape(b.shape[1], -1)
        fW = f @ W_np.astype(np.float64).T                           # (nb, K)
        M -= np.einsum("ek,ke->e", b[pix], fW[:, comp])
    res = M

    return _grouped_pearson(res, aval.astype(np.float64), comp, K,
                            valid=to_numpy(n_act) > 0)


def _pixel_rows(images):
    """The (d, T) C-order matrix behind a Fortran-ordered (T, *dims) view of
    it (a pixels x T memory map seen as frames), else None."""
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
        return None
    if images.flags.f_contiguous and not images.flags.c_contiguous:
        T = images.shape[0]
        return images.reshape((T, -1), order="F").T
    return None


def _support_means_rows(Yr, pix, comp, W):
    """``M[e] = sum_t Y[pix[e], t] W[comp[e], t]`` reading only the support
    rows of the pixels x T matrix, each once, and only active frames.

    Rows are read in sorted blocks sized from the host budget; within a
    block each component multiplies its rows by its few active frames.
    """
    T = Yr.shape[1]
    M = np.zeros(len(pix), dtype=np.float64)
    if not len(pix):
        return M
    upix, ui = np.unique(pix, return_inverse=True)
    per_row = T * Yr.itemsize * 2                 # the block and its float32 copy
    rows_per_block = max(1, int(host_budget() // 2 // per_row))
    active = [np.flatnonzero(w) for w in W]
    order = np.argsort(ui, kind="stable")         # entries by row
    ui_sorted = ui[order]
    from ..progress import progress
    for b0 in progress(range(0, len(upix), rows_per_block), desc="evaluation: support rows",
                       unit="block", total=-(-len(upix) // rows_per_block)):
        b1 = min(len(upix), b0 + rows_per_block)
        Yb = np.asarray(Yr[upix[b0:b1]], dtype=np.float32)   # one read of these rows
        if isinstance(Yr, np.memmap):
            count_movie_io(read=Yb.size)
        e0, e1 = np.searchsorted(ui_sorted, [b0, b1])
        ents = order[e0:e1]
        ents = ents[np.argsort(comp[ents], kind="stable")]
        ks, starts = np.unique(comp[ents], return_index=True)
        stops = np.append(starts[1:], len(ents))
        for k, a, z in zip(ks, starts, stops):
            fr = active[k]
            if not len(fr):
                continue
            e = ents[a:z]
            M[e] = Yb[np.ix_(ui[e] - b0, fr)] @ W[k, fr].astype(np.float64)
        del Yb
    return M


def _support_means_frames(images, pix, comp, W, device, chunk_frames):
    """As :func:`_support_means_rows`, reading the movie frame chunk by chunk."""
    pix_t = torch.as_tensor(pix, device=device, dtype=torch.long)
    comp_t = torch.as_tensor(comp, device=device, dtype=torch.long)
    M = torch.zeros(len(pix), dtype=torch.float64, device=device)
    budget_elems = max(1 << 16, memory_budget(device) // 16)
    from ..progress import progress
    T = movie_shape(images)[0]
    bar = progress(total=T, desc="evaluation: frames", unit="frame")
    for start, y in iter_movie(images, chunk_frames, device, copies=3):
        bar.update(y.shape[0])
        yf = flatten_frames(y)                                     # (n, P)
        Wc = W[:, start:start + y.shape[0]].T                       # (n, K)
        used = Wc.sum(1) > 0                                       # frames anyone needs
        if not used.any():
            continue
        yf, Wc = yf[used], Wc[used]
        block = max(1, budget_elems // max(yf.shape[0], 1))
        for s in range(0, len(pix), block):
            p, c = pix_t[s:s + block], comp_t[s:s + block]
            M[s:s + block] += (yf[:, p] * Wc[:, c]).sum(0, dtype=torch.float64)
    bar.close()
    return to_numpy(M)


def _grouped_pearson(x, y, group, K, valid):
    cnt = np.bincount(group, minlength=K).astype(float)
    sx = np.bincount(group, x, K)
    sy = np.bincount(group, y, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = sx / cnt, sy / cnt
        dx, dy = x - mx[group], y - my[group]
        cov = np.bincount(group, dx * dy, K)
        vx = np.bincount(group, dx * dx, K)
        vy = np.bincount(group, dy * dy, K)
        r = cov / np.sqrt(vx * vy)
    r = np.where((cnt >= 2) & valid & (vx > 0) & (vy > 0), r, np.nan)
    return np.clip(r, -1, 1)


def compute_residuals(images, A, C, b=None, f=None, dims=None, use_cuda=False,
                      chunk_frames: int | None = None) -> np.ndarray:
    """Residual traces ``YrA``: what each component's footprint sees in the
    movie beyond the model, scaled like ``C``.

    ``YrA = (A' Y - (A' A) C - (A' b) f) / diag(A' A)``, with ``A' Y`` taken
    in one streamed pass over the movie.

    Returns
    -------
    ndarray (K, T) float32
    """
    device = get_device(use_cuda)
    T, mdims = movie_shape(images)
    dims = tuple(mdims) if dims is None else tuple(dims)
    A = _check_A(A, dims)
    K = A.shape[1]
    C = np.asarray(C, dtype=np.float64).reshape(K, -1)
    if C.shape[1] != T:
        raise ParameterError(f"C: has {C.shape[1]} frames, the movie {T}")
    At = A.T.tocoo()
    At_t = torch.sparse_coo_tensor(np.vstack([At.row, At.col]), At.data.astype(np.float32),
                                   At.shape, device=device,
                                   check_invariants=False).coalesce()
    AY = torch.zeros((K, T), dtype=torch.float32, device=device)
    for start, y in iter_movie(images, chunk_frames, device, copies=3):
        yf = flatten_frames(y)
        AY[:, start:start + y.shape[0]] = torch.sparse.mm(At_t, yf.T)
    AY = to_numpy(AY).astype(np.float64)
    AA = (A.T @ A).toarray().astype(np.float64)
    R = AY - AA @ C
    if b is not None and f is not None and np.size(b) and np.size(f):
        b = np.asarray(b.toarray() if sp.issparse(b) else b, dtype=np.float64)
        b = b.reshape(A.shape[0], -1)
        f = np.asarray(f, dtype=np.float64).reshape(b.shape[1], -1)
        R -= (A.T @ b) @ f
    nA2 = np.diag(AA).copy()
    nA2[nA2 == 0] = 1
    return (R / nA2[:, None]).astype(np.float32)
