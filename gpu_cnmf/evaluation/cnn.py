"""A small convolutional classifier of footprints: does this look like a cell?

Each footprint is cut out around its centre of mass in a window of
``+/- CROP_SCALE * gSig`` pixels and resampled to 50 x 50, so a neuron of the
expected size always fills the same part of the input. A second input channel
marks which pixels of the window lie inside the field of view, so a cell cut
by the border of the image is not mistaken for a fragment.

The network (:class:`FootprintNet`, ~80k parameters) is trained by
``python -m gpu_cnmf.evaluation.train_cnn`` on synthetic footprints and
artefacts (see :mod:`gpu_cnmf.evaluation.shapes`); the weights ship as
``cnn_classifier.pt`` next to this file, with their input size and version.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from ..backend import get_device, to_numpy
from ..errors import ParameterError

__all__ = ["FootprintNet", "footprint_crops", "crops_from_entries", "load_classifier",
           "classify_crops",
           "predict_cnn", "WEIGHTS_PATH", "INPUT_SIZE", "CROP_SCALE", "MODEL_VERSION"]

INPUT_SIZE = 50
CROP_SCALE = 4.0
MODEL_VERSION = 1
WEIGHTS_PATH = Path(__file__).with_name("cnn_classifier.pt")


class FootprintNet(nn.Module):
    """Three conv/pool stages and a two-layer head; outputs a logit."""

    def __init__(self, widths=(8, 16, 32), hidden: int = 64, size: int = INPUT_SIZE):
        super().__init__()
        layers, c_in, s = [], 2, size
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in, s = w, s // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * s * s, hidden),
                                  nn.ReLU(inplace=True), nn.Dropout(0.2),
                                  nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


def crops_from_entries(rows, cols, vals, comp, K: int, gSig, fov, size: int = INPUT_SIZE,
                       device="cpu") -> torch.Tensor:
    """Network inputs from footprints given as entries (row, col, value, component).

    Parameters
    ----------
    rows, cols, vals, comp : 1D arrays of equal length
        Pixel coordinates, value and component index of each nonzero.
    K : int
        Number of components.
    gSig : (K, 2) array
        Expected neuron half-size per component and axis (px).
    fov : (K, 2) array
        Field-of-view shape each component lives in.

    Returns
    -------
    tensor (K, 2, size, size) float32 on ``device``: the footprint scaled to
    max 1, and the inside-the-field-of-view mask.
    """
    device = torch.device(device)
    out = torch.zeros((K, 2, size, size), dtype=torch.float32, device=device)
    if K == 0:
        return out
    f64 = dict(dtype=torch.float64, device=device)
    r = torch.as_tensor(np.asarray(rows), **f64)
    c = torch.as_tensor(np.asarray(cols), **f64)
    v = torch.as_tensor(np.asarray(vals), **f64).clamp_min(0)
    k = torch.as_tensor(np.asarray(comp), dtype=torch.long, device=device)
    gSig = np.broadcast_to(np.asarray(gSig, dtype=float), (K, 2))
    fov = torch.as_tensor(np.broadcast_to(np.asarray(fov), (K, 2)).copy(),
                          dtype=torch.long, device=device)
    mass = torch.zeros(K, **f64).index_add_(0, k, v)
    cy = torch.zeros(K, **f64).index_add_(0, k, v * r) / mass.clamp_min(1e-30)
    cx = torch.zeros(K, **f64).index_add_(0, k, v * c) / mass.clamp_min(1e-30)
    cy, cx = torch.round(cy).long(), torch.round(cx).long()
    half = np.ceil(CROP_SCALE * gSig).astype(int)
    # components are cut out group by group: one window size per group
    keys = half[:, 0] * 100003 + half[:, 1]
    for key in np.unique(keys):
        sel_np = np.flatnonzero(keys == key)
        h1, h2 = half[sel_np[0]]
        sel = torch.as_tensor(sel_np, device=device)
        slot = torch.full((K,), -1, dtype=torch.long, device=device)
        slot[sel] = torch.arange(len(sel_np), device=device)
        n1, n2 = 2 * h1 + 1, 2 * h2 + 1
        patch = torch.zeros((len(sel_np), n1 * n2), dtype=torch.float32, device=device)
        s = slot[k]
        a = r.long() - cy[k] + h1
        b = c.long() - cx[k] + h2
        ok = (s >= 0) & (a >= 0) & (a < n1) & (b >= 0) & (b < n2)
        flat = a[ok] * n2 + b[ok]
        patch.view(-1).scatter_reduce_(0, s[ok] * (n1 * n2) + flat,
                                       v[ok].to(torch.float32), "amax")
        patch = patch.view(-1, 1, n1, n2)
        ya = cy[sel][:, None] - h1 + torch.arange(n1, device=device)[None]
        xb = cx[sel][:, None] - h2 + torch.arange(n2, device=device)[None]
        iny = (ya >= 0) & (ya < fov[sel, 0:1])
        inx = (xb >= 0) & (xb < fov[sel, 1:2])
        mask = (iny[:, :, None] & inx[:, None, :]).to(torch.float32)[:, None]
        x = torch.cat([patch, mask], 1)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True,
                          antialias=(n1 > size or n2 > size))
        peak = x[:, :1].amax(dim=(2, 3), keepdim=True)
        x[:, :1] = x[:, :1] / torch.where(peak > 0, peak, torch.ones_like(peak))
        out[sel] = x
    return out


def footprint_crops(A, dims, gSig, size: int = INPUT_SIZE, use_cuda=False) -> torch.Tensor:
    """Network inputs (K, 2, size, size) for the footprints ``A``.

    Parameters
    ----------
    A : sparse or dense (pixels, K), Fortran pixel order
    dims : (d1, d2) or (d1, d2, d3)
        Frame shape; 3D footprints are seen through their max projection
        along the third axis.
    gSig : int or (int, int)
        Expected half-size of a neuron (``params.init['gSig']``).
    """
    dims = tuple(int(d) for d in dims)
    if len(dims) not in (2, 3):
        raise ParameterError(f"dims: expected 2 or 3 dimensions, got {dims}")
    g = np.atleast_1d(np.asarray(gSig, dtype=float))[:2]
    if g.size == 1:
        g = np.repeat(g, 2)
    if np.any(g <= 0):
        raise ParameterError(f"gSig: expected positive sizes, got {gSig!r}")
    A = sp.csc_matrix(A)
    if A.shape[0] != int(np.prod(dims)):
        raise ParameterError(f"A: has {A.shape[0]} rows but dims {dims} make "
                             f"{int(np.prod(dims))} pixels")
    K = A.shape[1]
    coo = A.tocoo()
    rows = coo.row % dims[0]
    cols = (coo.row // dims[0]) % dims[1]
    return crops_from_entries(rows, cols, coo.data, coo.col, K, np.tile(g, (K, 1)),
                              np.tile(dims[:2], (K, 1)), size, get_device(use_cuda))


@lru_cache(maxsize=4)
def _load(path: str, device: str):
    blob = torch.load(path, map_location=device, weights_only=True)
    meta = blob.get("meta", {})
    if meta.get("input_size", INPUT_SIZE) != INPUT_SIZE or \
            meta.get("version", MODEL_VERSION) != MODEL_VERSION:
        raise ParameterError(f"CNN weights {path}: made for input size "
                             f"{meta.get('input_size')} / version {meta.get('version')}, "
                             f"this code expects {INPUT_SIZE} / {MODEL_VERSION}")
    model = FootprintNet(widths=tuple(meta.get("widths", (8, 16, 32))),
                         hidden=int(meta.get("hidden", 64)))
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, meta


def load_classifier(path=None, use_cuda=False):
    """The trained :class:`FootprintNet` (eval mode) and its metadata dict."""
    device = get_device(use_cuda)
    path = WEIGHTS_PATH if path is None else Path(path)
    if not Path(path).is_file():
        raise ParameterError(f"CNN weights: file {path} not found; run "
                             "python -m gpu_cnmf.evaluation.train_cnn to make it")
    return _load(str(path), str(device))


@torch.no_grad()
def classify_crops(model, crops: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Probabilities that each crop is a cell."""
    out = [torch.sigmoid(model(crops[i:i + batch])) for i in range(0, len(crops), batch)]
    return torch.cat(out) if out else torch.zeros(0, device=crops.device)


def predict_cnn(A, dims, gSig=(5, 5), gSig_range=None, use_cuda=False,
                weights=None) -> np.ndarray:
    """CNN probability that each footprint is a neuron (CaImAn's ``cnn_preds``).

    Parameters
    ----------
    A : sparse (pixels, K);  dims : frame shape
    gSig : int or pair
        Expected neuron half-size in px.
    gSig_range : list of int, optional
        If given, each footprint is scored at every size in the list and
        keeps its best score (for data whose neuron size is uncertain).
    weights : path, optional
        Other weights than the shipped ones.

    Returns
    -------
    ndarray (K,) float in [0, 1]
    """
    model, _meta = load_classifier(weights, use_cuda)
    sizes = [gSig] if gSig_range is None else list(np.atleast_1d(gSig_range))
    if len(sizes) == 0:
        raise ParameterError("gSig_range: expected None or a non-empty list of sizes")
    best = None
    for g in sizes:
        p = classify_crops(model, footprint_crops(A, dims, g, use_cuda=use_cuda))
        best = p if best is None else torch.maximum(best, p)
    return to_numpy(best).astype(np.float64)


def _n_params(model: nn.Module) -> int:
    return int(sum(math.prod(p.shape) for p in model.parameters()))
