"""CNMF-E's rounds on the ring background, in tiles: the movie read about once.

After its patches CNMF-E refines the components in rounds of spatial and
temporal updates on ``Y - B`` with the ring weights ``W`` kept
(:func:`.cnmfe.refine_on_ring`), and a refit runs more such rounds.
Streamed, every update reads the movie and recomputes the background of
every frame. But with ``W`` fixed and ``b0 = mean(Y) - A c̄`` (``c̄``: the
traces' temporal means), the background-removed movie is linear in the
components::

    Y - B = Z + A c̄ 1' + G (C - c̄ 1'),   Z = (I - W) Y, centred in time,
                                         G = W A

where ``W`` stands for the whole ring filter (block means over ``ssub_B``,
the ring weights, bilinear upsampling: :func:`.ring_model.ring_fluctuation`).
``Z`` does not depend on the components, and ``G``, the footprints seen
through the ring, is as sparse as a ring around each footprint. So the field
is cut into tiles as for two-photon (:func:`.tiles.plan_tiles`: each tile's
region holds the reach of the components centred in its core), each region
grown by what the ring filter of its pixels reads is read once, frame chunk
by frame chunk, and only ``Z`` on the region is held
(:func:`filtered_movie`). Every round then makes ``Y - B`` there from ``Z``
and the components (:class:`.ring_movie.FilteredRingMovie`).

As in the two-photon tiles, the components of tiles refined before enter a
tile at their refined values, those of later tiles that touch it are fitted
alongside and dropped (unless merged with one of its own), and the
components of other tiles that only reach the tile through the ring enter
through ``G``; they are fixed while the tile is fitted. The same tile gives
each pixel of its core its mean, for the final ``b0``, and keeps the values
of ``Y - B`` that evaluation's spatial correlation reads
(:class:`gpu_cnmf.evaluation.spatial.MovieSamples`), so evaluation reads
nothing. With one tile (the movie fits the budget) this is the streamed
rounds exactly, with the movie read once.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..backend import memory_budget
from ..evaluation.spatial import MovieSamples
from ..progress import tick
from . import footprints as fp
from .engine import merge_step, spatial_step, temporal_step
from .products import MovieMatrix, Region
from .ring_model import RingModel, ring_fluctuation
from .ring_movie import CHUNK_COPIES, FilteredRingMovie
from .tiles import _COPIES, _core_rows, _kept, _local, _sample, _touching, plan_tiles, \
    reaching, sweep

# Components filtered by the ring at once (a dense region x batch block).
_FILTER_BATCH = 64


def round_plan(n_rounds, spatial=True):
    """CNMF-E's rounds after initialisation as ``(spatial, merge)`` pairs: a
    spatial and a temporal update, then merging, except after the last
    round (one temporal update only when ``spatial`` is False)."""
    if not spatial:
        return [(False, False)]
    n = max(1, int(n_rounds))
    return [(True, i < n - 1) for i in range(n)]


def run_rounds(movie_for, model, cfg, rounds, timings, log=None):
    """The rounds of ``rounds`` (:func:`round_plan`) on ``movie_for(model)``,
    ``Y - B`` for the current components; ``model`` is updated in place.
    ``log``: the name of the log lines (None: no lines)."""
    t0 = time.perf_counter()
    for spatial, merge in rounds:
        mc = movie_for(model)
        if spatial:
            spatial_step(mc, model, cfg)
            t0 = tick(timings, "spatial", t0, log, model.K)
        temporal_step(mc, model, cfg)
        t0 = tick(timings, "temporal", t0, log, model.K)
        mc.release()
        if merge and cfg["merge"]["do_merge"]:
            merge_step(model, cfg)
            t0 = tick(timings, "merge", t0, log, model.K)
    return model


# --------------------------------------------------------------------------
# geometry of the ring filter on a piece of the field

def read_region(region, dims, ring):
    """The pixels the ring filter of ``region``'s pixels reads: their grid
    cells (and the next ones, for the bilinear upsampling) grown by the
    ring's radius on the grid, on whole cells of the field's grid."""
    s = int(ring.ssub_B)
    m = int(np.abs(ring.offsets).max()) + 1
    d1, d2 = dims

    def span(lo, hi, n):
        c0 = max(0, lo // s - m)
        c1 = min(-(-n // s), (hi - 1) // s + m + 1)
        return c0 * s, min(n, c1 * s)

    y0, y1 = span(region.y0, region.y1, d1)
    x0, x1 = span(region.x0, region.x1, d2)
    return Region(y0, y1, x0, x1)


def local_ring(ring, read):
    """The ring model of the field restricted to ``read`` (a region on
    whole grid cells, :func:`read_region`): exact for the pixels the
    region was grown for."""
    s = int(ring.ssub_B)
    w = ring.weights[read.x0 // s:-(-read.x1 // s), read.y0 // s:-(-read.y1 // s)]
    return RingModel(w.contiguous(), ring.offsets, read.dims, s, ring.radius)


def _inside(inner, outer):
    """Fortran indices, within ``outer``, of ``inner``'s pixels (in
    ``inner``'s own Fortran order)."""
    return Region(inner.y0 - outer.y0, inner.y1 - outer.y0, inner.x0 - outer.x0,
                  inner.x1 - outer.x0).pixel_index(outer.dims[0])


