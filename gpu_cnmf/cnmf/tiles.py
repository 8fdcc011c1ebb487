"""The whole-field refinement in tiles: the movie read about once.

CaImAn's refit (:func:`.engine.refine`: spatial, temporal, merge, spatial
and temporal updates on the whole field) reads the movie once per update:
four passes, five with the background and trace update that ends its fit on
patches. Yet a piece of the field holds all those updates need for the
components whose centre lies in it (its *own*): their footprints, the
pixels the two spatial updates may grow them into, and those pixels'
background. So the field is cut into the fewest square tiles that fit the
memory budget once grown by their own components' reach (:func:`plan_tiles`),
and each tile is read into memory once. There, the components of tiles
refined before that reach into it are subtracted at their refined values
(one block Gauss-Seidel sweep); those of tiles still to come are fitted
alongside, cut to the tile, and their results dropped (as in the patches'
overlaps), or, when a merge joins one to an own component, kept as part of
it. The updates then run in memory: background and traces refitted, then
the refit's sequence. The background traces ``f`` stay the whole field's:
each tile refits its core's rows of ``b`` to them and computes its
components' residual traces ``YrA`` against them. Components of different
tiles that should still merge are merged last, from their traces. Each
tile also keeps the movie's values that evaluation's spatial correlation
will read (each component's support at its active frames:
:class:`gpu_cnmf.evaluation.spatial.MovieSamples`), so evaluation reads
nothing.

When the movie fits the budget the one tile is the whole field, and this is
exactly the fit's last update and CaImAn's refit, with the movie read once.
A movie already in memory is refined in place, and when every tiling would
read more than four times the field (a budget too small for more than a
sliver of pixels x T) the updates stream over it, a pass each.

Passes: the tiles' areas over the field's; 1.24 at 512 x 512 x 6,000 under
a 2 GiB limit (nine tiles; ``benchmarks/RESULTS.md``, issue 13).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..backend import memory_budget
from ..evaluation.spatial import ATHRESH, MovieSamples, active_frames
from ..progress import log_step
from . import footprints as fp
from .engine import Model, merge_step, refine, temporal_step
from .merging import find_merges
from .products import Region
from .spatial import background_and_AtY, expand_supports
from .temporal import residual_traces

# A tile holds its pixels x T float32 copy and, at most, a quarter as much
# again in the updates' blocks and products and the neighbours' subtraction.
_COPIES = 1.25
# Tilings that read the movie more often than this are not worth their
# margins (the streamed refit reads it five times).
_MAX_READS = 4.0


@dataclass(frozen=True)
class Tile:
    """A piece of the field: ``core`` (the components centred there are its
    own), ``region`` (the core grown by their reach: where they are
    fitted), ``own`` ((K,) bool) and ``read`` (what is read to know the
    data on ``region``: the region itself, or for CNMF-E the region grown
    by the ring, :mod:`.ring_tiles`)."""

    core: Region
    region: Region
    own: torch.Tensor
    read: Region


def reach(A, dims, spatial):
    """(K, 4) bounds ``y0, y1, x0, x1`` (end exclusive) of where each
    component may extend during the refinement: its support expanded as
    the spatial update expands it, twice (there are two updates)."""
    d1, d2 = dims
    K, dev = A.shape[1], A.device
    kw = dict(method_exp=spatial["method_exp"], dist=spatial["dist"],
              expandCore=spatial["expandCore"])
    pix, comp = expand_supports(A, dims, **kw)
    once = fp.coo(torch.stack([pix, comp]), torch.ones(pix.numel(), device=dev), (d1 * d2, K))
    pix, comp = expand_supports(once, dims, **kw)
    y, x = pix % d1, pix // d1
    lo = lambda v, n: torch.full((K,), n, device=dev, dtype=torch.long).scatter_reduce(  # noqa: E731
        0, comp, v, "amin")
    hi = lambda v: torch.zeros(K, device=dev, dtype=torch.long).scatter_reduce(  # noqa: E731
        0, comp, v + 1, "amax")
    return torch.stack([lo(y, d1), hi(y), lo(x, d2), hi(x)], 1)


def _cuts(n, side):
    edges = np.linspace(0, n, -(-n // side) + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def plan_tiles(A, dims, max_pixels, spatial, grow=None):
    """The fewest square tiles whose regions each hold at most
    ``max_pixels`` pixels.

    Parameters
    ----------
    A : (d, K) sparse tensor
    dims : (d1, d2)
    max_pixels : int
    spatial : dict
        The ``spatial`` parameter group (how supports are expanded).
    grow : callable, optional
        ``grow(region) -> Region``: what must be read to know the data on a
        region (by default the region itself); the reads are counted on it.

    Returns
    -------
    list of Tile, or None when every tiling that fits reads more than
    ``_MAX_READS`` times the field (or none fits).
    """
    d1, d2 = dims
    ci, cj = fp.centres(A, dims)
    yi = ci.floor().long().clamp(0, d1 - 1)
    xi = cj.floor().long().clamp(0, d2 - 1)
    box = reach(A, dims, spatial)
    for k in range(1, max(d1, d2) + 1):
        side = -(-max(d1, d2) // k)
        tiles, area = [], 0
        for y0, y1 in _cuts(d1, side):
            for x0, x1 in _cuts(d2, side):
                own = (yi >= y0) & (yi < y1) & (xi >= x0) & (xi < x1)
                b = box[own]
                if b.shape[0]:
                    ry0, ry1 = min(y0, int(b[:, 0].min())), max(y1, int(b[:, 1].max()))
                    rx0, rx1 = min(x0, int(b[:, 2].min())), max(x1, int(b[:, 3].max()))
                else:
                    ry0, ry1, rx0, rx1 = y0, y1, x0, x1
                region = Region(ry0, ry1, rx0, rx1)
                read = region if grow is None else grow(region)
                tiles.append(Tile(Region(y0, y1, x0, x1), region, own, read))
                area += read.dims[0] * read.dims[1]
        if area > _MAX_READS * d1 * d2:
            return None
        if max(t.region.dims[0] * t.region.dims[1] for t in tiles) <= max_pixels:
            return tiles
    return None


def _local(model, sel, index):
    """The components ``sel`` ((K,) bool) and the background, on the tile's
    pixels (``index``: their whole-field indices)."""
    kw = {name: getattr(model, name)[sel] for name in Model._PER_COMPONENT
          if getattr(model, name) is not None}
    return Model(A=fp.rows(fp.select(model.A, sel), index), b=model.b[index].clone(),
                 f=model.f.clone(), sn=model.sn[index],
                 b_mask=None if model.b_mask is None else model.b_mask[index],
                 g_global=model.g_global, **kw)


def _touching(A, index):
    """(K,) bool: components with a pixel among ``index``."""
    return fp.nonempty(fp.rows(A, index))


def reaching(index, parts):
    """Footprints (on the pixels ``index``) and traces of the components of
    ``parts`` (``(A, C)`` pairs on the whole field) that reach those
    pixels: what a tile subtracts or holds fixed."""
    As, Cs = [], []
    for A, C in parts:
        A = fp.rows(A, index)
        hit = fp.nonempty(A)
        As.append(fp.select(A, hit))
        Cs.append(C[hit])
    if not As:
        dev = index.device
        return (fp.to_sparse(torch.zeros((index.numel(), 0), device=dev)),
                torch.zeros((0, 0), device=dev))
    return fp.cat(*As), torch.cat(Cs, 0)


def _originals(groups, i):
    """The starting components that id ``i`` stands for: itself, or for a
    merged component (``-(1 + j)``: group ``j`` of ``groups``) its
    group's members, nested merges expanded."""
    if i >= 0:
        return [i]
    return [m for j in groups[-1 - i] for m in _originals(groups, j)]


