"""The movie as a pixels x time matrix, read block by block.

CNMF never needs the movie ``Y`` itself, only its products with the current
model: ``A'Y`` (components x frames, for the temporal step) and ``YC'``
(pixels x components, for the spatial step), plus per-pixel statistics once
at the start. :class:`MovieMatrix` reads ``Y`` in blocks of whole image
columns (``block_size * num_blocks_per_run`` pixels at most, fewer when the
memory budget says so), moves each block to the device and accumulates the
product there, so the movie is read once per product and never copied whole.

Pixel order is CaImAn's: pixel ``(i, j)`` of a ``(d1, d2)`` frame is row
``i + j * d1`` of ``Yr``. A block of image columns ``j0:j1`` is therefore a
contiguous range of rows, which for a pixels x T C-order memory map (what
``load_memmap`` returns, and what ``np.reshape(Yr.T, [T] + dims, order='F')``
views) is a zero-copy slice.

On a GPU the blocks go through pinned host buffers with asynchronous copies;
when the whole movie fits in a fraction of the device's memory budget the
blocks stay resident after the first pass, so later passes do no transfers.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..backend import count_movie_io, memory_budget, pinned_empty
from ..errors import MovieError
from . import footprints as fp

# Share of the device budget the resident copy of Y may take.
_RESIDENT_FRACTION = 0.6
# On the CPU, A'Y uses a sparse kernel below this fill of A (footprints are
# small, so A is usually a few percent full).
_SPARSE_FILL = 0.2


@dataclass(frozen=True)
class Region:
    """A rectangle ``[y0:y1, x0:x1]`` of the field of view (a patch)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def dims(self):
        return (self.y1 - self.y0, self.x1 - self.x0)

    def pixel_index(self, d1):
        """Fortran-order indices in the full FOV of the region's pixels,
        themselves in the region's own Fortran order."""
        ii = np.arange(self.y0, self.y1)
        jj = np.arange(self.x0, self.x1)
        return (ii[:, None] + jj[None, :] * d1).ravel(order="F")