def filter_footprints(lring, A, rows):
    """``G = W A`` on the rows ``rows`` of the ring's piece, for footprints
    ``A`` on the piece's pixels (sparse, (d_piece, K)); sparse (len(rows), K)."""
    K, dev = A.shape[1], A.device
    parts = []
    for k0 in range(0, K, _FILTER_BATCH):
        k1 = min(K, k0 + _FILTER_BATCH)
        sel = torch.zeros(K, dtype=torch.bool, device=dev)
        sel[k0:k1] = True
        X = fp.to_dense(fp.select(A, sel))
        parts.append(fp.to_sparse(ring_fluctuation(lring, X)[rows]))
    if not parts:
        return fp.to_sparse(torch.zeros((rows.numel(), 0), device=dev))
    return fp.cat(*parts)


def filtered_movie(src, lring, rows, budget):
    """``Z = (I - W) Y`` on the rows ``rows`` of the piece ``src`` reads,
    centred in time, from one read of the piece, frame chunk by frame
    chunk; and the temporal mean of ``Y`` on those rows.

    Parameters
    ----------
    src : MovieMatrix
        The read region.
    lring : RingModel
        :func:`local_ring` of that region.
    rows : LongTensor
        Where the pixels to keep lie in it.
    budget : int
        Bytes; ``Z`` is held whole, the chunks take what it leaves.

    Returns
    -------
    Z : (len(rows), T) tensor, Ymean : (len(rows),) tensor
    """
    T, dev = src.T, src.device
    Z = torch.empty((rows.numel(), T), dtype=torch.float32, device=dev)
    left = max(0, budget - Z.numel() * 4)
    step = int(max(1, min(T, left // (CHUNK_COPIES * 4 * src.d))))
    Ysum = torch.zeros(rows.numel(), dtype=torch.float64, device=dev)
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        Y = src.frames(t0, t1)
        Z[:, t0:t1] = (Y - ring_fluctuation(lring, Y))[rows]
        Ysum += Y[rows].sum(1, dtype=torch.float64)
        del Y
    Z -= Z.mean(1, keepdim=True)
    return Z, (Ysum / T).float()


# --------------------------------------------------------------------------
# one tile

def _ring_tile(mm, tile, model, ring, owner, i, refined, Ymean, samples, cfg, rounds,
               budget):
    """Tile ``i`` (see the module docstring): its own components refined
    (whole-field footprints), its core's pixel means written into
    ``Ymean``, its samples added; returns the refined components and the
    ids of the later tiles' components that its merges took in."""
    dev, d1 = mm.device, mm.full_dims[0]
    index = torch.as_tensor(tile.region.pixel_index(d1), device=dev)
    read_index = torch.as_tensor(tile.read.pixel_index(d1), device=dev)
    rows = torch.as_tensor(_inside(tile.region, tile.read), device=dev)
    lring = local_ring(ring, tile.read)
    left = budget - (model.K + 1) * mm.T * 4 * 4      # the traces and their updates
    Z, ymean = filtered_movie(mm.sub(tile.read), lring, rows, left)
    core = _core_rows(tile).to(dev)
    Ymean[index[core]] = ymean[core]

    own = owner == i
    fitted = own | ((owner > i) & _touching(model.A, index))
    later = (owner > i) & ~fitted & _touching(model.A, read_index)
    # fixed while the tile is fitted: later tiles' components that reach the
    # read region but are not fitted here, and earlier tiles' refined ones
    A_f, C_f = reaching(read_index, [(fp.select(model.A, later), model.C[later])]
                        + [(m.A, m.C) for m in refined])
    # the fixed components leave the data: Y - B - A_f C_f on the region
    G_f = filter_footprints(lring, A_f, rows)
    A_fr = fp.rows(A_f, rows)
    Zm = MovieMatrix(Z, dev, dims=tile.region.dims, memory_fact=mm.memory_fact)
    Zm.subtract((A_fr - G_f).coalesce(), C_f - C_f.mean(1, keepdim=True))
    del G_f

    local = _local(model, fitted, index)
    step = max(1, int(left - Z.numel() * 4) // (CHUNK_COPIES * 4 * Z.shape[0]))

    def movie_for(m):
        G = filter_footprints(lring, fp.embed(m.A, rows, tile.read.dims[0] * tile.read.dims[1]),
                              rows)
        return FilteredRingMovie(Z, tile.region.dims, m.A, m.C, G, step)

    run_rounds(movie_for, local, cfg, rounds, local.timings)
    final = movie_for(local)
    keep, consumed, groups = _kept(local, own)
    local.select(keep)
    local.merged_ROIs = groups
    _sample(samples, final, local.A, local.C, index, (A_fr, C_f))
    local.A = fp.embed(local.A, index, mm.d)
    local.b = local.f = None
    return local, consumed


def refine_on_ring_tiled(mm, model, ring, cfg, rounds, timings):
    """:func:`run_rounds` on ``Y - B`` of an on-disk movie in tiles, reading
    it about once (see the module docstring).

    Parameters
    ----------
    mm : MovieMatrix
        The whole field, memory-mapped.
    model : Model
        On the whole field (``A`` sparse); ``b``, ``f`` empty.
    ring : RingModel
        ``W`` kept; ``ring.b0`` is set for the refined components.
    cfg : dict of parameter groups
    rounds : list of (spatial, merge)
    timings : dict

    Returns
    -------
    Model (with ``samples``), or None when no tiling reads the movie less
    than ``tiles._MAX_READS`` times (then the rounds stream).
    """
    budget = memory_budget(mm.device, memory_fact=mm.memory_fact)
    dims = mm.full_dims
    tiles = plan_tiles(model.A, dims, budget // (mm.T * 4 * _COPIES), cfg["spatial"],
                       grow=lambda r: read_region(r, dims, ring))
    if tiles is None:
        return None
    Ymean = torch.zeros(mm.d, dtype=torch.float32, device=mm.device)
    samples = MovieSamples(mm.T)
    out = sweep(tiles, model, cfg, None, "CNMF-E rounds in tiles",
                lambda i, tile, owner, refined: _ring_tile(mm, tile, model, ring, owner, i,
                                                           refined, Ymean, samples, cfg,
                                                           rounds, budget))
    for k, v in out.timings.items():
        timings[k] = timings.get(k, 0.0) + v
    ring.b0 = Ymean - fp.matmul(out.A, out.C.mean(1, keepdim=True))[:, 0]
    out.samples = samples.finish()
    return out