def expand_merged(groups):
    """``merged_ROIs`` with every merged id replaced by the starting
    components it stands for."""
    return [[m for i in g for m in _originals(groups, i)] for g in groups]


def _kept(local, own):
    """The tile's results to keep: its own components and the merges that
    took one of them.

    Returns
    -------
    keep : (K_local,) bool tensor
    consumed : list of int
        The other tiles' components those merges took in.
    groups : list of lists
        For each kept merged component, in order, the starting components
        it holds.
    """
    ids = local.ids
    keep = torch.zeros(local.K, dtype=torch.bool, device=ids.device)
    consumed, groups = [], []
    for j in range(local.K):
        members = _originals(local.merged_ROIs, int(ids[j]))
        if any(bool(own[m]) for m in members):
            keep[j] = True
            if int(ids[j]) < 0:
                consumed.extend(m for m in members if not bool(own[m]))
                groups.append(members)
    return keep, consumed, groups


def _renumber(local, offset):
    """Give a tile's kept merged components the ids of their groups among
    all tiles' (``offset`` groups before them); returns the new count."""
    neg = local.ids < 0
    n = int(neg.sum())
    local.ids[neg] = -1 - torch.arange(offset, offset + n, device=local.ids.device)
    return offset + n


def _core_rows(tile):
    """(pixels of the region,) bool: those inside the core."""
    r, c = tile.region, tile.core
    h, w = r.dims
    ii = torch.arange(r.y0, r.y1).repeat(w)
    jj = torch.arange(r.x0, r.x1).repeat_interleave(h)
    return (ii >= c.y0) & (ii < c.y1) & (jj >= c.x0) & (jj < c.x1)


