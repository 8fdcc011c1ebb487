"""Synthetic footprints of cells and of artefacts, to train and test the CNN.

Cells are smooth compact bumps ``(1 - q/2n)_+^n`` of an elliptic distance
``q`` (the footprints of :mod:`gpu_cnmf.synthetic`; ``n`` from 2 for compact
2p somata to 12 for blurry 1p ones, or a Gaussian), of size 0.65-1.5 ``gSig``
and aspect up to 1.7, some with a dim nucleus, a faint neighbour, speckle, a
support threshold, or cut by the edge of the field of view, as CNMF returns
them. Artefacts are what CNMF also returns and a curator rejects:

- ``noise``: patchy blobs of thresholded smooth noise;
- ``fragment``: the smaller part of a cell cut by a line (down to a thin
  sliver of its edge), or a sector of it, inside the field of view;
- ``pair``: two cells merged into one footprint;
- ``streak``: thin elongated or curved segments (dendrites, vessels, edges);
- ``small``: specks much smaller than a neuron;
- ``large``: diffuse blobs much larger than a neuron (background).

Each sample is drawn on its own small canvas, which is its field of view.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ARTEFACTS", "make_footprint_set", "cell_footprint", "artefact_footprint"]

ARTEFACTS = ("noise", "fragment", "pair", "streak", "small", "large")

try:  # the movie simulator's footprint shape, when that module is present
    from ..synthetic import footprint_values as _synthetic_values
except Exception:  # pragma: no cover - fallback keeps this module standalone
    _synthetic_values = None


def _bump(yy, xx, center, sigmas, angle, order):
    if order is not None and _synthetic_values is not None:
        try:
            return _synthetic_values(yy, xx, center, sigmas, angle, order)
        except TypeError:
            pass
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dy + s * dx, -s * dy + c * dx
    q = (u / sigmas[0]) ** 2 + (v / sigmas[1]) ** 2
    if order is None:
        return np.exp(-q / 2)
    return np.clip(1 - q / (2 * order), 0, None) ** order


def _grid(n):
    yy, xx = np.meshgrid(np.arange(n, dtype=float), np.arange(n, dtype=float),
                         indexing="ij")
    return yy, xx


def _order(rng):
    return [2, 3, 4, 4, 6, 8, 12, None][rng.integers(8)]


def _cell(rng, yy, xx, center, g, scale=(0.65, 1.5), max_aspect=1.7):
    s = g * rng.uniform(*scale)
    aspect = rng.uniform(1, max_aspect)
    sig = (s * np.sqrt(aspect), s / np.sqrt(aspect))
    img = _bump(yy, xx, center, sig, rng.uniform(0, np.pi), _order(rng))
    if rng.random() < 0.3:  # nucleus excluded from the indicator: a dim centre
        r2 = ((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (0.45 * s) ** 2
        img = img * (1 - rng.uniform(0.2, 0.6) * np.exp(-r2 / 2))
    return img, s


def _finish(rng, img, speckle=True):
    """Estimation noise, then CNMF-like thresholding of the support."""
    m = img.max()
    if m <= 0:
        return img
    img = img / m
    support = img > 0.02
    if speckle:
        img = img * (1 + rng.uniform(0, 0.2) * rng.standard_normal(img.shape))
        halo = support | (np.roll(support, 1, 0) | np.roll(support, -1, 0)
                          | np.roll(support, 1, 1) | np.roll(support, -1, 1))
        img = img + halo * rng.uniform(0, 0.06) * np.abs(rng.standard_normal(img.shape))
    img = np.clip(img, 0, None)
    img[img < rng.uniform(0, 0.2) * img.max()] = 0
    return img / max(img.max(), 1e-12)


def cell_footprint(rng, g: float, border_cut: bool = False):
    """One cell on a canvas; returns (image, fov_shape)."""
    n = 2 * int(np.ceil(6 * g)) + 1
    yy, xx = _grid(n)
    c0 = (n - 1) / 2
    center = (c0 + rng.uniform(-1, 1), c0 + rng.uniform(-1, 1))
    img, s = _cell(rng, yy, xx, center, g)
    if rng.random() < 0.3:  # faint spill-over of a neighbour
        ang = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(2.0, 3.0) * s
        other, _ = _cell(rng, yy, xx, (center[0] + d * np.sin(ang),
                                       center[1] + d * np.cos(ang)), g)
        img = img + rng.uniform(0.05, 0.2) * other
    img = _finish(rng, img)
    if border_cut:
        # the field of view ends between 0.3 and 1.5 sizes from the centre
        cut = int(round(c0 + rng.uniform(0.3, 1.5) * s))
        img = img[:, : max(cut, int(c0) + 1)]
        img = np.rot90(img, rng.integers(4)).copy()
    return img, img.shape


def artefact_footprint(rng, g: float, kind: str):
    """One artefact of ``kind`` (see :data:`ARTEFACTS`); (image, fov_shape)."""
    n = 2 * int(np.ceil(6 * g)) + 1
    yy, xx = _grid(n)
    c0 = (n - 1) / 2
    center = (c0 + rng.uniform(-1, 1), c0 + rng.uniform(-1, 1))
    if kind == "noise":
        from scipy.ndimage import gaussian_filter
        fld = gaussian_filter(rng.standard_normal((n, n)), rng.uniform(0.4, 1.3))
        r2 = ((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (rng.uniform(1.2, 3.5) * g) ** 2
        fld = fld * np.exp(-r2 / 2)
        img = np.clip(fld - np.quantile(fld, rng.uniform(0.8, 0.97)), 0, None)
        return _finish(rng, img, speckle=False), (n, n)
    if kind == "fragment":
        img, s = _cell(rng, yy, xx, center, g)
        ang = rng.uniform(0, 2 * np.pi)
        u = (yy - center[0]) * np.sin(ang) + (xx - center[1]) * np.cos(ang)
        if rng.random() < 0.6:  # cut by a line: from half the cell to a sliver
            keep = u > rng.uniform(0.0, 1.6) * s
        else:                    # a sector of 40-130 degrees
            theta = np.arctan2(yy - center[0], xx - center[1])
            width = np.deg2rad(rng.uniform(40, 130))
            keep = np.abs(np.angle(np.exp(1j * (theta - ang)))) < width / 2
        piece = img * keep
        if piece.max() < 0.05 * img.max():   # cut beyond the cell's edge
            piece = img * (u > 0)
        return _finish(rng, piece), (n, n)
    if kind == "pair":
        img, s = _cell(rng, yy, xx, center, g, scale=(0.6, 1.2))
        ang = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(2.5, 3.8) * s
        c2 = (center[0] + d * np.sin(ang), center[1] + d * np.cos(ang))
        other, _ = _cell(rng, yy, xx, c2, g, scale=(0.6, 1.2))
        return _finish(rng, img + rng.uniform(0.45, 1.0) * other), (n, n)
    if kind == "streak":
        if rng.random() < 0.5:
            L = g * rng.uniform(2.5, 6)
            w = g * rng.uniform(0.2, 0.55)
            img = _bump(yy, xx, center, (L, w), rng.uniform(0, np.pi), _order(rng))
        else:  # a curved thin process
            t = np.linspace(-1, 1, 60)
            L = g * rng.uniform(3, 6)
            ang, bend = rng.uniform(0, np.pi), rng.uniform(-1.2, 1.2)
            py = center[0] + L * (t * np.sin(ang) + bend * 0.3 * t * t * np.cos(ang))
            px = center[1] + L * (t * np.cos(ang) - bend * 0.3 * t * t * np.sin(ang))
            w = g * rng.uniform(0.2, 0.5)
            d2 = np.min((yy[..., None] - py) ** 2 + (xx[..., None] - px) ** 2, axis=-1)
            img = np.exp(-d2 / (2 * w * w))
        return _finish(rng, img), (n, n)
    if kind == "small":
        s = g * rng.uniform(0.1, 0.33)
        img = _bump(yy, xx, center, (s, s * rng.uniform(0.7, 1)), rng.uniform(0, np.pi), None)
        return _finish(rng, img), (n, n)
    if kind == "large":
        m = 2 * int(np.ceil(14 * g)) + 1
        yy, xx = _grid(m)
        c1 = (m - 1) / 2
        s = g * rng.uniform(2.6, 4.5)
        img = _bump(yy, xx, (c1, c1), (s * rng.uniform(1, 1.5), s), rng.uniform(0, np.pi),
                    _order(rng))
        if rng.random() < 0.5:
            from scipy.ndimage import gaussian_filter
            tex = gaussian_filter(rng.standard_normal((m, m)), g)
            img = img * np.clip(1 + 3 * tex / (tex.std() + 1e-12) * 0.3, 0, None)
        return _finish(rng, img), (m, m)
    raise ValueError(f"kind: expected one of {ARTEFACTS}, got {kind!r}")


def make_footprint_set(n: int, seed: int = 0, gsig_range=(2.0, 8.0),
                       border_fraction: float = 0.15):
    """A balanced labelled set of ``n`` footprints.

    Returns
    -------
    dict with ``rows, cols, vals, comp`` (entries of all footprints),
    ``gSig`` (n, 2), ``fov`` (n, 2), ``labels`` (n,) 1 = cell,
    ``kinds`` (n,) 'cell' or the artefact name.
    """
    rng = np.random.default_rng(seed)
    rows, cols, vals, comp = [], [], [], []
    gsig, fov, labels, kinds = [], [], [], []
    for i in range(n):
        g = float(np.exp(rng.uniform(np.log(gsig_range[0]), np.log(gsig_range[1]))))
        if i % 2 == 0:
            img, shape = cell_footprint(rng, g, border_cut=rng.random() < border_fraction)
            labels.append(1), kinds.append("cell")
        else:
            kind = ARTEFACTS[(i // 2) % len(ARTEFACTS)]
            img, shape = artefact_footprint(rng, g, kind)
            labels.append(0), kinds.append(kind)
        r, c = np.nonzero(img)
        rows.append(r), cols.append(c), vals.append(img[r, c].astype(np.float32))
        comp.append(np.full(len(r), i))
        gsig.append((g, g)), fov.append(shape)
    return {"rows": np.concatenate(rows), "cols": np.concatenate(cols),
            "vals": np.concatenate(vals), "comp": np.concatenate(comp),
            "gSig": np.array(gsig), "fov": np.array(fov), "labels": np.array(labels),
            "kinds": np.array(kinds)}
