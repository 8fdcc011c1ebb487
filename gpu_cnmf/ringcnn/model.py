"""The Ring-CNN: a one-layer convolutional network with ring-shaped kernels.

CNMF-E (Zhou et al. 2018) models the out-of-focus background of a
one-photon movie at pixel x as a weighted sum of the fluorescence on a ring
around x, ``b(x, t) = sum_x' W(x, x') y(x', t)``, with ``W(x, x')`` nonzero
only where ``|x - x'|`` lies on the ring. The ring leaves out the disc where
the neuron centred at x lives, so the neuron's own transients do not enter
its background. Friedrich et al. (2021) factor ``W`` into a few shared ring
kernels ``k_c`` modulated by per-pixel gains ``h_c(x)``::

    b(x) = sum_c h_c(x) * ((k_c * y)(x) + beta_c)  [+ a(x)]

(``*`` is a zero-padded 2-D cross-correlation, ``beta_c`` the optional
convolution bias ``use_bias``, ``a`` the optional additive image
``use_add``) and learn it by gradient descent with a quantile loss.

Ring geometry, as CaImAn defines it: inner radius ``r_in =
int(gSig * r_factor)`` (``r_factor`` is CNMF-E's ``ring_size_factor``,
1.5), thickness ``width`` pixels, so the ring holds the offsets ``r_in <=
|dx| < r_in + width`` and the kernel is ``2 * (r_in + width - 1) + 1``
pixels wide.

The convolution runs through FFTs (the kernels are 20-40 px wide; direct
convolution would cost ~100x more), with exactly the result of zero-padded
``conv2d``. The movie is divided by a scalar ``scale`` (its RMS, stored in
the model) so that Adam's step size ``lr`` means the same for any intensity
range.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError

MODEL_FORMAT = "gpu_cnmf.ringcnn"
MODEL_VERSION = 1


def ring_radii(gSig, width: int, r_factor: float = 1.5) -> tuple[int, int]:
    """Inner and outer radius (exclusive) of the ring, in pixels.

    Parameters
    ----------
    gSig : float or sequence of float
        Half-size of a neuron (CaImAn's ``gSig``); a sequence is averaged.
    width : int
        Ring thickness in pixels.
    r_factor : float
        Inner radius in units of ``gSig``.
    """
    g = float(np.mean(np.atleast_1d(np.asarray(gSig, dtype=float))))
    if not np.isfinite(g) or g <= 0:
        raise ParameterError(f"gSig: expected a positive size in pixels, got {gSig!r}")
    if int(width) != width or width < 1:
        raise ParameterError(f"ring_CNN width: expected a positive integer, got {width!r}")
    r_in = max(1, int(g * r_factor))
    return r_in, r_in + int(width)


def ring_mask(gSig, width: int, r_factor: float = 1.5) -> np.ndarray:
    """Boolean (K, K) mask of the ring kernel, centred, K = 2 * (r_out - 1) + 1."""
    r_in, r_out = ring_radii(gSig, width, r_factor)
    half = r_out - 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    dist = np.hypot(yy, xx)
    return (dist >= r_in) & (dist < r_out)


def _fast_len(n: int) -> int:
    """Smallest 2,3,5-smooth integer >= n (fast FFT length)."""
    best = 2 ** math.ceil(math.log2(max(n, 1)))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


class RingCNN(nn.Module):
    """Ring-CNN background model for frames of shape ``dims``.

    Parameters
    ----------
    dims : (int, int)
        Frame shape (d1, d2); the per-pixel gains tie a model to it.
    gSig : float
        Neuron half-size in pixels (sets the ring's inner radius).
    n_channels : int
        Number of ring kernels ``c``.
    width : int
        Ring thickness in pixels.
    use_bias : bool
        Learn a scalar bias per kernel.
    use_add : bool
        Learn an additive per-pixel image ``a(x)``.
    r_factor : float
        Inner ring radius in units of ``gSig``.
    scale : float
        Intensity unit of the movie (inputs are divided by it).
    seed : int
        Seeds the small random perturbation that makes the kernels differ.

    Notes
    -----
    Initialisation makes the model the mean of the in-image ring pixels
    (the gains undo the zero padding at the borders), CNMF-E's unweighted
    ring, and training departs from there.
    """

    def __init__(self, dims, gSig, n_channels: int = 2, width: int = 5,
                 use_bias: bool = False, use_add: bool = False,
                 r_factor: float = 1.5, scale: float = 1.0, seed: int = 0):
        super().__init__()
        dims = tuple(int(d) for d in dims)
        if len(dims) != 2 or min(dims) < 1:
            raise ParameterError(f"dims: expected a 2-D frame shape, got {dims!r}")
        if int(n_channels) != n_channels or n_channels < 1:
            raise ParameterError(
                f"ring_CNN n_channels: expected a positive integer, got {n_channels!r}")
        if not (np.isfinite(scale) and scale > 0):
            raise ParameterError(f"scale: expected a positive number, got {scale!r}")
        mask = ring_mask(gSig, width, r_factor)
        self.hparams = dict(
            dims=list(dims), gSig=float(np.mean(np.atleast_1d(gSig))),
            n_channels=int(n_channels), width=int(width), use_bias=bool(use_bias),
            use_add=bool(use_add), r_factor=float(r_factor))
        n_ring = int(mask.sum())
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("mask", torch.from_numpy(mask.astype(np.float32)))
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))
        # Kernel entries live in units of 1/n_ring so a unit step of Adam is
        # the same relative change whatever the ring size.
        self.kernel = nn.Parameter(
            1.0 + 0.1 * (2 * torch.rand(n_channels, *mask.shape, generator=gen) - 1))
        self.register_buffer("kernel_norm", torch.tensor(1.0 / n_ring))
        frac = self._ring_coverage(mask, dims)
        self.gain = nn.Parameter(
            (1.0 / (n_channels * frac)).expand(n_channels, *dims).clone())
        self.bias = nn.Parameter(torch.zeros(n_channels)) if use_bias else None
        self.add = nn.Parameter(torch.zeros(dims)) if use_add else None
        h, w = dims
        k = mask.shape[0]
        self._fft_shape = (_fast_len(h + k - 1), _fast_len(w + k - 1))

    @staticmethod
    def _ring_coverage(mask: np.ndarray, dims) -> torch.Tensor:
        """Fraction of each pixel's ring that falls inside the frame."""
        inside = np.ones(dims)
        k = mask.shape[0]
        pad = k // 2
        padded = np.pad(inside, pad)
        from scipy.signal import fftconvolve
        cover = fftconvolve(padded, mask[::-1, ::-1].astype(float), mode="valid")
        cover = np.clip(np.rint(cover), 1, None) / mask.sum()
        return torch.from_numpy(cover.astype(np.float32))

    # -- pieces -----------------------------------------------------------
    @property
    def dims(self) -> tuple[int, int]:
        return tuple(self.hparams["dims"])

    def ring_kernels(self) -> torch.Tensor:
        """The (n_channels, K, K) ring kernels in input units (zero off the ring)."""
        return self.kernel * self.mask * self.kernel_norm

    def ring_responses(self, y: torch.Tensor) -> torch.Tensor:
        """Cross-correlate normalised frames (N, d1, d2) with every ring kernel.

        Returns (N, n_channels, d1, d2); identical to
        ``F.conv2d(y[:, None], kernels[:, None], padding=K // 2)``.
        """
        h, w = self.dims
        kern = self.ring_kernels()
        k = kern.shape[-1]
        fh, fw = self._fft_shape
        # Correlation = convolution with the flipped kernel; the full linear
        # convolution fits in (fh, fw) so the circular wrap never overlaps.
        kf = torch.fft.rfft2(torch.flip(kern, dims=(-2, -1)), s=(fh, fw))
        yf = torch.fft.rfft2(y, s=(fh, fw))
        full = torch.fft.irfft2(yf[:, None] * kf[None], s=(fh, fw))
        half = k // 2
        out = full[..., half:half + h, half:half + w]
        if self.bias is not None:
            out = out + self.bias[None, :, None, None]
        return out

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Background (N, d1, d2) of frames ``y`` (N, d1, d2), in input units."""
        if y.shape[-2:] != self.dims:
            raise ParameterError(
                f"frames of shape {tuple(y.shape[-2:])} given to a Ring-CNN "
                f"trained for {self.dims}")
        squeeze = y.dim() == 2
        if squeeze:
            y = y[None]
        z = self.ring_responses(y / self.scale)
        b = (z * self.gain[None]).sum(1)
        if self.add is not None:
            b = b + self.add
        b = b * self.scale
        return b[0] if squeeze else b

    def extra_repr(self) -> str:
        r_in, r_out = ring_radii(self.hparams["gSig"], self.hparams["width"],
                                 self.hparams["r_factor"])
        return (f"dims={self.dims}, n_channels={self.hparams['n_channels']}, "
                f"ring={r_in}..{r_out - 1}px, use_bias={self.hparams['use_bias']}, "
                f"use_add={self.hparams['use_add']}")


# -- persistence ------------------------------------------------------------
def save_model(model: RingCNN, path) -> str:
    """Save ``model`` (state_dict and hyperparameters) to ``path`` with torch.save.

    Written to a temporary name and renamed, so no half-written file is left.
    """
    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": MODEL_FORMAT, "version": MODEL_VERSION,
               "hparams": dict(model.hparams), "state_dict": state}
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(path)


def load_model(path, device="cpu", expect: dict | None = None) -> RingCNN:
    """Load a model written by :func:`save_model` onto ``device``.

    Parameters
    ----------
    path : str or Path
        The saved file (``path_to_model``).
    device : torch.device or str
    expect : dict, optional
        Hyperparameters the caller requires (e.g. ``n_channels``, ``width``,
        ``dims``); a mismatch raises :class:`ParameterError` naming them.
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise ParameterError(f"ring_CNN path_to_model: no saved model at {str(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ParameterError(
            f"ring_CNN path_to_model: {str(path)!r} is not a readable torch file "
            f"({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ParameterError(
            f"ring_CNN path_to_model: {str(path)!r} is not a gpu_cnmf Ring-CNN model")
    hp = payload["hparams"]
    if expect:
        bad = []
        for key, want in expect.items():
            have = hp.get(key)
            if key == "dims":
                have, want = tuple(have), tuple(int(d) for d in want)
            elif key == "gSig":
                want = float(np.mean(np.atleast_1d(want)))
            if have != want:
                bad.append(f"{key}={have!r} (requested {want!r})")
        if bad:
            raise ParameterError(
                f"ring_CNN reuse_model: the model in {str(path)!r} was trained with "
                + ", ".join(bad) + "; retrain (reuse_model=False) or change the parameters")
    model = RingCNN(hp["dims"], hp["gSig"], n_channels=hp["n_channels"], width=hp["width"],
                    use_bias=hp["use_bias"], use_add=hp["use_add"], r_factor=hp["r_factor"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device)
