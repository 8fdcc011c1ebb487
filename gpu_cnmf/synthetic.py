"""Synthetic calcium-imaging movies with exact ground truth.

:func:`make_movie` simulates a two-photon (``kind='2p'``) or one-photon
(``kind='1p'``) movie as CNMF models it, ``Y = A C + b f + noise``, optionally
seen through rigid or non-rigid motion, and returns it with a
:class:`GroundTruth` holding every factor. The names are CaImAn's:

``A``  (pixels, K) spatial footprints, scipy.sparse csc, each column's max 1;
``C``  (K, T) calcium traces;
``S``  (K, T) spikes, the innovations of the AR process (``C = AR(g) * S``);
``g``  (K, p) autoregressive coefficients, ``c_t = sum_i g_i c_{t-i} + s_t``;
``b``  (pixels, nb) background footprints, ``f`` (nb, T) their time courses
       (2p: baseline, neuropil and the static anatomy — the cells' resting
       fluorescence, silent cells, vessel shadows; ``A C`` is the activity);
``sn`` (pixels,) the effective noise standard deviation of each pixel.

Pixels are flattened in Fortran order, pixel index ``i + j*d1`` for the frame
element ``(i, j)``, as CaImAn stores ``A``; movies are ``(T, d1, d2)`` arrays.

Motion follows CaImAn's convention: the correction shift ``s_t`` is what
registration applies, ``corrected(y) = observed(y - s_t) = clean(y)``, so the
microscope records ``observed(y) = clean(y + s_t)``. ``truth.shifts`` (T, 2)
is ``s_t`` in (y, x) order, i.e. what ``MotionCorrect.shifts_rig`` must
report. For non-rigid motion ``truth.flow`` (T, 2, d1, d2) gives ``s_t(y)``
per pixel with ``observed(y - s_t(y)) = clean(y)`` exactly.

How the motion is made exact: the motion-free scene is rendered on a padded
canvas on which it is periodic and (to float precision) band-limited —
footprints are smooth bumps, backgrounds are Fourier-filtered fields on that
canvas. A rigid shift is then a Fourier phase ramp: frames agree with the
footprints rendered analytically at the shifted positions to ~1e-5 of the
signal (tested). A non-rigid warp samples the canvas with a cubic B-spline
(:func:`spline_warp`, vectorised torch, identical to
``scipy.ndimage.map_coordinates(order=3, mode='grid-wrap')``), whose error on
these smooth scenes is below 1e-3 of the signal, far less than 0.01 px. Noise is added after the motion, in
the detector's frame, as in a real microscope; ``truth.clean`` is the
motion-free scene plus that same noise field, so ``movie - clean`` is the
pure effect of motion.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch
from scipy import ndimage, signal

from .errors import ParameterError

__all__ = [
    "GroundTruth", "make_movie", "standard_2p", "standard_1p", "hard_2p", "hard_1p",
    "simulate_bursts",
    "ar_coefficients", "simulate_spikes", "calcium_from_spikes",
    "fourier_shift", "spline_warp", "rigid_trajectory", "window_mean_flow",
    "footprint_values",
]

# Frames rendered at once: bounds the temporaries to a few hundred MB at
# 512x512 while keeping the products large enough to be efficient.
_CHUNK = 64


@dataclass
class GroundTruth:
    """Everything :func:`make_movie` used to build a movie.

    Attributes
    ----------
    A : scipy.sparse.csc_matrix (d1*d2, K)
        Footprints, Fortran pixel order, each column's max exactly 1.
    C, S : np.ndarray (K, T) float32
        Calcium traces and spikes (AR innovations), ``C = AR(g) * S``.
    b : np.ndarray (d1*d2, nb) float32
        Background footprints (baseline and neuropil / out-of-focus light;
        for 2p also the static anatomy: resting fluorescence of every cell,
        silent cells and vessel shadows).
    f : np.ndarray (nb, T) float32
        Background time courses. ``A C + b f`` is the noise-free,
        motion-free movie (pixels x T).
    g : np.ndarray (K, p)
        AR coefficients of each neuron.
    sn : np.ndarray (d1*d2,) float32
        Effective noise std of each pixel (Gaussian read noise plus shot
        noise averaged over time), Fortran order.
    dims : tuple
        Frame shape (d1, d2).
    shifts : np.ndarray (T, 2) float32
        Rigid correction shifts (y, x); zeros without motion, the spatial
        mean of ``flow`` for non-rigid motion.
    flow : np.ndarray (T, 2, d1, d2) float32 or None
        Per-pixel correction field for non-rigid motion.
    clean : np.ndarray (T, d1, d2) float32 or None
        The movie without motion (same noise), when kept.
    """

    A: sp.csc_matrix
    C: np.ndarray
    S: np.ndarray
    b: np.ndarray
    f: np.ndarray
    g: np.ndarray
    sn: np.ndarray
    dims: tuple
    shifts: np.ndarray
    flow: Optional[np.ndarray] = None
    clean: Optional[np.ndarray] = None
    kind: str = "2p"
    fr: float = 30.0
    decay_time: float = 0.4
    rise_time: Optional[float] = None
    centers: Optional[np.ndarray] = None   # (K, 2) footprint centres (y, x), px
    sigmas: Optional[np.ndarray] = None    # (K, 2) major/minor Gaussian widths, px
    angles: Optional[np.ndarray] = None    # (K,) orientation of the major axis, rad
    gain: Optional[float] = None           # photons per movie unit (None: no shot noise)
    read_noise: float = 0.0
    params: dict = field(default_factory=dict)

    @property
    def K(self) -> int:
        return self.A.shape[1]

    @property
    def T(self) -> int:
        return self.C.shape[1]

    def _frames(self, mat_pixels_by_t: np.ndarray) -> np.ndarray:
        """(pixels, n) Fortran-ordered columns -> (n, d1, d2) frames."""
        d1, d2 = self.dims
        n = mat_pixels_by_t.shape[1]
        return np.ascontiguousarray(
            mat_pixels_by_t.T.reshape(n, d2, d1).transpose(0, 2, 1), dtype=np.float32)

    def background(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Motion-free background frames ``b f[:, start:stop]`` as (n, d1, d2)."""
        return self._frames(self.b @ self.f[:, start:stop])

    def neural(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Motion-free neural frames ``A C[:, start:stop]`` as (n, d1, d2)."""
        return self._frames(np.asarray(self.A @ self.C[:, start:stop]))

    def denoised(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Motion-free, noise-free frames ``A C + b f`` as (n, d1, d2)."""
        return self._frames(np.asarray(self.A @ self.C[:, start:stop])
                            + self.b @ self.f[:, start:stop])

    def footprint_images(self) -> np.ndarray:
        """Footprints as a dense (K, d1, d2) stack."""
        return self._frames(self.A.toarray())

    @property
    def sn_image(self) -> np.ndarray:
        """``sn`` as a (d1, d2) image."""
        return self.sn.reshape(self.dims, order="F")


# --------------------------------------------------------------- temporal ---

def ar_coefficients(decay_time: float, fr: float, p: int = 1,
                    rise_time: Optional[float] = None) -> np.ndarray:
    """AR coefficients of a calcium kernel.

    AR(1): ``g = exp(-1/(decay_time*fr))``. AR(2): the kernel
    ``exp(-t/decay) - exp(-t/rise)`` has roots ``d``, ``r`` and
    ``g = (d + r, -d r)``.
    """
    if decay_time <= 0 or fr <= 0:
        raise ParameterError(f"decay_time and fr must be > 0, got {decay_time}, {fr}")
    d = np.exp(-1.0 / (decay_time * fr))
    if p == 1:
        return np.array([d])
    if p == 2:
        if rise_time is None or rise_time <= 0 or rise_time >= decay_time:
            raise ParameterError(
                f"rise_time: expected 0 < rise_time < decay_time for p=2, got {rise_time}")
        r = np.exp(-1.0 / (rise_time * fr))
        return np.array([d + r, -d * r])
    raise ParameterError(f"p: expected 1 or 2, got {p!r}")


def _kernel_peak(g: np.ndarray, n: int = 2000) -> float:
    """Peak of the AR impulse response (1 for AR(1))."""
    imp = np.zeros(n)
    imp[0] = 1.0
    return float(signal.lfilter([1.0], np.r_[1.0, -np.asarray(g)], imp).max())


def simulate_spikes(rng: np.random.Generator, n_neurons: int, n_frames: int,
                    fr: float, firing_rate: float = 1.0, rate_spread: float = 0.5,
                    amplitude: float = 1.0, amplitude_spread: float = 0.4,
                    spike_spread: float = 0.2) -> np.ndarray:
    """Poisson spike trains with varying rates and amplitudes.

    Rates are log-normal around ``firing_rate`` (Hz); each neuron's
    brightness is log-normal around ``amplitude`` and each event's size
    varies around that by ``spike_spread``. Returns S (K, T) float64; a
    frame may hold several spikes (their amplitudes add).
    """
    rates = firing_rate * rng.lognormal(0.0, rate_spread, n_neurons)
    counts = rng.poisson((rates / fr)[:, None], (n_neurons, n_frames))
    bright = amplitude * rng.lognormal(-amplitude_spread**2 / 2, amplitude_spread, n_neurons)
    event = rng.lognormal(-spike_spread**2 / 2, spike_spread, (n_neurons, n_frames))
    return counts * event * bright[:, None]


def simulate_bursts(rng: np.random.Generator, n_neurons: int, n_frames: int,
                    fr: float, firing_rate: float = 1.0, rate_spread: float = 0.5,
                    amplitude: float = 1.0, amplitude_spread: float = 0.4,
                    burst_size: float = 3.0, burst_spread: float = 0.6) -> np.ndarray:
    """Spike trains in bursts, as cortical neurons fire (hard movies).

    Burst onsets are Poisson at ``firing_rate / burst_size`` (Hz, log-normal
    across neurons by ``rate_spread``) so the mean spike rate stays about
    ``firing_rate``; a burst holds ``1 + Poisson(burst_size - 1)`` spikes
    spread over the next few frames (geometric gaps of mean ~20 ms), and
    every spike's size is log-normal by ``burst_spread`` around the neuron's
    brightness: transients of very unequal heights, some single spikes
    barely above the noise, some summed bursts several times larger.
    Returns S (K, T) float64.
    """
    rates = firing_rate * rng.lognormal(0.0, rate_spread, n_neurons) / max(burst_size, 1.0)
    bright = amplitude * rng.lognormal(-amplitude_spread**2 / 2, amplitude_spread, n_neurons)
    S = np.zeros((n_neurons, n_frames))
    gap = 1.0 / (1.0 + 0.02 * fr)       # geometric p: gaps of mean 0.02 fr frames
    for k in range(n_neurons):
        onsets = np.nonzero(rng.random(n_frames) < rates[k] / fr)[0]
        for t0 in onsets:
            n = 1 + rng.poisson(max(burst_size - 1.0, 0.0))
            t = t0 + np.cumsum(np.r_[0, rng.geometric(gap, n - 1) - 1])
            t = t[t < n_frames]
            amp = rng.lognormal(-burst_spread**2 / 2, burst_spread, len(t))
            np.add.at(S[k], t, bright[k] * amp)
    return S


def calcium_from_spikes(S: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Run spikes through the AR process ``c_t = sum_i g_i c_{t-i} + s_t``.

    ``g`` is (p,) shared by all rows or (K, p) per row.
    """
    S = np.atleast_2d(S)
    g = np.atleast_2d(g)
    if g.shape[0] == 1:
        return signal.lfilter([1.0], np.r_[1.0, -g[0]], S, axis=1)
    return np.stack([signal.lfilter([1.0], np.r_[1.0, -gk], s) for s, gk in zip(S, g)])


def _smooth_trace(rng: np.random.Generator, n: int, sigma_frames: float) -> np.ndarray:
    """Zero-mean, unit-std low-pass Gaussian noise of length n."""
    x = ndimage.gaussian_filter1d(rng.standard_normal(n + 8 * int(sigma_frames) + 8),
                                  max(sigma_frames, 1e-3), mode="wrap")
    x = x[4 * int(sigma_frames) + 4:][:n]
    x = x - x.mean()
    return x / (x.std() + 1e-12)


# ---------------------------------------------------------------- spatial ---

def _place_centers(rng: np.random.Generator, n: int, dims, margin: float,
                   min_dist: float) -> np.ndarray:
    """Random centres at least ``min_dist`` apart (relaxed if they do not fit)."""
    lo = np.array([margin, margin])
    hi = np.array(dims, float) - 1 - margin
    if np.any(hi <= lo):
        raise ParameterError(f"dims={tuple(dims)} too small for neurons of this size")
    pts = np.zeros((0, 2))
    dist = float(min_dist)
    fails = 0
    while len(pts) < n:
        cand = lo + rng.random((64, 2)) * (hi - lo)
        if len(pts):
            ok = np.min(np.hypot(cand[:, None, 0] - pts[None, :, 0],
                                 cand[:, None, 1] - pts[None, :, 1]), axis=1) >= dist
        else:
            ok = np.ones(64, bool)
        if ok.any():
            pts = np.vstack([pts, cand[np.argmax(ok)]])
            fails = 0
        else:
            fails += 1
            if fails > 30:            # crowded: let neighbours come closer
                dist *= 0.9
                fails = 0
    return pts


def _bump(q: np.ndarray, order: int) -> np.ndarray:
    """``(1 - q/(2 order))_+^order``: a compact, smooth stand-in for
    ``exp(-q/2)`` (C^(order-1) at its edge, so Fourier shifts stay exact)."""
    return np.clip(1.0 - q / (2.0 * order), 0.0, None) ** order


def footprint_values(y, x, center, sigmas, angle, order: int) -> np.ndarray:
    """Evaluate one footprint (peak 1 at ``center``) at positions (y, x)."""
    dy = np.asarray(y, float) - center[0]
    dx = np.asarray(x, float) - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u = c * dy + s * dx          # along the major axis
    v = -s * dy + c * dx
    q = (u / sigmas[0]) ** 2 + (v / sigmas[1]) ** 2
    return _bump(q, order)


def _fov_column(y0, x0, P, pad, dims, k):
    """Footprint ``P`` (drawn at ``y0, x0`` on the padded canvas) scaled to a
    maximum of exactly 1 over the field of view, and its in-view pixels as
    column ``k`` of A (Fortran pixel order): ``(P, rows, cols, vals)``."""
    iy = np.arange(y0, y0 + P.shape[0]) - pad
    ix = np.arange(x0, x0 + P.shape[1]) - pad
    my = (iy >= 0) & (iy < dims[0])
    mx = (ix >= 0) & (ix < dims[1])
    sub = P[np.ix_(my, mx)]
    peak = sub.max()
    ii, jj = np.nonzero(sub)
    return ((P / peak).astype(np.float32), iy[my][ii] + ix[mx][jj] * dims[0],
            np.full(len(ii), k), sub[ii, jj] / peak)


def _nucleus_factor(y0, x0, shape, center, sigma, angle, pad, depth) -> np.ndarray:
    """``1 - depth * n(y)`` on a patch at canvas (y0, x0): ``n`` a Gaussian
    nucleus half the cell's size at its centre (smooth, so Fourier shifts
    of the scene stay exact)."""
    yy, xx = np.meshgrid(np.arange(y0, y0 + shape[0]) - pad,
                         np.arange(x0, x0 + shape[1]) - pad, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - center[0], xx - center[1]
    q = ((c * dy + s * dx) / (0.5 * sigma[0])) ** 2 + ((-s * dy + c * dx) / (0.5 * sigma[1])) ** 2
    return 1 - depth * np.exp(-q / 2)


def _render_footprints(centers, sigmas, angles, order, offset):
    """Render each footprint on its bounding box.

    Returns a list of (y0, x0, patch) in canvas coordinates (the field of
    view starts at ``offset``); patches have peak <= 1 and may reach past
    the field of view.
    """
    out = []
    for cen, sig, ang in zip(centers, sigmas, angles):
        R = sig[0] * np.sqrt(2 * order)          # support radius (major axis)
        cy, cx = cen[0] + offset, cen[1] + offset
        iy = np.arange(int(np.floor(cy - R)), int(np.ceil(cy + R)) + 1)
        ix = np.arange(int(np.floor(cx - R)), int(np.ceil(cx + R)) + 1)
        YY, XX = np.meshgrid(iy, ix, indexing="ij")
        out.append((iy[0], ix[0], footprint_values(YY, XX, (cy, cx), sig, ang, order)))
    return out


def _smooth_field(rng: np.random.Generator, canvas, scale: float) -> np.ndarray:
    """Periodic, band-limited random field on the canvas, rescaled to [0, 1].

    ``scale`` is the Gaussian correlation width in pixels.
    """
    Hc, Wc = canvas
    ky = np.fft.fftfreq(Hc)[:, None]
    kx = np.fft.rfftfreq(Wc)[None, :]
    filt = np.exp(-2 * np.pi**2 * scale**2 * (ky**2 + kx**2))
    noise = rng.standard_normal((Hc, Wc))
    fld = np.fft.irfft2(np.fft.rfft2(noise) * filt, s=(Hc, Wc))
    fld -= fld.min()
    return fld / (fld.max() + 1e-12)


def _good_size(n: int) -> int:
    """Smallest 2,3,5-smooth integer >= n (fast FFT sizes)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


# ----------------------------------------------------------------- motion ---

def rigid_trajectory(rng: np.random.Generator, n_frames: int, fr: float,
                     max_shift: float, jitter: float = 0.1,
                     timescale: float = 2.0) -> np.ndarray:
    """Smooth random-walk shifts plus frame-to-frame jitter, (T, 2) in px.

    The walk is low-passed with a ``timescale`` (s) Gaussian and scaled to
    reach about ``(1 - jitter) * max_shift``; ``jitter * max_shift`` is the
    std of the added jitter. The result is clipped to ``[-max_shift,
    max_shift]``.
    """
    out = np.zeros((n_frames, 2))
    if max_shift <= 0:
        return out
    for ax in range(2):
        walk = np.cumsum(rng.standard_normal(n_frames))
        walk = ndimage.gaussian_filter1d(walk, timescale * fr * 0.25, mode="nearest")
        walk -= walk.mean()
        walk *= (1 - jitter) * max_shift / (np.abs(walk).max() + 1e-12)
        out[:, ax] = walk + jitter * max_shift * rng.standard_normal(n_frames)
    return np.clip(out, -max_shift, max_shift)


def fourier_shift(frames: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Periodic sub-pixel shift of frames, ``out(y) = frames(y + s)``.

    Parameters
    ----------
    frames : (n, H, W) real tensor
    shifts : (n, 2) tensor, (y, x) in pixels

    Exact for periodic band-limited frames (a phase ramp in Fourier space).
    """
    n, H, W = frames.shape
    ky = torch.fft.fftfreq(H, dtype=torch.float64, device=frames.device)
    kx = torch.fft.rfftfreq(W, dtype=torch.float64, device=frames.device)
    sh = shifts.to(device=frames.device, dtype=torch.float64)
    # The ramp is separable: two small factors instead of one per-pixel one.
    ry = torch.polar(torch.ones(n, H, 1, dtype=torch.float64, device=frames.device),
                     2 * np.pi * sh[:, 0, None, None] * ky[None, :, None])
    rx = torch.polar(torch.ones(n, 1, kx.numel(), dtype=torch.float64,
                                device=frames.device),
                     2 * np.pi * sh[:, 1, None, None] * kx[None, None, :])
    F = torch.fft.rfft2(frames.to(torch.float32))
    # The phase ramp at an even axis' Nyquist bin is ambiguous; the scenes
    # made here carry no energy there, so it does not matter.
    F *= ry.to(torch.complex64)
    F *= rx.to(torch.complex64)
    return torch.fft.irfft2(F, s=(H, W))


class _NonrigidField:
    """Displacement ``w_t(y) = r_t + sum_m a_{m,t} phi_m(y)`` of the sample.

    ``observed(y) = clean(y + w_t(y))``. The modes are smooth functions over
    the field of view (linear tilts, a shear/saddle and a bowl) so the
    field can be evaluated anywhere, which the exact inversion needs.
    """

    def __init__(self, rng, n_frames, fr, dims, max_shift, nonrigid_amplitude, jitter=0.1,
                 timescale=2.0):
        self.dims = dims
        self.rigid = rigid_trajectory(rng, n_frames, fr, max_shift - nonrigid_amplitude,
                                      jitter=jitter, timescale=timescale)
        n_modes = 4
        coef = np.stack([
            np.stack([_smooth_trace(rng, n_frames, 0.5 * fr) for _ in range(n_modes)])
            for _ in range(2)])                                   # (2, M, T)
        gy, gx = np.meshgrid(np.linspace(0, dims[0] - 1, 17),
                             np.linspace(0, dims[1] - 1, 17), indexing="ij")
        phi = self._modes(gy, gx)                                 # (M, 17, 17)
        peak = np.abs(np.einsum("dmt,myx->dtyx", coef, phi)).max(axis=(1, 2, 3))
        self.coef = coef * (nonrigid_amplitude / (peak + 1e-12))[:, None, None]

    def _modes(self, y, x):
        u = 2 * np.asarray(y, float) / max(self.dims[0] - 1, 1) - 1
        v = 2 * np.asarray(x, float) / max(self.dims[1] - 1, 1) - 1
        return np.stack([u, v, u * v, 0.5 * (u**2 + v**2) - 1 / 3])

    def __call__(self, t, y, x):
        """w at frames t (n,) and positions y, x (n, ...) -> (n, 2, ...)."""
        u = 2 * np.asarray(y, float) / max(self.dims[0] - 1, 1) - 1
        v = 2 * np.asarray(x, float) / max(self.dims[1] - 1, 1) - 1
        uv, bowl = u * v, 0.5 * (u * u + v * v) - 1 / 3
        extra = (1,) * (u.ndim - 1)
        out = np.empty((len(t), 2) + u.shape[1:])
        for d in range(2):
            c = self.coef[d][:, t].reshape((-1, len(t)) + extra)
            r = self.rigid[t, d].reshape((len(t),) + extra)
            out[:, d] = r + c[0] * u + c[1] * v + c[2] * uv + c[3] * bowl
        return out


def _bspline_coefficients(frames: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline coefficients of periodic frames (n, H, W).

    On a periodic grid the B-spline prefilter is a circular deconvolution by
    the sampled kernel (1, 4, 1)/6, i.e. a division in Fourier space.
    """
    n, H, W = frames.shape
    ky = torch.fft.fftfreq(H, dtype=torch.float64)
    kx = torch.fft.rfftfreq(W, dtype=torch.float64)
    den = ((4 + 2 * torch.cos(2 * np.pi * ky))[:, None]
           * (4 + 2 * torch.cos(2 * np.pi * kx))[None, :] / 36).to(torch.float32)
    return torch.fft.irfft2(torch.fft.rfft2(frames.to(torch.float32)) / den, s=(H, W))


def spline_warp(frames: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                batch: int = 32) -> torch.Tensor:
    """Sample periodic frames at arbitrary positions by cubic B-splines.

    Parameters
    ----------
    frames : (n, H, W) tensor, periodic (positions wrap around)
    y, x : (n, h, w) float64 tensors of row and column positions

    Returns
    -------
    (n, h, w) float32 tensor; equals
    ``scipy.ndimage.map_coordinates(frame, [y, x], order=3, mode='grid-wrap')``
    frame by frame, vectorised over frames.
    """
    out = torch.empty(y.shape, dtype=torch.float32)
    H, W = frames.shape[1:]
    for s0 in range(0, frames.shape[0], batch):
        s1 = min(s0 + batch, frames.shape[0])
        coef = _bspline_coefficients(frames[s0:s1]).reshape(s1 - s0, -1)
        fy, fx = torch.floor(y[s0:s1]), torch.floor(x[s0:s1])
        wy, wx = _bspline_weights((y[s0:s1] - fy).float()), _bspline_weights((x[s0:s1] - fx).float())
        iy, ix = fy.long(), fx.long()
        acc = torch.zeros(y[s0:s1].shape, dtype=torch.float32)
        for a in range(4):
            ry = ((iy + (a - 1)) % H) * W
            for c in range(4):
                idx = (ry + (ix + (c - 1)) % W).reshape(s1 - s0, -1)
                acc += wy[a] * wx[c] * coef.gather(1, idx).view(acc.shape)
        out[s0:s1] = acc
    return out


def _bspline_weights(u: torch.Tensor):
    """Cubic B-spline weights of the taps at offsets -1, 0, 1, 2 for the
    fractional position u in [0, 1)."""
    u2, u3 = u * u, u * u * u
    return ((1 - u) ** 3 / 6, (3 * u3 - 6 * u2 + 4) / 6,
            (-3 * u3 + 3 * u2 + 3 * u + 1) / 6, u3 / 6)


def _invert_field(wfun, t, dims, n_iter: int = 6) -> np.ndarray:
    """Correction flow s with ``s(y) = w(y - s(y))`` by fixed-point iteration.

    The iteration contracts while |grad w| < 1 (here ~1e-2), gaining two
    orders of magnitude per step.
    """
    yy, xx = np.meshgrid(np.arange(dims[0], dtype=float),
                         np.arange(dims[1], dtype=float), indexing="ij")
    Y = np.broadcast_to(yy, (len(t),) + yy.shape)
    X = np.broadcast_to(xx, (len(t),) + xx.shape)
    s = wfun(t, Y, X)
    for _ in range(n_iter):
        s = wfun(t, Y - s[:, 0], X - s[:, 1])
    return s


def window_mean_flow(flow: np.ndarray, windows) -> np.ndarray:
    """Mean correction flow inside rectangular windows.

    Parameters
    ----------
    flow : (T, 2, d1, d2)
    windows : sequence of (y0, y1, x0, x1) half-open pixel ranges

    Returns
    -------
    (T, n_windows, 2) mean (y, x) shift of each window: the truth for
    patch-wise (piecewise-rigid) shifts such as ``y_shifts_els``.
    """
    return np.stack([flow[:, :, y0:y1, x0:x1].mean(axis=(2, 3))
                     for (y0, y1, x0, x1) in windows], axis=1)


# --------------------------------------------------------------- defaults ---

_DEFAULTS = {
    "2p": dict(dims=(128, 128), gSig=5.0, footprint_order=4, nb=1, baseline=1.0,
               neuropil=0.3, bg_fluct=0.1, bg_scale=12.0, bg_ratio=None,
               noise=0.25, gain=20.0, max_shift=5.0, resting=0.75, nucleus=0.5,
               silent_fraction=0.5, n_vessels=2, vessel_depth=0.6),
    "1p": dict(dims=(160, 160), gSig=4.0, footprint_order=12, nb=4, baseline=None,
               neuropil=None, bg_fluct=0.4, bg_scale=20.0, bg_ratio=5.0,
               noise=0.3, gain=40.0, max_shift=5.0, resting=0.0, nucleus=0.0,
               silent_fraction=0.0, n_vessels=0, vessel_depth=0.0),
}


def make_movie(kind: str = "2p", dims=None, n_frames: int = 1000, n_neurons: int = 40,
               fr: float = 30.0, decay_time: float = 0.4, p: int = 1,
               noise: Optional[float] = None, motion: Optional[str] = None,
               max_shift: Optional[float] = None, seed: int = 0, *,
               rise_time: float = 0.05, firing_rate: float = 1.0,
               amplitude: float = 1.0, gSig=None, size_spread: float = 0.2,
               max_aspect: float = 1.5, min_dist: Optional[float] = None,
               margin: Optional[float] = None, footprint_order: Optional[int] = None,
               nb: Optional[int] = None, baseline: Optional[float] = None,
               neuropil: Optional[float] = None, bg_fluct: Optional[float] = None,
               bg_scale: Optional[float] = None, bg_ratio: Optional[float] = None,
               gain="auto", shot_noise: str = "gaussian",
               nonrigid_amplitude: Optional[float] = None,
               keep_clean: Optional[bool] = None, resting: Optional[float] = None,
               resting_spread: float = 0.3, nucleus: Optional[float] = None,
               n_silent: Optional[int] = None, n_vessels: Optional[int] = None,
               vessel_depth: Optional[float] = None, motion_timescale: float = 2.0,
               motion_jitter: float = 0.1, ring_fraction: float = 0.0,
               ring_depth: float = 0.6, spikes: str = "poisson", burst_size: float = 3.0,
               decay_spread: float = 0.0, bleach: float = 0.0, n_out_of_focus: int = 0,
               dtype: str = "float32", adc_offset: float = 100.0, sink=None):
    """Simulate a calcium-imaging movie and its ground truth.

    Parameters
    ----------
    kind : '2p' or '1p'
        '2p': compact neurons on a dim baseline plus low-rank neuropil and
        the static anatomy real two-photon frames show (see ``resting``).
        '1p': blurrier neurons under a large, smooth, fluctuating background
        ``bg_ratio`` times brighter than the typical transient peak.
    dims : (d1, d2), default (128, 128) for 2p, (160, 160) for 1p.
    n_frames, n_neurons : int
    fr : float
        Frame rate (Hz).
    decay_time : float
        Calcium decay time constant (s).
    p : 1 or 2
        AR order; p=2 adds a rise with time constant ``rise_time`` (s).
    noise : float
        Gaussian read-noise std in movie units (a single spike peaks at
        about ``amplitude`` at a footprint's centre). Defaults: 0.25 (2p),
        0.3 (1p).
    motion : None, 'rigid' or 'nonrigid'
    max_shift : float
        Bound on the displacement in px (default 5, within CaImAn's default
        ``max_shifts=(6, 6)``). It also sets the canvas padding, so movies
        with the same seed and ``max_shift`` share A, C, b, f and noise
        whatever ``motion`` is.
    seed : int
    rise_time : float
        AR(2) rise time (s).
    firing_rate : float
        Mean Poisson rate (Hz); each neuron's rate is log-normal around it.
    amplitude : float
        Mean peak of a single-spike transient at a footprint's centre.
    gSig : float
        Mean Gaussian width of the footprints (px); each neuron's size
        varies by ``size_spread`` and its aspect ratio up to ``max_aspect``.
        Defaults 5 (2p) and 4 (1p).
    min_dist : float
        Minimum centre distance (default 1.5 gSig): neighbours overlap but
        stay separable.
    margin : float
        Minimum distance of centres from the border (default gSig).
    footprint_order : int
        Shape parameter n of ``(1 - q/2n)^n``: 4 for compact 2p somata,
        larger (Gaussian-like, blurrier) for 1p.
    nb : int
        Number of background components. 2p: nb=1 is baseline+neuropil with
        one slow time course; nb>=2 gives a drifting baseline and nb-1
        neuropil fields. 1p: one large drifting component plus nb-1 smooth
        fluctuating ones.
    baseline, neuropil : float
        2p baseline level and neuropil amplitude.
    bg_fluct : float
        Relative amplitude of the background's temporal fluctuations.
    bg_scale : float
        Spatial correlation width of background fields (px).
    bg_ratio : float
        1p: mean background / median single-neuron peak (``max_t A C``).
    gain : float, None or 'auto'
        Photons per movie unit for shot noise (variance ``F / gain``);
        None disables shot noise; 'auto' takes 20 (2p) or 40 (1p).
    shot_noise : 'gaussian' or 'poisson'
        'gaussian' draws shot noise from its normal approximation (fast,
        accurate for the photon counts of the defaults); 'poisson' draws
        exact Poisson counts.
    motion_timescale : float
        Time scale (s) of the rigid random walk (default 2). Tens of seconds
        make a slow wander: the sample drifts across the whole ``+-max_shift``
        range and dwells away from its starting position for long stretches,
        as in long recordings where the brain settles or swells — the case
        that tests whether the motion template sits at the centre of the
        motion rather than where the first frames happen to be.
    motion_jitter : float
        Frame-to-frame jitter of the rigid motion as a fraction of
        ``max_shift`` (default 0.1).
    nonrigid_amplitude : float
        Non-rigid part of the displacement (default 0.4 max_shift); the
        rigid part gets the rest of ``max_shift``.
    keep_clean : bool
        Keep the motion-free movie in ``truth.clean`` (default: when motion
        is set). Costs a second movie's worth of memory.
    resting : float
        2p static anatomy: mean resting (baseline) fluorescence of a neuron
        at its centre, as a multiple of ``amplitude`` (default 0.75; each
        cell varies log-normally by ``resting_spread``). GCaMP cells are
        visible at rest, so every frame carries the cells' outlines even
        when none fires. It is part of the static background ``b`` (``A``
        and ``C`` stay the activity), drawn with the cell's own footprint.
        0 turns the whole anatomy term off (silent cells included).
    resting_spread : float
        Log-normal spread of the per-cell resting brightness.
    nucleus : float
        Relative dimming of the resting fluorescence at the cell's centre
        (GCaMP is excluded from the nucleus; default 0.5, 0 for none).
    n_silent : int
        Dim cells that never fire (resting fluorescence only, half as bright
        as active cells'); default ``n_neurons // 2`` for 2p.
    n_vessels : int
        Dark blood-vessel shadows crossing the field (default 2 for 2p, 0 for
        1p): smooth curved bands that dim the whole static background by up
        to ``vessel_depth`` (default 0.6) on their centre line. In 1p they
        shade every background component: the static texture that
        high-pass filtered (``gSig_filt``) registration relies on.
    sink : callable, optional
        ``sink(t0, frames)`` receives the movie block by block (float32
        ``(n, d1, d2)``, in order) instead of one array in memory: movies
        larger than RAM stream to a file (``benchmarks/scale.py``). The movie
        returned is then None; the truth is the same as without a sink.

    ring_fraction : float
        Share of the active cells whose *activity* footprint has a dim
        nucleus (default 0). GCaMP is cytosolic, so many somata light up as
        rings; ring cells defeat initialisations that look for a blob's
        bright centre. ``ring_depth`` (default 0.6) is the dimming at the
        centre. ``A`` holds the ring shape (the truth is what lights up).
    spikes : 'poisson' or 'bursts'
        Spike model: independent Poisson spikes (default) or bursts
        (:func:`simulate_bursts`, ``burst_size`` spikes on average) with
        widely varying amplitudes, as cortical neurons fire.
    decay_spread : float
        Each cell's decay time varies log-normally by this much (default 0:
        all share ``decay_time``); ``truth.g`` is then per cell.
    bleach : float
        Photobleaching: the share of all fluorescence lost by the last frame,
        an exponential decay over the recording (default 0). ``C`` and ``f``
        include it (``C = bleach(t) * AR(S)``), so ``Y = A C + b f`` holds
        and CNMF's traces are compared with what the movie shows.
    n_out_of_focus : int
        1p: cells above or below the focal plane (default 0): 2.5x wider,
        Gaussian-like and 3x dimmer blobs whose activity follows their own
        spike trains. They are not neurons to be found: they belong to the
        background (each is one extra column of ``b`` and row of ``f``),
        which is then no longer low rank — the case CNMF-E's ring model is
        for.
    dtype : 'float32' or 'uint16'
        'uint16' stores the movie as a camera or PMT digitiser would:
        ``round(adc_offset + gain * Y)`` photon counts, clipped to
        [0, 65535] (``gain`` photons per movie unit; with
        ``shot_noise='poisson'`` the noise is Poisson-Gaussian as in
        real detectors). ``C``, ``b`` and ``sn`` are then scaled to counts
        (``A`` keeps its unit peaks); ``adc_offset`` is in ``truth.params``.

    Returns
    -------
    movie : np.ndarray (T, d1, d2) float32 (uint16 with ``dtype='uint16'``), or None
        with ``sink``
    truth : GroundTruth
    """
    if kind not in _DEFAULTS:
        raise ParameterError(f"kind: expected '2p' or '1p', got {kind!r}")
    if motion not in (None, "rigid", "nonrigid"):
        raise ParameterError(f"motion: expected None, 'rigid' or 'nonrigid', got {motion!r}")
    if spikes not in ("poisson", "bursts"):
        raise ParameterError(f"spikes: expected 'poisson' or 'bursts', got {spikes!r}")
    if dtype not in ("float32", "uint16"):
        raise ParameterError(f"dtype: expected 'float32' or 'uint16', got {dtype!r}")
    if not (0 <= ring_fraction <= 1 and 0 <= ring_depth < 1 and 0 <= bleach < 1
            and decay_spread >= 0 and n_out_of_focus >= 0 and burst_size >= 1):
        raise ParameterError(
            "ring_fraction in [0, 1], ring_depth and bleach in [0, 1), decay_spread >= 0, "
            f"n_out_of_focus >= 0 and burst_size >= 1 expected, got {ring_fraction}, "
            f"{ring_depth}, {bleach}, {decay_spread}, {n_out_of_focus}, {burst_size}")
    if shot_noise not in ("gaussian", "poisson"):
        raise ParameterError(f"shot_noise: expected 'gaussian' or 'poisson', got {shot_noise!r}")
    D = _DEFAULTS[kind]
    dims = tuple(int(d) for d in (D["dims"] if dims is None else dims))
    if len(dims) != 2 or min(dims) < 8:
        raise ParameterError(f"dims: expected two sizes >= 8, got {dims}")
    T, K = int(n_frames), int(n_neurons)
    if T < 1 or K < 0:
        raise ParameterError(f"n_frames >= 1 and n_neurons >= 0 expected, got {T}, {K}")
    gSig = float(D["gSig"] if gSig is None else np.mean(gSig))
    order = int(D["footprint_order"] if footprint_order is None else footprint_order)
    nb = int(D["nb"] if nb is None else nb)
    if nb < 1:
        raise ParameterError(f"nb: expected >= 1, got {nb}")
    baseline = D["baseline"] if baseline is None else baseline
    neuropil = D["neuropil"] if neuropil is None else neuropil
    bg_fluct = D["bg_fluct"] if bg_fluct is None else bg_fluct
    bg_scale = D["bg_scale"] if bg_scale is None else bg_scale
    bg_ratio = D["bg_ratio"] if bg_ratio is None else bg_ratio
    noise = D["noise"] if noise is None else float(noise)
    gain = D["gain"] if isinstance(gain, str) and gain == "auto" else gain
    max_shift = float(D["max_shift"] if max_shift is None else max_shift)
    if max_shift < 0 or noise < 0 or (gain is not None and gain <= 0):
        raise ParameterError("max_shift, noise >= 0 and gain > 0 (or None) expected, "
                             f"got {max_shift}, {noise}, {gain}")
    min_dist = 1.5 * gSig if min_dist is None else min_dist
    margin = gSig if margin is None else margin
    if nonrigid_amplitude is None:
        nonrigid_amplitude = 0.4 * max_shift
    if motion_timescale <= 0 or not 0 <= motion_jitter < 1:
        raise ParameterError(f"motion_timescale > 0 and 0 <= motion_jitter < 1 expected, got "
                             f"{motion_timescale}, {motion_jitter}")
    if not 0 <= nonrigid_amplitude <= max_shift:
        raise ParameterError(f"nonrigid_amplitude: expected in [0, max_shift], got "
                             f"{nonrigid_amplitude}")
    if keep_clean is None:
        keep_clean = motion is not None
    resting = float(D["resting"] if resting is None else resting)
    nucleus = float(D["nucleus"] if nucleus is None else nucleus)
    n_silent = int(D["silent_fraction"] * K if n_silent is None else n_silent)
    n_vessels = int(D["n_vessels"] if n_vessels is None else n_vessels)
    vessel_depth = float(D["vessel_depth"] if vessel_depth is None else vessel_depth)
    if resting < 0 or resting_spread < 0 or n_silent < 0 or n_vessels < 0:
        raise ParameterError("resting, resting_spread, n_silent, n_vessels: expected >= 0, got "
                             f"{resting}, {resting_spread}, {n_silent}, {n_vessels}")
    if not (0 <= nucleus <= 1 and 0 <= vessel_depth < 1):
        raise ParameterError(f"nucleus in [0, 1] and vessel_depth in [0, 1) expected, got "
                             f"{nucleus}, {vessel_depth}")
    if n_out_of_focus and kind != "1p":
        raise ParameterError("n_out_of_focus: out-of-focus cells are a 1p term (2p optical "
                             "sectioning rejects them)")
    if kind == "1p" and resting > 0:
        raise ParameterError("resting: the cells' resting fluorescence is a 2p term "
                             "(1p backgrounds are dominated by out-of-focus light)")
    g = ar_coefficients(decay_time, fr, p, rise_time if p == 2 else None)

    # Independent streams so that changing the motion leaves neurons,
    # activity, background and noise unchanged.
    ss = np.random.SeedSequence(seed)
    # (spawn(6)[:5] == spawn(5): the anatomy stream leaves the others as before)
    rng_sp, rng_t, rng_bg, rng_mo, rng_nz, rng_an = [np.random.default_rng(s)
                                                     for s in ss.spawn(6)]

    # --- footprints, on a canvas padded for the largest displacement
    centers = _place_centers(rng_sp, K, dims, margin, min_dist)
    scale = 1 + size_spread * rng_sp.uniform(-1, 1, K)
    aspect = rng_sp.uniform(1, max_aspect, K)
    sigmas = gSig * scale[:, None] * np.stack([np.sqrt(aspect), 1 / np.sqrt(aspect)], 1)
    angles = rng_sp.uniform(0, np.pi, K)
    R = float(sigmas[:, 0].max() * np.sqrt(2 * order)) if K else 0.0
    pad = int(np.ceil(max_shift + max(R - margin, 0))) + 3
    canvas = (_good_size(dims[0] + 2 * pad), _good_size(dims[1] + 2 * pad))
    Hc, Wc = canvas
    patches, solid = [], []
    a_rows, a_cols, a_vals = [], [], []
    # (drawn after the footprints so that ring_fraction=0 movies are unchanged)
    ring = np.zeros(K, bool)
    for k, (y0, x0, P) in enumerate(_render_footprints(centers, sigmas, angles, order, pad)):
        P, rows, cols, vals = _fov_column(y0, x0, P, pad, dims, k)
        solid.append((y0, x0, P))
        patches.append((y0, x0, P))
        a_rows.append(rows)
        a_cols.append(cols)
        a_vals.append(vals)
    if ring_fraction > 0 and K:
        # Ring cells: the nucleus dims the activity footprint too (the peak
        # moves to the cytoplasm, renormalised to 1 over the field of view).
        rng_ring = np.random.default_rng(ss.spawn(7)[6])
        ring = rng_ring.random(K) < ring_fraction
        for k in np.nonzero(ring)[0]:
            y0, x0, P = patches[k]
            Q = P * _nucleus_factor(y0, x0, P.shape, centers[k], sigmas[k], angles[k], pad,
                                    ring_depth)
            Q, a_rows[k], a_cols[k], a_vals[k] = _fov_column(y0, x0, Q, pad, dims, k)
            patches[k] = (y0, x0, Q)
    if K:
        A = sp.csc_matrix((np.concatenate(a_vals), (np.concatenate(a_rows),
                           np.concatenate(a_cols))), shape=(dims[0] * dims[1], K))
    else:
        A = sp.csc_matrix((dims[0] * dims[1], 0))

    # --- activity
    if decay_spread > 0:
        rng_dec = np.random.default_rng(ss.spawn(8)[7])
        taus = decay_time * rng_dec.lognormal(-decay_spread**2 / 2, decay_spread, K)
        taus = np.maximum(taus, 1.5 * rise_time if p == 2 else 0.5 / fr)
        g_k = np.stack([ar_coefficients(tk, fr, p, rise_time if p == 2 else None)
                        for tk in taus]) if K else np.zeros((0, p))
    else:
        g_k = np.tile(g, (K, 1))
    if spikes == "bursts":
        S = simulate_bursts(rng_t, K, T, fr, firing_rate, amplitude=1.0, burst_size=burst_size)
    else:
        S = simulate_spikes(rng_t, K, T, fr, firing_rate, amplitude=1.0)
    if decay_spread > 0:     # one transient peak per cell whatever its kinetics
        S = S * (amplitude / np.array([_kernel_peak(gk) for gk in g_k]))[:, None]
    else:
        S = S * (amplitude / _kernel_peak(g))
    C = calcium_from_spikes(S, g_k if decay_spread > 0 else g)
    decay = (1 - bleach) ** (np.arange(T) / max(T - 1, 1)) if bleach > 0 else None

    # --- background (fields on the canvas, periodic there)
    if kind == "2p":
        base = baseline * (0.7 + 0.3 * _smooth_field(rng_bg, canvas, 4 * bg_scale))
        npil = [neuropil * _smooth_field(rng_bg, canvas, bg_scale) for _ in range(max(nb - 1, 1))]
        fl = [1 + bg_fluct * _smooth_trace(rng_bg, T, 3 * fr) for _ in range(max(nb - 1, 1))]
        # Static anatomy: the cells' resting fluorescence (plus silent cells)
        # adds to the baseline; vessel shadows dim every static field.
        base = base + _resting_anatomy(rng_an, solid, centers, sigmas, angles, order, pad,
                                       canvas, dims, resting * amplitude, resting_spread,
                                       nucleus, n_silent, gSig, size_spread, max_aspect)
        shade = _vessel_shadows(rng_an, canvas, pad, dims, n_vessels, vessel_depth)
        base = base * shade
        npil = [x * shade for x in npil]
        if nb == 1:
            b_c = [base + npil[0]]
            f_ = [np.clip(fl[0], 0.05, None)]
        else:
            drift = 1 - 0.05 * np.linspace(0, 1, T) + 0.02 * _smooth_trace(rng_bg, T, 10 * fr)
            b_c = [base] + npil
            f_ = [drift] + [np.clip(x, 0.05, None) for x in fl]
    else:
        yy, xx = np.meshgrid(np.arange(Hc) - pad, np.arange(Wc) - pad, indexing="ij")
        # The bright blob: a smooth field biased towards the centre of view.
        big = _smooth_field(rng_bg, canvas, 3 * bg_scale)
        cy, cx = dims[0] / 2, dims[1] / 2
        vign = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.6 * max(dims)) ** 2))
        vign = _periodic_smooth(vign, canvas)
        b_c = [0.5 + 0.5 * big * vign + 0.5 * vign]
        t = np.linspace(0, 1, T)
        f_ = [(0.85 + 0.15 * np.exp(-3 * t)) * (1 + 0.05 * _smooth_trace(rng_bg, T, 10 * fr))]
        for _ in range(nb - 1):
            b_c.append(0.4 * _smooth_field(rng_bg, canvas, bg_scale))
            f_.append(np.clip(1 + bg_fluct * _smooth_trace(rng_bg, T, 1.0 * fr), 0.05, None))
        shade = None
        if n_vessels:
            # Vessels shadow all the light, in and out of focus: the static
            # texture that high-pass filtered (gSig_filt) registration sees.
            shade = _vessel_shadows(rng_an, canvas, pad, dims, n_vessels, vessel_depth)
            b_c = [x * shade for x in b_c]
    b_canvas = np.stack([x.ravel() for x in b_c], 1)          # C order on the canvas
    f = np.stack(f_).astype(np.float64)
    if kind == "1p":
        # Scale the background to bg_ratio x the median neuron peak.
        crop = b_canvas.reshape(Hc, Wc, nb)[pad:pad + dims[0], pad:pad + dims[1]]
        mean_bg = float(crop.reshape(-1, nb).mean(0) @ f.mean(1))
        cell_peak = float(np.median(C.max(1))) if K else amplitude
        b_canvas *= bg_ratio * cell_peak / mean_bg
        if n_out_of_focus:
            ob, of = _out_of_focus(np.random.default_rng(ss.spawn(9)[8]), n_out_of_focus,
                                   dims, canvas, pad, gSig, T, fr, firing_rate, g,
                                   amplitude / _kernel_peak(g), shade)
            b_canvas = np.concatenate([b_canvas, ob], 1)
            f = np.concatenate([f, of], 0)
    nb_all = b_canvas.shape[1]
    if decay is not None:
        C = C * decay
        f = f * decay
    b = np.stack([b_canvas[:, j].reshape(Hc, Wc)[pad:pad + dims[0], pad:pad + dims[1]]
                  .ravel(order="F") for j in range(nb_all)], 1)

    # --- motion
    shifts = np.zeros((T, 2))
    wfield = None
    if motion == "rigid":
        shifts = rigid_trajectory(rng_mo, T, fr, max_shift, jitter=motion_jitter,
                                  timescale=motion_timescale)
    elif motion == "nonrigid":
        wfield = _NonrigidField(rng_mo, T, fr, dims, max_shift, nonrigid_amplitude,
                                jitter=motion_jitter, timescale=motion_timescale)
    flow = np.zeros((T, 2) + dims, np.float32) if motion == "nonrigid" else None

    # --- render, move, add noise, chunk by chunk (torch, for its threads)
    movie = np.empty((T,) + dims, np.float32) if sink is None else None
    clean = np.empty((T,) + dims, np.float32) if keep_clean else None
    mean_F = torch.zeros(dims, dtype=torch.float64)
    tgen = torch.Generator().manual_seed(int(rng_nz.integers(2**62)))
    Ct = torch.from_numpy(np.ascontiguousarray(C.T, dtype=np.float32))      # (T, K)
    ft = torch.from_numpy(np.ascontiguousarray(f.T, dtype=np.float32))      # (T, nb)
    bT = torch.from_numpy(np.ascontiguousarray(b_canvas.T, dtype=np.float32))
    tpatches = [(y0, x0, torch.from_numpy(P)) for (y0, x0, P) in patches]
    sl = (slice(None), slice(pad, pad + dims[0]), slice(pad, pad + dims[1]))
    yy, xx = np.meshgrid(np.arange(dims[0], dtype=float), np.arange(dims[1], dtype=float),
                         indexing="ij")
    for t0 in range(0, T, _CHUNK):
        t1 = min(t0 + _CHUNK, T)
        n = t1 - t0
        X = (ft[t0:t1] @ bT).view(n, Hc, Wc)
        for k, (y0, x0, P) in enumerate(tpatches):
            h, w = P.shape
            # An explicit outer product: broadcasting into the strided
            # slice is an order of magnitude slower on the CPU.
            X[:, y0:y0 + h, x0:x0 + w].add_(torch.outer(Ct[t0:t1, k], P.reshape(-1)).view(n, h, w))
        if motion == "rigid":
            obs = fourier_shift(X, torch.from_numpy(shifts[t0:t1]))[sl]
        elif motion == "nonrigid":
            tt = np.arange(t0, t1)
            w = wfield(tt, np.broadcast_to(yy, (n,) + dims), np.broadcast_to(xx, (n,) + dims))
            obs = spline_warp(X, torch.from_numpy(yy + pad + w[:, 0]),
                              torch.from_numpy(xx + pad + w[:, 1]))
            flow[t0:t1] = _invert_field(wfield, tt, dims)
        else:
            obs = X[sl]
        obs = obs.contiguous()
        mean_F += obs.sum(0, dtype=torch.float64)
        # The clean movie gets the same draws, its shot noise scaled by its
        # own intensity, so it is exactly the movie made with motion=None.
        z_read = noise * torch.randn(obs.shape, generator=tgen)
        Xc = X[sl]
        nz, nz_c = z_read, z_read
        if gain is not None:
            Fpos = obs.clamp(min=0)
            if shot_noise == "gaussian":
                z = torch.randn(obs.shape, generator=tgen)
                nz = z_read + (Fpos / gain).sqrt_() * z
                if keep_clean:
                    nz_c = z_read + (Xc.clamp(min=0) / gain).sqrt_() * z
            else:
                nz = z_read + torch.poisson(Fpos * gain, generator=tgen) / gain - Fpos
                if keep_clean:
                    Fc = Xc.clamp(min=0)
                    nz_c = z_read + torch.poisson(Fc * gain, generator=tgen) / gain - Fc
        if sink is None:
            movie[t0:t1] = (obs + nz).numpy()
        else:
            sink(t0, (obs + nz).numpy())
        if keep_clean:
            clean[t0:t1] = (Xc + nz_c).numpy()
    mean_F = mean_F.numpy()
    mean_F /= T
    sn_img = np.sqrt(noise**2 + (np.clip(mean_F, 0, None) / gain if gain is not None else 0))
    if motion == "nonrigid":
        shifts = flow.mean(axis=(2, 3)).astype(np.float64)
    scale = 1.0
    if dtype == "uint16":
        # The digitiser: photon counts (gain per movie unit) on a dark offset.
        scale = float(gain) if gain is not None else 1.0 / max(noise, 1e-3)
        movie = np.clip(np.rint(adc_offset + scale * movie), 0, 65535).astype(np.uint16)
        C, S, b, sn_img = C * scale, S * scale, b * scale, sn_img * scale

    truth = GroundTruth(
        A=A, C=C.astype(np.float32), S=S.astype(np.float32), b=b.astype(np.float32),
        f=f.astype(np.float32), g=g_k.astype(np.float64),
        sn=sn_img.ravel(order="F").astype(np.float32),
        dims=dims, shifts=shifts.astype(np.float32), flow=flow, clean=clean, kind=kind, fr=fr,
        decay_time=decay_time, rise_time=rise_time if p == 2 else None, centers=centers,
        sigmas=sigmas, angles=angles, gain=gain, read_noise=noise,
        params=dict(kind=kind, dims=dims, n_frames=T, n_neurons=K, fr=fr, decay_time=decay_time,
                    p=p, noise=noise, motion=motion, max_shift=max_shift, seed=seed,
                    gSig=gSig, nb=nb, gain=gain, bg_ratio=bg_ratio, pad=pad, canvas=canvas,
                    footprint_order=order, nonrigid_amplitude=nonrigid_amplitude,
                    resting=resting, nucleus=nucleus, n_silent=n_silent, n_vessels=n_vessels,
                    vessel_depth=vessel_depth, ring_fraction=ring_fraction, ring=ring,
                    ring_depth=ring_depth, spikes=spikes, decay_spread=decay_spread,
                    bleach=bleach, n_out_of_focus=n_out_of_focus, dtype=dtype,
                    adc_offset=adc_offset if dtype == "uint16" else 0.0, adc_scale=scale))
    return movie, truth