def _cat(parts, model):
    """One whole-field model from the tiles' refined components."""
    rows = {name: torch.cat([getattr(m, name) for m in parts], 0)
            for name in Model._PER_COMPONENT
            if all(getattr(m, name) is not None for m in parts)}
    out = Model(A=fp.cat(*[m.A for m in parts]), b=model.b, f=model.f, sn=model.sn,
                b_mask=model.b_mask, g_global=model.g_global, **rows)
    for m in parts:
        out.merged_ROIs.extend(m.merged_ROIs)
        for k, v in m.timings.items():
            out.timings[k] = out.timings.get(k, 0.0) + v
    return out


def _merge_across(model, tile_of, cfg, p):
    """Merge the correlated touching components that belong to different
    tiles (the tiles merged their own)."""
    m = cfg["merge"]
    groups = [g for g in find_merges(model.A, model.C, m["thr"], m["max_merge_area"])
              if tile_of[g].unique().numel() > 1]
    if groups:
        merge_step(model, cfg, p, groups=groups)


def _sample(samples, mt, A, C, index, neighbours=None):
    """Keep the movie where evaluation's spatial correlation will read it:
    each component's support (``ATHRESH`` of its peak and up) at its active
    frames, from the tile in memory (``neighbours``: the footprints on the
    tile's pixels and traces subtracted from it, added back). Gathered on
    the device, moved to the host once."""
    K = A.shape[1]
    act = active_frames(C)
    pix, comp, val = fp.entries(A)
    peak = torch.zeros(K, device=val.device).scatter_reduce(0, comp, val, "amax")
    sel = val >= ATHRESH * peak[comp]
    pix, comp = pix[sel], comp[sel]
    bounds = torch.searchsorted(comp, torch.arange(K + 1, device=comp.device)).tolist()
    keys, vals = [], []
    for k in range(K):
        p, fr = pix[bounds[k]:bounds[k + 1]], torch.nonzero(act[k]).flatten()
        if not p.numel() or not fr.numel():
            continue
        v = mt.take(p, fr)
        if neighbours is not None and neighbours[0].shape[1]:
            v = v + fp.matmul(fp.rows(neighbours[0], p), neighbours[1][:, fr])
        keys.append(samples.key(index[p], fr).ravel())
        vals.append(v.ravel())
    if keys:
        samples.add(torch.cat(keys).cpu().numpy(), torch.cat(vals).cpu().numpy())


def _first_update(mm, model, cfg, p):
    """The background refitted to the movie, then the traces (one pass, or
    none in memory): the whole-field update that ends CaImAn's fit on
    patches."""
    model.b, AtY = background_and_AtY(mm, model.A, model.b, model.C, model.f, model.b_mask)
    temporal_step(mm, model, cfg, p, AtY=AtY)


def _refine_tile(mm, tile, model, owner, i, refined, b, samples, cfg, p):
    """Tile ``i`` of a sweep (see the module docstring): its own components
    refined (whole-field footprints), its core's rows of ``b`` refitted in
    place, its samples added; returns the refined components and the ids
    of the later tiles' components that merges took in."""
    dev, d1 = mm.device, mm.full_dims[0]
    index = torch.as_tensor(tile.region.pixel_index(d1), device=dev)
    mt = mm.load(tile.region)
    neighbours = reaching(index, [(m.A, m.C) for m in refined])
    mt.subtract(*neighbours)
    own = owner == i
    local = _local(model, own | ((owner > i) & _touching(model.A, index)), index)
    _first_update(mt, local, cfg, p)
    refine(mt, local, cfg, p, log=False)
    b_mask = None if model.b_mask is None else model.b_mask[index]
    b_tile, AtY = background_and_AtY(mt, local.A, b[index], local.C, model.f, b_mask)
    core = _core_rows(tile).to(dev)
    b[index[core]] = b_tile[core]
    local.YrA = residual_traces(AtY, fp.gram(local.A, b_tile),
                                torch.cat([local.C, model.f], 0), local.K)
    keep, consumed, groups = _kept(local, own)
    local.select(keep)
    local.merged_ROIs = groups
    _sample(samples, mt, local.A, local.C, index, neighbours)
    local.A = fp.embed(local.A, index, mm.d)
    local.b = local.f = None
    mt.release()
    return local, consumed


