"""Templates: time splits, robust combination, quality metrics."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["split_ranges", "subset_splits", "combine_templates", "crispness",
           "frame_correlations", "search_window", "central_shift", "at_bound",
           "covering_shifts"]

# A shift within this distance (px) of the edge of the search window was
# clipped there (the registration clamps to the window; a free optimum that
# close to the edge is rare and would be flagged correctly anyway).
_BOUND_TOL = 0.05


def split_ranges(n_frames: int, splits: int, num_frames_split: int | None = None
                 ) -> list[tuple[int, int]]:
    """Cut ``range(n_frames)`` into ``splits`` contiguous pieces.

    A piece's mean is a template candidate, so pieces shorter than
    ``num_frames_split`` frames are merged (fewer splits) to keep each mean
    reliable.
    """
    splits = max(1, int(splits))
    if num_frames_split:
        splits = max(1, min(splits, n_frames // max(1, int(num_frames_split))))
    edges = np.linspace(0, n_frames, splits + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def subset_splits(ranges: list, num: int | None) -> list:
    """``num`` splits spread evenly over ``ranges`` (all when None)."""
    if num is None or num >= len(ranges):
        return list(ranges)
    idx = np.linspace(0, len(ranges) - 1, max(1, int(num))).round().astype(int)
    return [ranges[i] for i in sorted(set(idx.tolist()))]


def combine_templates(templates: torch.Tensor) -> torch.Tensor:
    """Pixel-wise median of split templates ``(k, *dims)`` ignoring NaN."""
    if templates.shape[0] == 1:
        return templates[0]
    return torch.nanmedian(templates, dim=0).values


def crispness(image: np.ndarray) -> float:
    """Frobenius norm of the gradient magnitude of the NaN-free mean image
    (higher = sharper; Pnevmatikakis & Giovannucci 2017)."""
    try:
        from ..metrics import crispness as _c  # shared definition when present
        return float(_c(image))
    except ImportError:
        pass
    img = np.nan_to_num(np.asarray(image, dtype=np.float64))
    grads = np.gradient(img)
    return float(np.linalg.norm(np.sqrt(sum(g * g for g in grads))))


def frame_correlations(frames: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each frame with the template over the pixels
    that are finite in both."""
    nd = template.dim()
    f = frames.reshape(frames.shape[0], -1).float()
    t = template.reshape(1, -1).float().expand_as(f)
    ok = torch.isfinite(f) & torch.isfinite(t)
    cnt = ok.sum(1).clamp(min=1)
    f0 = torch.where(ok, f, torch.zeros_like(f))
    t0 = torch.where(ok, t, torch.zeros_like(t))
    fm = f0.sum(1, keepdim=True) / cnt[:, None]
    tm = t0.sum(1, keepdim=True) / cnt[:, None]
    fc = torch.where(ok, f0 - fm, torch.zeros_like(f))
    tc = torch.where(ok, t0 - tm, torch.zeros_like(t))
    num = (fc * tc).sum(1)
    den = torch.sqrt((fc * fc).sum(1) * (tc * tc).sum(1)).clamp(min=1e-20)
    del nd
    return num / den


def search_window(max_shifts, dims) -> tuple[int, ...]:
    """Wider search window for measuring the motion itself.

    Templates are built and checked with ``max(2 m, m + 8)`` px per axis,
    capped at a third of the frame, so that motion beyond the user's
    ``max_shifts`` (chosen from a few frames) is measured rather than
    clipped. Registration is only trusted while the frame and template
    still overlap by most of their area, hence the cap.
    """
    return tuple(max(int(m), min(max(2 * int(m), int(m) + 8), (int(d) - 1) // 3))
                 for m, d in zip(max_shifts, dims))


def central_shift(shifts: torch.Tensor) -> torch.Tensor:
    """Per-axis median of shifts ``(n, ndim)``: the typical position of the
    movie relative to the template (CaImAn's NoRMCorre templates sit where
    the frames they average happen to be; the median is robust to the
    frames that stray furthest)."""
    return torch.median(shifts.float(), dim=0).values


def at_bound(shifts: np.ndarray, max_shifts) -> np.ndarray:
    """Boolean ``(T,)``: frames whose shift reached the search window's edge
    on any axis (their true motion may be larger)."""
    s = np.abs(np.asarray(shifts, dtype=np.float64))
    lim = np.asarray([float(m) for m in max_shifts])
    return np.any(s >= lim - _BOUND_TOL, axis=1)


def covering_shifts(shifts: np.ndarray, margin: int = 1) -> tuple[int, ...]:
    """Smallest integer ``max_shifts`` covering ``|shifts|`` (per axis) with
    ``margin`` px to spare."""
    s = np.abs(np.asarray(shifts, dtype=np.float64)).reshape(-1, np.shape(shifts)[-1])
    return tuple(int(np.ceil(v - _BOUND_TOL)) + int(margin) for v in s.max(0))
