"""Piecewise-rigid registration (NoRMCorre; Pnevmatikakis & Giovannucci 2017):
overlapping patches registered independently around the rigid shift, and
the patch shifts turned into a smooth dense field.

Patches are ``strides + overlaps`` px wide and start every ``strides`` px
(the last one flush with the border). A patch's shift is searched within
``max_deviation_rigid`` px of the frame's rigid shift. The dense field is
made separably: the patch-centre grid is refined ``upsample_factor_grid``
times by cubic (Catmull-Rom) interpolation, then interpolated linearly to
every pixel (constant beyond the outermost nodes), so it is continuous and
has no seams at patch borders.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .registration import RegistrationPlan, make_plan, register_translation

__all__ = ["patch_starts", "patch_grid", "extract_patches", "patch_plan",
           "register_patches", "interpolation_matrix", "shift_field"]


def patch_starts(n: int, stride: int, overlap: int) -> tuple[list[int], int]:
    """Start indices and size of the patches along one axis of length n."""
    size = min(int(stride) + int(overlap), n)
    stride = max(1, int(stride))
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] + size < n:
        starts.append(n - size)
    return starts, size


def patch_grid(dims: Sequence[int], strides: Sequence[int],
               overlaps: Sequence[int]) -> tuple[list[list[int]], list[int], list[torch.Tensor]]:
    """Starts per axis, patch size per axis and patch centres per axis."""
    starts, sizes, centres = [], [], []
    for n, s, o in zip(dims, strides, overlaps):
        st, size = patch_starts(int(n), int(s), int(o))
        starts.append(st)
        sizes.append(size)
        centres.append(torch.tensor([a + (size - 1) / 2 for a in st], dtype=torch.float32))
    return starts, sizes, centres


def extract_patches(frames: torch.Tensor, starts: list[list[int]],
                    sizes: list[int]) -> torch.Tensor:
    """``(n, *dims)`` -> ``(n * P, *sizes)`` with patches in C order of the grid."""
    nd = len(sizes)
    idx = []
    for a in range(nd):
        st = torch.tensor(starts[a], device=frames.device)
        idx.append(st[:, None] + torch.arange(sizes[a], device=frames.device)[None])
    n = frames.shape[0]
    if nd == 2:
        iy, ix = idx
        p = frames[:, iy[:, None, :, None], ix[None, :, None, :]]
    else:
        iy, ix, iz = idx
        p = frames[:, iy[:, None, None, :, None, None], ix[None, :, None, None, :, None],
                   iz[None, None, :, None, None, :]]
    return p.reshape((n * p[0].shape[:nd].numel(),) + tuple(sizes))


def patch_plan(template: torch.Tensor, starts, sizes, filt: torch.Tensor | None = None
               ) -> RegistrationPlan:
    """Registration plan whose template is every patch of ``template``."""
    patches = extract_patches(template[None].float(), starts, sizes)
    return make_plan(patches, len(sizes), filt)


def register_patches(frames: torch.Tensor, plan: RegistrationPlan, starts, sizes,
                     rigid: torch.Tensor, max_deviation_rigid: Sequence[int],
                     upsample_factor: int = 1) -> torch.Tensor:
    """Shift of every patch of every frame, ``(n, *grid, ndim)``.

    Each patch is searched within ``max_deviation_rigid`` of the frame's
    rigid shift ``rigid`` ``(n, ndim)``; all patches of the batch go through
    one FFT and one window search.
    """
    nd = len(sizes)
    n = frames.shape[0]
    grid = [len(s) for s in starts]
    P = math.prod(grid)
    _, spec = plan.spectra(extract_patches(frames, starts, sizes))
    centre = rigid.repeat_interleave(P, dim=0)
    sh = register_translation(spec, plan, max_deviation_rigid, centre=centre,
                              upsample_factor=upsample_factor, cropped=True)
    return sh.reshape([n] + grid + [nd])


def _catmull_rom_matrix(g: int, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine g nodes (positions 0..g-1) ``factor`` times: (G, g) matrix and
    the refined positions in node units."""
    if g == 1 or factor <= 1:
        return torch.eye(g), torch.arange(g, dtype=torch.float32)
    pos = torch.linspace(0, g - 1, (g - 1) * factor + 1)
    M = torch.zeros(pos.numel(), g)
    for r, t in enumerate(pos.tolist()):
        k = min(int(t), g - 2)
        f = t - k
        w = [(-f ** 3 + 2 * f ** 2 - f) / 2, (3 * f ** 3 - 5 * f ** 2 + 2) / 2,
             (-3 * f ** 3 + 4 * f ** 2 + f) / 2, (f ** 3 - f ** 2) / 2]
        for i, wi in zip(range(k - 1, k + 3), w):
            M[r, min(max(i, 0), g - 1)] += wi
    return M, pos


def interpolation_matrix(n: int, centres: torch.Tensor, factor: int) -> torch.Tensor:
    """``(n, g)`` matrix taking patch-centre values to every pixel of an axis."""
    g = centres.numel()
    C, pos = _catmull_rom_matrix(g, factor)
    if g == 1:
        return torch.ones(n, 1)
    # refined node positions in pixels (centres are linear in the node index
    # except the flush last patch: interpolate the centre positions too)
    node_px = torch.from_numpy(
        np.interp(pos.numpy(), range(g), centres.numpy())).float()
    p = torch.arange(n, dtype=torch.float32).clamp(node_px[0], node_px[-1])
    k = torch.searchsorted(node_px, p, right=True).clamp(1, node_px.numel() - 1) - 1
    f = (p - node_px[k]) / (node_px[k + 1] - node_px[k])
    Lm = torch.zeros(n, node_px.numel())
    Lm[torch.arange(n), k] = 1 - f
    Lm[torch.arange(n), k + 1] += f
    return Lm @ C


def shift_field(patch_shifts: torch.Tensor, mats: list[torch.Tensor]) -> torch.Tensor:
    """Dense correcting field ``(n, ndim, *dims)`` from patch shifts
    ``(n, *grid, ndim)`` and per-axis :func:`interpolation_matrix`."""
    nd = patch_shifts.shape[-1]
    s = patch_shifts.movedim(-1, 1)           # (n, ndim, *grid)
    if nd == 2:
        My, Mx = mats
        return torch.einsum("yi,ncij,xj->ncyx", My, s, Mx)
    My, Mx, Mz = mats
    return torch.einsum("yi,ncijk,xj,zk->ncyxz", My, s, Mx, Mz)