def sweep(tiles, model, cfg, p, what, refine_tile):
    """Refine ``model``'s components tile by tile, then merge those of
    different tiles that should merge.

    Parameters
    ----------
    tiles : list of Tile
    model : Model
        On the whole field; its ``ids`` are set (the starting indices).
    cfg : dict of parameter groups
    p : int or None
        AR order for the merges.
    what : str
        The log lines' name (a line a tile).
    refine_tile : callable
        ``refine_tile(i, tile, owner, refined) -> (local, consumed)``: tile
        ``i``'s own components refined, given each component's tile
        (``owner``, -1 once a merge consumed it) and the tiles refined so
        far; and the ids of the later tiles' components its merges took in.

    Returns
    -------
    Model
        The tiles' components; background and samples are the caller's.
    """
    dev = model.C.device
    owner = torch.full((model.K,), len(tiles), dtype=torch.long, device=dev)
    for i, tile in enumerate(tiles):
        owner[tile.own] = i
    model.ids = torch.arange(model.K, device=dev)
    refined, n_merged = [], 0
    for i, tile in enumerate(tiles):
        t0 = time.perf_counter()
        local, consumed = refine_tile(i, tile, owner, refined)
        if consumed:
            owner[torch.as_tensor(consumed, device=dev)] = -1
        n_merged = _renumber(local, n_merged)
        refined.append(local)
        r = tile.read
        log_step(what, f"tile {i + 1}/{len(tiles)} ({r.dims[0]}x{r.dims[1]} px read)",
                 time.perf_counter() - t0, local.K)
    out = _cat(refined, model)
    if cfg["merge"]["do_merge"]:
        tile_of = torch.cat([torch.full((m.K,), i, device=dev) for i, m in enumerate(refined)])
        _merge_across(out, tile_of, cfg, p)
    out.merged_ROIs = expand_merged(out.merged_ROIs)
    out.ids = None
    return out


def refine_tiled(mm, model, cfg, p=None):
    """The background and traces refitted, then CaImAn's refit
    (:func:`.engine.refine`), reading an on-disk movie about once; see the
    module docstring.

    Parameters
    ----------
    mm : MovieMatrix
        The whole field.
    model : Model
        On the whole field (``A`` sparse).
    cfg : dict of parameter groups
    p : int, optional
        AR order instead of ``temporal['p']``.

    Returns
    -------
    Model
        With ``samples`` (:class:`~gpu_cnmf.evaluation.spatial.MovieSamples`)
        when tiles ran.
    """
    tiles = None
    if mm.on_disk and mm.d == int(np.prod(mm.full_dims)):
        budget = memory_budget(mm.device, memory_fact=mm.memory_fact)
        tiles = plan_tiles(model.A, mm.dims, budget // (mm.T * 4 * _COPIES), cfg["spatial"])
    if tiles is None:
        _first_update(mm, model, cfg, p)
        return refine(mm, model, cfg, p)
    samples = MovieSamples(mm.T)
    if len(tiles) == 1:
        mt = mm.load(tiles[0].region)
        _first_update(mt, model, cfg, p)
        refine(mt, model, cfg, p, log=True)
        _sample(samples, mt, model.A, model.C, torch.arange(mm.d, device=mm.device))
        model.samples = samples.finish()
        mt.release()
        return model

    b = model.b.clone()
    out = sweep(tiles, model, cfg, p, "CNMF refit in tiles",
                lambda i, tile, owner, refined: _refine_tile(mm, tile, model, owner, i, refined,
                                                             b, samples, cfg, p))
    out.b = b
    out.samples = samples.finish()
    return out