def _add_wrapped(img: np.ndarray, y0: int, x0: int, patch: np.ndarray) -> None:
    """Add a patch at (y0, x0) onto the periodic canvas (indices wrap)."""
    Hc, Wc = img.shape
    iy = np.arange(y0, y0 + patch.shape[0]) % Hc
    ix = np.arange(x0, x0 + patch.shape[1]) % Wc
    np.add.at(img, (iy[:, None], ix[None, :]), patch)


def _resting_anatomy(rng, patches, centers, sigmas, angles, order, pad, canvas, dims,
                     level, spread, nucleus, n_silent, gSig, size_spread, max_aspect):
    """Resting fluorescence of every cell on the canvas.

    Active cell k shows ``r_k * a_k(y) * (1 - nucleus * n_k(y))`` where
    ``a_k`` is its footprint, ``r_k`` log-normal around ``level`` and
    ``n_k`` a Gaussian nucleus half the cell's size (smooth, so Fourier
    shifts stay exact). ``n_silent`` cells that never fire are drawn the
    same way at half the brightness, away from the active centres.
    """
    img = np.zeros(canvas)
    if level <= 0:
        return img
    K = len(patches)
    r = level * rng.lognormal(-spread**2 / 2, spread, K + n_silent)

    def draw(y0, x0, P, cen, sig, ang, rk):
        _add_wrapped(img, y0, x0,
                     rk * P * _nucleus_factor(y0, x0, P.shape, cen, sig, ang, pad, nucleus))

    for k, (y0, x0, P) in enumerate(patches):
        draw(y0, x0, P, centers[k], sigmas[k], angles[k], r[k])
    if n_silent:
        # Best effort: keep silent cells a cell radius away from active ones.
        cand = rng.uniform(0, 1, (16 * n_silent, 2)) * (np.array(dims) - 1)
        if K:
            d = np.hypot(cand[:, None, 0] - centers[None, :, 0],
                         cand[:, None, 1] - centers[None, :, 1]).min(1)
            cand = cand[np.argsort(d < gSig, kind="stable")]
        cen = cand[:n_silent]
        scale = 1 + size_spread * rng.uniform(-1, 1, n_silent)
        aspect = rng.uniform(1, max_aspect, n_silent)
        sig = gSig * scale[:, None] * np.stack([np.sqrt(aspect), 1 / np.sqrt(aspect)], 1)
        ang = rng.uniform(0, np.pi, n_silent)
        for j, (y0, x0, P) in enumerate(_render_footprints(cen, sig, ang, order, pad)):
            draw(y0, x0, P, cen[j], sig[j], ang[j], 0.5 * r[K + j])
    return img