def as_pixel_matrix(images):
    """Recognise the layout of ``images`` without copying.

    Returns ``(array, layout, dims, T)`` with layout ``'pixels'`` when
    ``array`` is the ``(d, T)`` C-order pixels x time matrix (``images`` was
    a Fortran-ordered ``(T, d1, d2)`` view of it, as CaImAn users pass), or
    ``'frames'`` when ``array`` is ``(T, d1, d2)`` in C order.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if images.ndim != 3:
        raise MovieError(f"images: expected a (T, d1, d2) movie, got shape {images.shape}")
    T, d1, d2 = images.shape
    if T < 2 or d1 < 2 or d2 < 2:
        raise MovieError(f"images: movie of shape {images.shape} is too small for CNMF")
    if images.dtype.kind not in "fiu":
        raise MovieError(f"images: expected a numeric movie, got dtype {images.dtype}")
    if images.flags.f_contiguous and not images.flags.c_contiguous:
        Yr = images.reshape((T, d1 * d2), order="F").T
        return Yr, "pixels", (d1, d2), T
    return images, "frames", (d1, d2), T


def movie_key(images):
    """What identifies the file-backed movie ``images`` between two calls:
    the path, size and modification time of its memory map, and the shape
    and dtype of the view; None for a movie held in memory (its content may
    change between two calls)."""
    fn = getattr(images, "filename", None)
    if not fn or not os.path.exists(fn):
        return None
    st = os.stat(fn)
    return (os.path.realpath(fn), st.st_size, st.st_mtime_ns, tuple(images.shape),
            str(images.dtype))


def support_entries(idx, d):
    """The entries of padded support rows ``idx`` (K, L) that are pixels
    (padding is ``d``): their flat positions, pixels and rows."""
    flat = idx.reshape(-1)
    ent = torch.nonzero(flat < d).flatten()
    return ent, flat[ent], ent // idx.shape[1]


def add_entry_products(out, ent, row, pix, C, Y):
    """``out[e] += C[row_e] . Y[pix_e]`` for a pixel-major chunk ``Y`` (pixels,
    n) and the chunk's traces ``C`` (K, n), gathering at most ~2^24 values
    at a time."""
    step = max(1, (1 << 24) // max(Y.shape[1], 1))
    for e0 in range(0, ent.numel(), step):
        sl = slice(e0, e0 + step)
        out[ent[sl]] += (C[row[sl]] * Y[pix[sl]]).sum(1)


class MovieMatrix:
    """Pixels x T view of a movie (or of one rectangular patch of it).

    Parameters
    ----------
    images : array (T, d1, d2), or the (d, T) matrix when ``dims`` is given
        np.memmap or ndarray. A Fortran-ordered (T, d1, d2) view of a
        pixels x T memory map is used in place.
    device : torch.device
    region : Region, optional
        Restrict to a patch; pixel order is the patch's own Fortran order.
    block_pixels : int
        Upper bound on pixels per block (``block_size * num_blocks_per_run``).
    memory_fact : float
        CaImAn's knob scaling the memory budget.
    exclude : array of int, optional
        Pixels (local Fortran indices) read as zero, e.g. saturated ones.
    dims : tuple, optional
        Given with a (d, T) ``images`` meaning it is already ``Yr``.
    resident : bool or None
        Keep device blocks between passes; None decides from the budget.
    """

    def __init__(self, images, device="cpu", region=None, block_pixels=100_000,
                 memory_fact=1.0, exclude=None, dims=None, resident=None):
        self.device = torch.device(device)
        if dims is not None:
            arr = images
            if arr.ndim != 2:
                raise MovieError(f"Yr: expected a (pixels, T) matrix, got shape {arr.shape}")
            self._src, self.layout = arr, "pixels"
            self.full_dims, self.T = tuple(int(x) for x in dims), int(arr.shape[1])
            if int(np.prod(self.full_dims)) != arr.shape[0]:
                raise MovieError(f"Yr: {arr.shape[0]} pixels do not match dims {dims}")
        else:
            self._src, self.layout, self.full_dims, self.T = as_pixel_matrix(images)
        # reads of a memory-mapped movie count as passes over it (backend.movie_io)
        self.on_disk = isinstance(self._src, np.memmap)
        d1, d2 = self.full_dims
        self.region = region if region is not None else Region(0, d1, 0, d2)
        self.dims = self.region.dims
        self.d = int(np.prod(self.dims))
        self.memory_fact = memory_fact
        self.block_pixels = int(block_pixels)
        self.exclude = None
        if exclude is not None and len(exclude):
            keep = torch.ones(self.d, dtype=torch.bool)
            keep[torch.as_tensor(np.asarray(exclude, dtype=np.int64))] = False
            self.exclude = keep.to(self.device)
        budget = memory_budget(self.device, memory_fact=memory_fact)
        # a block costs its float32 copy plus the host staging buffer
        by_budget = max(1, budget // (self.T * 4 * 4))
        h = self.dims[0]
        n_pix = int(min(block_pixels, by_budget))
        self.cols_per_block = max(1, n_pix // h)
        total = self.d * self.T * 4
        if resident is None:
            resident = (self.device.type == "cuda"
                        and total <= _RESIDENT_FRACTION * budget)
        self.resident = bool(resident)
        self._cache = None
        self._cache_kind = None
        self._pinned = None
        self._perm = None
        # frame chunks for frame-major movies: same bytes as a pixel block
        self.frames_per_block = max(1, int(min(block_pixels, by_budget) * self.T // max(self.d, 1)))

    # ------------------------------------------------------------------ reads
    def _host_block(self, j0, j1):
        """Block of image columns j0:j1 as a host array (n_pix, T)."""
        r = self.region
        h = self.dims[0]
        if self.on_disk:
            count_movie_io(read=(j1 - j0) * h * self.T)
        if self.layout == "pixels":
            d1 = self.full_dims[0]
            if r.y0 == 0 and r.y1 == d1:
                a = (r.x0 + j0) * d1
                return self._src[a:a + (j1 - j0) * d1]
            ii = np.arange(r.y0, r.y1)
            jj = np.arange(r.x0 + j0, r.x0 + j1)
            idx = (ii[:, None] + jj[None, :] * d1).ravel(order="F")
            return self._src[idx]
        chunk = self._src[:, r.y0:r.y1, r.x0 + j0:r.x0 + j1]      # (T, h, nj)
        return np.ascontiguousarray(chunk.transpose(2, 1, 0)).reshape((j1 - j0) * h, self.T)

    def _host_frames(self, t0, t1):
        """Frames t0:t1 of the region, (n, h * w) in the region's C order."""
        r = self.region
        if self.on_disk:
            count_movie_io(read=(t1 - t0) * self.d)
        chunk = self._src[t0:t1, r.y0:r.y1, r.x0:r.x1]
        return np.ascontiguousarray(chunk).reshape(t1 - t0, -1)

    def _to_device(self, host, slot):
        if isinstance(host, torch.Tensor):      # a movie already in torch (a CNMF-E patch)
            return host.to(self.device, torch.float32)
        if host.dtype == np.float64 or host.dtype.kind in "iu":
            host = host.astype(np.float32)
        if self.device.type == "cpu":
            if not host.flags.c_contiguous:
                host = np.ascontiguousarray(host, dtype=np.float32)
            # blocks are only ever read: a read-only memory map is used in place
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(host)
            return t if t.dtype == torch.float32 else t.float()
        # GPU: stage in a pinned buffer so the copy is asynchronous
        n = host.shape[0] * host.shape[1]
        if self._pinned is None or self._pinned[0].numel() < n:
            self._pinned = [pinned_empty((n,), torch.float32, self.device) for _ in range(2)]
            self._events = [None, None]
        if self._events[slot] is not None:
            self._events[slot].synchronize()
        buf = self._pinned[slot][:n].view(host.shape)
        buf.numpy()[...] = host
        t = buf.to(self.device, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self._events[slot] = ev
        return t

    def blocks(self):
        """Yield ``(p0, p1, Yblock)``: local pixel range and a float32
        (p1 - p0, T) tensor on the device (excluded pixels zeroed)."""
        if self._cache is not None and self._cache_kind == "pixels":
            yield from self._cache
            return
        h, w = self.dims
        store = [] if (self.resident and self.layout == "pixels") else None
        for n, j0 in enumerate(range(0, w, self.cols_per_block)):
            j1 = min(w, j0 + self.cols_per_block)
            t = self._to_device(self._host_block(j0, j1), n % 2)
            p0, p1 = j0 * h, j1 * h
            if self.exclude is not None:
                t = t * self.exclude[p0:p1, None]
            if store is not None:
                store.append((p0, p1, t))
            yield p0, p1, t
        if store is not None:
            self._cache, self._cache_kind = store, "pixels"

    def frame_blocks(self):
        """Yield ``(t0, t1, Yf)``: frames t0:t1 as a (n, d) tensor with
        pixels in the region's C order (frame-major movies only)."""
        if self._cache is not None and self._cache_kind == "frames":
            yield from self._cache
            return
        store = [] if self.resident else None
        for n, t0 in enumerate(range(0, self.T, self.frames_per_block)):
            t1 = min(self.T, t0 + self.frames_per_block)
            t = self._to_device(self._host_frames(t0, t1), n % 2)
            if store is not None:
                store.append((t0, t1, t))
            yield t0, t1, t
        if store is not None:
            self._cache, self._cache_kind = store, "frames"

    def frames(self, t0, t1):
        """Frames ``t0:t1`` of the region as a float32 (d, t1 - t0) tensor on
        the device, pixels in the region's Fortran order (excluded pixels
        zeroed): the chunk a per-frame computation reads."""
        r = self.region
        if self.on_disk:
            count_movie_io(read=(t1 - t0) * self.d)
        if self.layout == "pixels":
            d1 = self.full_dims[0]
            if r.y0 == 0 and r.y1 == d1:
                host = self._src[r.x0 * d1:r.x1 * d1, t0:t1]
            else:
                host = self._src[r.pixel_index(d1), t0:t1]
        else:
            chunk = self._src[t0:t1, r.y0:r.y1, r.x0:r.x1]            # (n, h, w)
            host = chunk.transpose(2, 1, 0).reshape(self.d, t1 - t0)
        if not isinstance(host, torch.Tensor):
            host = np.ascontiguousarray(host)
        t = self._to_device(host, 0)
        return t * self.exclude[:, None] if self.exclude is not None else t

    def _region_exclude(self, region):
        """Local indices, in ``region``, of the pixels this matrix excludes."""
        if self.exclude is None:
            return None
        index = torch.as_tensor(region.pixel_index(self.full_dims[0]), device=self.device)
        return torch.nonzero(~self.exclude[index]).flatten().cpu().numpy()

    def sub(self, region, device=None):
        """The pixels of ``region`` (a :class:`Region` of the full field, which
        this matrix covers) as a :class:`MovieMatrix` reading the same
        source, on ``device`` (this matrix's by default)."""
        return MovieMatrix(self._src, self.device if device is None else device, region=region,
                           dims=self.full_dims if self.layout == "pixels" else None,
                           block_pixels=self.block_pixels, memory_fact=self.memory_fact,
                           exclude=self._region_exclude(region))

    def load(self, region):
        """The pixels of ``region`` read once into memory on the device, as a
        :class:`MovieMatrix` of their own (a writable copy: a tile of
        :mod:`.tiles`)."""
        host = self.sub(region, "cpu")._host_block(0, region.dims[1])
        # a zero-copy slice of the file is copied; a gathered block is used as is
        host = np.array(host, dtype=np.float32,
                        copy=bool(np.may_share_memory(host, self._src)) or None)
        Y = torch.from_numpy(host).to(self.device)
        return MovieMatrix(Y, self.device, dims=region.dims, block_pixels=self.block_pixels,
                           memory_fact=self.memory_fact, exclude=self._region_exclude(region))

    def subtract(self, A, C):
        """``Y -= A C`` on a movie held in memory (:meth:`load`): ``A``
        (pixels x k, sparse) and ``C`` (k x T) of components fitted
        elsewhere, in blocks of the rows they touch."""
        if A.shape[1] == 0:
            return
        rows = torch.unique(A.coalesce().indices()[0])
        # a quarter of a read block's rows: the tile already holds most of the budget
        n = max(1, self.cols_per_block * self.dims[0] // 4)
        for r0 in range(0, rows.numel(), n):
            r = rows[r0:r0 + n]
            self._src[r] -= fp.matmul(fp.rows(A, r), C)

    def take(self, rows, frames):
        """Values of a movie held in memory (:meth:`load`) at ``rows`` x
        ``frames`` (LongTensors), as a (len(rows), len(frames)) tensor, as
        stored (excluded pixels are not zeroed: they are the file's)."""
        return self._src[rows[:, None], frames[None, :]]

    def _c_order(self):
        """Index turning Fortran-order rows into the region's C order."""
        if self._perm is None:
            h, w = self.dims
            ii = torch.arange(h, device=self.device)
            jj = torch.arange(w, device=self.device)
            self._perm = (ii[:, None] + jj[None, :] * h).reshape(-1)
        return self._perm

    # --------------------------------------------------------------- products
    def AtY(self, A, b=None, b_from_block=None):
        """``[A b]' Y`` for footprints ``A`` (d, K) on the device, dense or
        sparse (:mod:`.footprints`), and optional dense columns ``b``
        (d, nb), in one pass -> (K + nb, T).

        ``b_from_block(p0, p1, Yb)``, optional (pixel-major movies): new
        rows ``p0:p1`` of ``b`` made from each pixel block as it is read,
        and used in the product (a per-pixel update fused into this pass);
        then ``(AtY, b)`` is returned.
        """
        if b_from_block is not None and self.layout != "pixels":
            raise ValueError("b_from_block: needs a pixel-major movie (pixel blocks)")
        if b is not None and b_from_block is None and not fp.is_sparse(A):
            A, b = torch.cat([A, b], 1), None
        nb = 0 if b is None else b.shape[1]
        K = A.shape[1]
        out = torch.zeros((K + nb, self.T), dtype=torch.float32, device=self.device)
        b_new = None if b_from_block is None else torch.zeros_like(b)
        if K + nb == 0:
            return out if b_new is None else (out, b_new)
        if self.exclude is not None:
            A = fp.zero_pixels(A, ~self.exclude)
            b = None if b is None else b * self.exclude[:, None]

        def b_rows(p0, p1, Yb):
            if b_new is None:
                return b[p0:p1]
            bb = b_from_block(p0, p1, Yb)
            if self.exclude is not None:
                bb = bb * self.exclude[p0:p1, None]
            b_new[p0:p1] = bb
            return bb

        if self.layout == "frames":
            perm = self._c_order()
            Ac = fp.rows(A, perm)
            bc = None if b is None else b[perm]
            for t0, t1, Yf in self.frame_blocks():
                out[:K, t0:t1] = fp.t_matmul(Ac, Yf.T)
                if bc is not None:
                    out[K:, t0:t1] = bc.T @ Yf.T
            return out
        sparse_cpu = self.device.type == "cpu" and (
            fp.is_sparse(A) or float((A != 0).float().mean()) < _SPARSE_FILL)
        if sparse_cpu:
            # CPU kernel choice: scipy's sparse product reads only A's support
            As = fp.to_scipy(A).tocsr()
            acc = out.numpy()
            for p0, p1, Yb in self.blocks():
                Yn = Yb.numpy()
                acc[:K] += (As[p0:p1].T @ Yn).astype(np.float32, copy=False)
                if nb:
                    acc[K:] += b_rows(p0, p1, Yb).numpy().T @ Yn
        else:
            for p0, p1, Yb in self.blocks():
                out[:K] += fp.t_matmul(fp.row_block(A, p0, p1), Yb)
                if nb:
                    out[K:] += b_rows(p0, p1, Yb).T @ Yb
        return out if b_new is None else (out, b_new)

    def CYt(self, C):
        """``C Y'`` for ``C`` (K, T) on the device -> (K, d), i.e. ``(Y C')'``."""
        K = C.shape[0]
        if self.layout == "frames":
            outc = torch.zeros((K, self.d), dtype=torch.float32, device=self.device)
            for t0, t1, Yf in self.frame_blocks():
                outc.addmm_(C[:, t0:t1], Yf)
            out = torch.empty_like(outc)
            out[:, self._c_order()] = outc
        else:
            out = torch.empty((K, self.d), dtype=torch.float32, device=self.device)
            for p0, p1, Yb in self.blocks():
                out[:, p0:p1] = C @ Yb.T
        if self.exclude is not None:
            out = out * self.exclude[None, :]
        return out

    def CYt_at(self, C, idx, Cb=None):
        """Entries of ``C Y'`` at given pixels: ``out[r, l] = (C Y')[r, idx[r, l]]``,
        and optionally the whole ``Cb Y'`` of a few more rows, in one pass.

        The spatial update needs ``C Y'`` only on each component's support,
        so the pixels x K product is never formed; the background rows
        ``Cb`` (whole field) come from the same pass.

        Parameters
        ----------
        C : (K, T) tensor
        idx : (K, L) LongTensor of local Fortran pixels, padded with ``d``.
        Cb : (nb, T) tensor, optional

        Returns
        -------
        (K, L) tensor, 0 at the padding and at excluded pixels; with ``Cb``
        also the (nb, d) tensor ``Cb Y'``.
        """
        K, L = idx.shape
        nb = 0 if Cb is None else Cb.shape[0]
        out = torch.zeros(K * L, dtype=torch.float32, device=self.device)
        outb = torch.zeros((nb, self.d), dtype=torch.float32, device=self.device)
        ent, pix, row = support_entries(idx, self.d)
        if self.layout == "frames":
            perm = self._c_order()
            pc = perm.argsort()[pix]                      # C-order position of each entry
            for t0, t1, Yf in self.frame_blocks():
                add_entry_products(out, ent, row, pc, C[:, t0:t1], Yf.T)
                if nb:
                    outb[:, perm] += Cb[:, t0:t1] @ Yf
        elif ent.numel() or nb:
            order = torch.argsort(pix)
            pix_s, row_s, ent_s = pix[order], row[order], ent[order]
            slot = torch.empty(K, dtype=torch.long, device=self.device)
            # pixels per product: only the components with entries there take
            # part, and the (components x pixels) product stays ~64 MB
            sub = max(self.dims[0], (1 << 24) // max(K, 1))
            for p0, p1, Yb in self.blocks():
                if nb:
                    outb[:, p0:p1] = Cb @ Yb.T
                for s0 in range(p0, p1, sub):
                    s1 = min(p1, s0 + sub)
                    a, b = (int(x) for x in torch.searchsorted(
                        pix_s, torch.tensor([s0, s1], device=pix_s.device)))
                    if a == b:
                        continue
                    rows = torch.unique(row_s[a:b])
                    slot[rows] = torch.arange(rows.numel(), device=self.device)
                    Ub = C[rows] @ Yb[s0 - p0:s1 - p0].T            # (rows, s1 - s0)
                    out[ent_s[a:b]] = Ub[slot[row_s[a:b]], pix_s[a:b] - s0]
        if self.exclude is not None:
            out[ent] *= self.exclude[pix]
            outb *= self.exclude[None, :]
        return out.view(K, L) if Cb is None else (out.view(K, L), outb)

    def release(self):
        """Drop resident device blocks and staging buffers."""
        self._cache = None
        self._cache_kind = None
        self._pinned = None