def _out_of_focus(rng, n, dims, canvas, pad, gSig, T, fr, firing_rate, g, amplitude,
                  shade) -> tuple[np.ndarray, np.ndarray]:
    """Cells above or below the focal plane (1p): blurred 2.5x, a third as
    bright, Gaussian-like (order 12 bumps, periodic on the canvas), each
    with its own Poisson spike train. Returns background columns
    (canvas pixels, n) in C order and their time courses (n, T)."""
    cen = rng.uniform(0, 1, (n, 2)) * (np.array(dims) - 1)
    sig = 2.5 * gSig * rng.uniform(0.8, 1.2, n)
    cols = []
    for j in range(n):
        img = np.zeros(canvas)
        for y0, x0, P in _render_footprints(cen[j:j + 1], np.array([[sig[j], sig[j]]]),
                                            np.zeros(1), 12, pad):
            _add_wrapped(img, y0, x0, P / 3.0)
        if shade is not None:
            img = img * shade
        cols.append(img.ravel())
    S = simulate_spikes(rng, n, T, fr, firing_rate, amplitude=amplitude)
    return np.stack(cols, 1), calcium_from_spikes(S, g)


def _vessel_shadows(rng, canvas, pad, dims, n_vessels, depth) -> np.ndarray:
    """Multiplicative shading (<= 1) of a few dark, curved blood vessels.

    Each vessel is a circular arc through the field of view with a Gaussian
    cross-section (sigma 2.5-4 px), drawn as a dense chain of Gaussians
    whose density D_v is 1 on the centre line; the shade is the product of
    ``1 - depth * D_v`` over vessels (darker where they cross, never
    negative). Each factor is as band-limited as its Gaussian profile and
    periodic on the canvas, so Fourier shifts of the scene stay exact (a
    saturating nonlinearity of D would sharpen the profile and break that).
    """
    shade = np.ones(canvas)
    L = float(max(dims))
    for _ in range(n_vessels):
        dens = np.zeros(canvas)
        width = rng.uniform(2.5, 4.0)
        p0 = rng.uniform(0.2, 0.8, 2) * np.array(dims) + pad
        th0 = rng.uniform(0, 2 * np.pi)
        kappa = rng.uniform(-1.5, 1.5) / L
        length = rng.uniform(0.8, 1.4) * L
        ds = 0.5
        s = np.arange(-length / 2, length / 2, ds)
        th = th0 + kappa * s
        # arc-length integration of the direction: points ds apart
        pts = p0 + np.cumsum(np.stack([np.cos(th), np.sin(th)], 1) * ds, 0)
        pts -= pts[len(pts) // 2] - p0
        taper = np.clip(np.minimum(s - s[0], s[-1] - s) / (4 * width), 0, 1)
        taper = taper * taper * (3 - 2 * taper)
        R = int(np.ceil(4 * width))
        lo = np.floor(pts.min(0)).astype(int) - R
        hi = np.ceil(pts.max(0)).astype(int) + R
        gy = np.arange(lo[0], hi[0] + 1)
        gx = np.arange(lo[1], hi[1] + 1)
        acc = np.zeros((len(gy), len(gx)))
        norm = ds / (np.sqrt(2 * np.pi) * width)
        for (py, px), w in zip(pts, taper):
            if w <= 0:
                continue
            iy = slice(int(py) - R - lo[0], int(py) + R + 2 - lo[0])
            ix = slice(int(px) - R - lo[1], int(px) + R + 2 - lo[1])
            ey = np.exp(-(gy[iy] - py) ** 2 / (2 * width**2))
            ex = np.exp(-(gx[ix] - px) ** 2 / (2 * width**2))
            acc[iy, ix] += (w * norm) * ey[:, None] * ex[None, :]
        _add_wrapped(dens, lo[0], lo[1], acc)
        shade *= 1 - depth * np.clip(dens, 0, 1)
    return shade


def _periodic_smooth(img: np.ndarray, canvas) -> np.ndarray:
    """Make a smooth image periodic on the canvas by low-passing it in
    Fourier space; the bright-blob vignette is not periodic by itself."""
    Hc, Wc = canvas
    ky = np.fft.fftfreq(Hc)[:, None]
    kx = np.fft.rfftfreq(Wc)[None, :]
    filt = np.exp(-2 * np.pi**2 * 4.0**2 * (ky**2 + kx**2))
    return np.fft.irfft2(np.fft.rfft2(img) * filt, s=(Hc, Wc))


def standard_2p(seed: int = 0, **overrides):
    """The standard 2p benchmark movie: 256x256, 2000 frames at 30 Hz,
    120 overlapping neurons, neuropil, rigid motion up to 5 px.

    ``truth.clean`` is not kept (pass ``keep_clean=True`` to get it).
    """
    kw = dict(kind="2p", dims=(256, 256), n_frames=2000, n_neurons=120, motion="rigid",
              max_shift=5.0, keep_clean=False, seed=seed)
    kw.update(overrides)
    return make_movie(**kw)


# The hard movies: what real data does that the standard ones do not. Each
# option is documented in make_movie; why each is there:
# - rings (ring_fraction): GCaMP is cytosolic, so many somata are bright
#   annuli around a dim nucleus; blob detectors centred on the brightest
#   pixel split or miss them.
# - sizes and ellipticities +-30 % (size_spread, max_aspect): a single gSig
#   is never right for every cell.
# - dense overlap (min_dist 1.1 gSig, many cells): merging and the greedy
#   initialisation's residual must separate touching cells.
# - bursts of spikes with varied amplitudes (spikes='bursts'): transients
#   from barely detectable to saturating, as cortical neurons fire.
# - AR(2) calcium with a rise time, decay times varying per cell
#   (p=2, decay_spread): the fitted model's p=1 is then only approximate.
# - per-cell baselines (resting, 2p): every cell is visible at rest, so the
#   static anatomy competes with the activity.
# - neuropil as smooth low-rank background with its own fluctuations (nb=3).
# - photobleaching (bleach): baselines and transients shrink over the
#   recording; detrending and the background's drift must absorb it.
# - Poisson-Gaussian noise stored as uint16 photon counts on a dark offset
#   (shot_noise='poisson', dtype='uint16'): the noise variance follows the
#   brightness and the movie must be read as integers.
# - rigid jitter plus a smooth non-rigid warp (motion='nonrigid'; the
#   defaults below use rigid motion: the exact warp and its inverse field
#   cost ~10x the rest of the movie, pass motion='nonrigid' to add it).
# - 1p: a background 8x brighter than the cells' peaks that drifts and
#   fluctuates (bg_ratio, bg_fluct, nb), blood-vessel shadows (n_vessels)
#   and out-of-focus cells (n_out_of_focus) that belong to the background.
_HARD = {
    "2p": dict(kind="2p", dims=(200, 200), n_frames=1500, n_neurons=100, p=2,
               rise_time=0.06, decay_time=0.5, decay_spread=0.25, spikes="bursts",
               firing_rate=0.6, size_spread=0.3, max_aspect=1.7, min_dist=5.5,
               ring_fraction=0.5, ring_depth=0.6, nb=3, neuropil=0.4, bg_fluct=0.15,
               bleach=0.25, shot_noise="poisson", dtype="uint16", motion="rigid",
               max_shift=4.0, keep_clean=False),
    "1p": dict(kind="1p", dims=(200, 200), n_frames=1500, n_neurons=60, p=2,
               rise_time=0.08, decay_time=0.6, decay_spread=0.25, spikes="bursts",
               firing_rate=0.6, size_spread=0.3, max_aspect=1.7, min_dist=5.0,
               nb=4, bg_ratio=8.0, bg_fluct=0.5, n_vessels=3, vessel_depth=0.3,
               n_out_of_focus=12, bleach=0.2, shot_noise="poisson", dtype="uint16",
               motion="rigid", max_shift=3.0, keep_clean=False),
}


def hard_2p(seed: int = 0, **overrides):
    """A hard two-photon movie (200x200x1500 at 30 Hz, 100 cells): ring
    cells, sizes and shapes +-30 %, dense overlap, bursts, AR(2) kinetics
    varying per cell, resting anatomy, low-rank neuropil, 25 %
    photobleaching, Poisson-Gaussian noise as uint16 counts, rigid motion
    with jitter (``motion='nonrigid'`` adds a smooth warp; see the comment
    above ``_HARD`` for why each feature is there).
    Keyword arguments override :func:`make_movie`'s."""
    kw = dict(_HARD["2p"], seed=seed)
    kw.update(overrides)
    return make_movie(**kw)


def hard_1p(seed: int = 0, **overrides):
    """A hard one-photon movie (200x200x1500 at 30 Hz, 60 cells): the hard
    cell and activity features of :func:`hard_2p` under a background 8x
    brighter than the cells' peaks that drifts and fluctuates, three
    blood-vessel shadows, 12 out-of-focus cells in the background, 20 %
    photobleaching, Poisson-Gaussian uint16 counts and rigid motion."""
    kw = dict(_HARD["1p"], seed=seed)
    kw.update(overrides)
    return make_movie(**kw)


def standard_1p(seed: int = 0, **overrides):
    """The standard 1p benchmark movie: 256x256, 2000 frames at 30 Hz, 70
    neurons under a background 5x brighter than their peaks, no motion."""
    kw = dict(kind="1p", dims=(256, 256), n_frames=2000, n_neurons=70, seed=seed)
    kw.update(overrides)
    return make_movie(**kw)
