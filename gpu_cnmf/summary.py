"""Summary images of a movie, streamed over frames on the CPU or a GPU.

Every function here reads the movie once (``correlation_pnr`` twice) in
chunks of frames sized by :func:`gpu_cnmf.backend.frames_per_chunk`, so a
movie larger than the device's memory (or RAM, when it is a memory map or a
:class:`gpu_cnmf.io.MovieSource`) is fine. The work is written once for torch
tensors and runs on ``cpu`` and ``cuda`` alike.

Images returned are host numpy arrays shaped like one frame, ``dims``.

- mean, max, std images (:func:`summary_images`, :func:`mean_image`, ...);
- the local correlation image ``Cn`` (:func:`local_correlations`): for each
  pixel, the mean over its 4 (or 8; 6 or 26 in 3D) neighbours of the Pearson
  correlation in time between the pixel and the neighbour;
- the peak-to-noise ratio image (:func:`pnr_image`): the largest excursion
  of each pixel above its mean divided by its noise std, the noise being read
  off the high-frequency part of its power spectrum (robust to the slow
  calcium signal);
- CNMF-E's pair (:func:`correlation_pnr`): both images of the movie after a
  spatial filter with a mean-centred Gaussian kernel, the correlation image
  of the PNR-thresholded movie (Zhou et al., eLife 2018).

Streamed sums are numerically delicate: a pixel with a large baseline and a
small variance loses all its digits in ``sum(x**2) - T*mean**2``. The sums
here are taken of the movie minus the first chunk's mean (a fixed shift per
pixel, close to the true mean) and accumulated in float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backend import count_movie_io, frames_per_chunk, get_device, to_tensor
from .errors import MovieError, ParameterError

__all__ = [
    "iter_movie", "movie_shape", "summary_images", "mean_image", "max_image",
    "std_image", "local_correlations", "pnr_image", "correlation_pnr",
    "psf_kernel", "spatial_filter", "neighbour_offsets", "max_correlation_image",
    "running_percentile_baseline", "gaussian_blur_frames", "local_correlations_movie",
]


# --------------------------------------------------------------------------
# reading a movie in chunks

def movie_shape(movie, swap_dim: bool = False) -> tuple[int, tuple[int, ...]]:
    """Number of frames and frame shape of an array, tensor or MovieSource.

    ``swap_dim=True`` means time is the last axis (``(*dims, T)``), as in
    CaImAn's ``swap_dim``.
    """
    if hasattr(movie, "iter_chunks"):
        if swap_dim:
            raise ParameterError("swap_dim: a MovieSource is always (T, *dims); "
                                 "swap_dim=True applies to arrays only")
        shape = tuple(int(s) for s in movie.shape)
    else:
        shape = tuple(int(s) for s in getattr(movie, "shape", ()))
        if swap_dim:
            shape = shape[-1:] + shape[:-1]
    if len(shape) not in (3, 4):
        raise MovieError(f"movie: expected a (T, d1, d2) or (T, d1, d2, d3) movie, "
                         f"got shape {shape}")
    if shape[0] < 1 or min(shape[1:]) < 1:
        raise MovieError(f"movie: empty movie of shape {shape}")
    return shape[0], shape[1:]


def iter_movie(movie, chunk_frames: int | None = None, device="cpu",
               swap_dim: bool = False, copies: float = 4.0
               ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, frames)`` with ``frames`` a float32 tensor ``(n, *dims)``
    on ``device``.

    Parameters
    ----------
    movie : ndarray, np.memmap, torch.Tensor or MovieSource
        ``(T, *dims)`` (``(*dims, T)`` with ``swap_dim``); a MovieSource (from
        :func:`gpu_cnmf.io.open_movie`) is read with its ``iter_chunks``.
    chunk_frames : int, optional
        Frames per chunk; by default what the device's memory budget allows
        for ``copies`` frame-sized float32 buffers per frame.
    """
    T, dims = movie_shape(movie, swap_dim)
    device = torch.device(device)
    if chunk_frames is None:
        # a source that computes its frames (e.g. minus a background) holds
        # more frame-sized buffers while it reads
        copies = copies + float(getattr(movie, "read_copies", 0))
        chunk_frames = frames_per_chunk(dims, itemsize=4, copies=copies,
                                        device=device, max_frames=T)
    chunk_frames = int(chunk_frames)
    if chunk_frames < 1:
        raise ParameterError(f"chunk_frames: expected a positive number of frames, "
                             f"got {chunk_frames}")
    if hasattr(movie, "iter_chunks"):
        for start, frames in movie.iter_chunks(chunk_frames):
            count_movie_io(read=np.size(frames))
            yield int(start), _to_frames(frames, device)
        return
    for start in range(0, T, chunk_frames):
        stop = min(T, start + chunk_frames)
        if swap_dim:
            frames = movie[..., start:stop]
            frames = (frames.permute(-1, *range(frames.ndim - 1))
                      if isinstance(frames, torch.Tensor)
                      else np.moveaxis(np.asarray(frames), -1, 0))
        else:
            frames = movie[start:stop]
        if isinstance(movie, np.memmap):
            count_movie_io(read=np.size(frames))
        yield start, _to_frames(frames, device)


def _to_frames(frames, device) -> torch.Tensor:
    t = to_tensor(frames, device, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise MovieError("movie: contains NaN or infinite values; fill or drop "
                         "those frames first (open_movie(..., check_nan=True) "
                         "names them)")
    return t


# --------------------------------------------------------------------------
# neighbours and streamed moments

def neighbour_offsets(ndim: int, eight_neighbours: bool = True) -> list[tuple[int, ...]]:
    """Half of a pixel's neighbourhood: one offset of each +/- pair.

    2D: 2 offsets (4-connected) or 4 (8-connected); 3D: 3 (6-connected) or 13
    (26-connected).
    """
    if ndim not in (2, 3):
        raise MovieError(f"movie: frames must be 2D or 3D, got {ndim}D")
    out = []
    for o in product((-1, 0, 1), repeat=ndim):
        if not any(o) or o <= tuple(-v for v in o):
            continue  # keep only the lexicographically positive half
        if not eight_neighbours and sum(map(abs, o)) != 1:
            continue
        out.append(o)
    return out


def _pair_slices(offset: Sequence[int], dims: Sequence[int]):
    """Slices (a, b) of a frame so that ``x[b]`` is ``x[a]``'s neighbour at
    ``offset``."""
    a, b = [], []
    for d, n in zip(offset, dims):
        if d >= 0:
            a.append(slice(0, n - d)), b.append(slice(d, n))
        else:
            a.append(slice(-d, n)), b.append(slice(0, n + d))
    return (Ellipsis, *a), (Ellipsis, *b)


@dataclass
class PixelMoments:
    """Streamed per-pixel moments of a movie, and of neighbouring pairs
    (``offsets`` from :func:`neighbour_offsets`); ``update`` with each chunk
    of frames, then read ``mean``, ``var`` or ``correlation_image``."""
    dims: tuple
    device: torch.device
    offsets: list = field(default_factory=list)
    n: int = 0
    shift: torch.Tensor | None = None
    s1: torch.Tensor | None = None
    s2: torch.Tensor | None = None
    mx: torch.Tensor | None = None
    sxy: list = field(default_factory=list)

    def update(self, x: torch.Tensor) -> None:
        if self.shift is None:
            self.shift = x.mean(0)
            f64 = dict(dtype=torch.float64, device=self.device)
            self.s1 = torch.zeros(self.dims, **f64)
            self.s2 = torch.zeros(self.dims, **f64)
            self.mx = torch.full(self.dims, -torch.inf, device=self.device)
            self.sxy = [torch.zeros([n - abs(d) for n, d in zip(self.dims, o)], **f64)
                        for o in self.offsets]
        self.n += x.shape[0]
        self.mx = torch.maximum(self.mx, x.amax(0))
        # per-chunk sums in float32 (tree reductions, on centred data), the
        # running totals in float64
        xc = x - self.shift
        self.s1 += xc.sum(0)
        self.s2 += (xc * xc).sum(0)
        for o, acc in zip(self.offsets, self.sxy):
            sa, sb = _pair_slices(o, self.dims)
            acc += (xc[sa] * xc[sb]).sum(0)

    def mean(self) -> torch.Tensor:
        return self.s1 / self.n + self.shift.double()

    def var(self) -> torch.Tensor:
        m = self.s1 / self.n
        return (self.s2 / self.n - m * m).clamp_min(0)

    def correlation_image(self, order_mean: float = 1) -> torch.Tensor:
        """Power mean, over each pixel's neighbours, of the Pearson
        correlations with them: ``(sum_j r_ij**p / n_i) ** (1/p)`` with
        ``p = order_mean`` and ``n_i`` the neighbours the pixel has (fewer at
        borders); ``p = 0`` is the geometric mean ``(prod_j r_ij) ** (1/n_i)``.
        A negative value under a non-integer power gives NaN, as the
        definition does."""
        p = float(order_mean)
        m = self.s1 / self.n
        var = self.var()
        # variances below float32 resolution of the data are treated as 0:
        # such a pixel is constant and correlates with nothing.
        tiny = (self.s2 / self.n) * 1e-10 + 1e-30
        sd = torch.where(var > tiny, var.sqrt(), torch.zeros_like(var))
        geometric = p == 0
        cn = (torch.ones if geometric else torch.zeros)(self.dims, dtype=torch.float64,
                                                        device=self.device)
        count = torch.zeros_like(cn)
        for o, acc in zip(self.offsets, self.sxy):
            sa, sb = _pair_slices(o, self.dims)
            cov = acc / self.n - m[sa] * m[sb]
            den = sd[sa] * sd[sb]
            r = torch.where(den > 0, cov / den.clamp_min(1e-300), torch.zeros_like(cov))
            r = r.clamp(-1, 1)
            if geometric:
                cn[sa] *= r
                cn[sb] *= r
            else:
                r = r if p == 1 else r.pow(p)
                cn[sa] += r
                cn[sb] += r
            count[sa] += 1
            count[sb] += 1
        count = count.clamp_min(1)
        if geometric:
            return cn.pow(1.0 / count)
        cn = cn / count
        return cn if p == 1 else cn.pow(1.0 / p)


def _accumulate(movie, offsets, device, chunk_frames, swap_dim, transform=None):
    T, dims = movie_shape(movie, swap_dim)
    mom = PixelMoments(dims=tuple(dims), device=device, offsets=offsets)
    for _start, x in iter_movie(movie, chunk_frames, device, swap_dim,
                                copies=4 + len(offsets)):
        mom.update(x if transform is None else transform(x))
    return mom


def _host(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float32).cpu().numpy()


# --------------------------------------------------------------------------
# public summary images

def summary_images(movie, eight_neighbours: bool = True, swap_dim: bool = False,
                   use_cuda=False, chunk_frames: int | None = None) -> dict:
    """Mean, max, std and local correlation images in one pass over the movie.

    Parameters
    ----------
    movie : ndarray, tensor or MovieSource
        ``(T, *dims)``, or ``(*dims, T)`` with ``swap_dim=True``.
    eight_neighbours : bool
        Correlate with the 8 (26 in 3D) surrounding pixels, else with the 4
        (6) sharing an edge.
    use_cuda : bool or device
        Where to compute (see :func:`gpu_cnmf.backend.get_device`).
    chunk_frames : int, optional
        Frames per chunk (default: from the device memory budget).

    Returns
    -------
    dict
        ``mean``, ``max``, ``std`` (population std, ``ddof=0``) and ``Cn``,
        float32 arrays of shape ``dims``.
    """
    device = get_device(use_cuda)
    T, dims = movie_shape(movie, swap_dim)
    mom = _accumulate(movie, neighbour_offsets(len(dims), eight_neighbours),
                      device, chunk_frames, swap_dim)
    return {"mean": _host(mom.mean()), "max": _host(mom.mx),
            "std": _host(mom.var().sqrt()), "Cn": _host(mom.correlation_image())}


def mean_image(movie, swap_dim=False, use_cuda=False, chunk_frames=None) -> np.ndarray:
    """Temporal mean of each pixel (float64 accumulation)."""
    mom = _accumulate(movie, [], get_device(use_cuda), chunk_frames, swap_dim)
    return _host(mom.mean())


def max_image(movie, swap_dim=False, use_cuda=False, chunk_frames=None) -> np.ndarray:
    """Temporal maximum of each pixel."""
    mom = _accumulate(movie, [], get_device(use_cuda), chunk_frames, swap_dim)
    return _host(mom.mx)


def std_image(movie, swap_dim=False, use_cuda=False, chunk_frames=None) -> np.ndarray:
    """Temporal standard deviation (``ddof=0``) of each pixel."""
    mom = _accumulate(movie, [], get_device(use_cuda), chunk_frames, swap_dim)
    return _host(mom.var().sqrt())


def local_correlations(movie, eight_neighbours: bool = True, swap_dim: bool = False,
                       use_cuda=False, chunk_frames: int | None = None,
                       order_mean: float = 1) -> np.ndarray:
    """Local correlation image ``Cn`` (CaImAn's ``local_correlations``).

    Each pixel gets the mean, over its neighbours, of the Pearson correlation
    in time between it and the neighbour. Border pixels average over the
    neighbours they have; a constant pixel correlates 0 with everything.
    Cells, whose pixels share one calcium trace, come out bright; pixels of
    independent noise near 0.

    This is CaImAn's documented definition: standardise each pixel's time
    series (mean 0, population std 1), average the products with each
    neighbour over time (the Pearson correlation), and average those over
    the neighbours. CaImAn's ``local_correlations_fft`` (its CNMF ``Cn``,
    ``max_correlation_image``, ``correlation_pnr``) computes exactly this.
    Its direct ``local_correlations`` with ``eight_neighbours=True`` does
    not quite: two of the four diagonal terms it adds to a pixel are the
    correlations between two of the pixel's edge neighbours (left with up,
    left with down) instead of the pixel's own correlations with its
    up-left and down-left neighbours, which shifts its values by up to
    ~0.03 on synthetic 2p movies and ~0.13 on real ones; the 4-neighbour
    image and the other diagonals agree. Here every pixel averages its own
    correlations.

    Parameters as in :func:`summary_images`, and
    order_mean : float
        Power of the mean over neighbours (1: arithmetic, 2: quadratic, 0:
        geometric), CaImAn's ``order_mean``.

    Returns float32 ``dims``.
    """
    device = get_device(use_cuda)
    T, dims = movie_shape(movie, swap_dim)
    mom = _accumulate(movie, neighbour_offsets(len(dims), eight_neighbours),
                      device, chunk_frames, swap_dim)
    return _host(mom.correlation_image(order_mean))


# --------------------------------------------------------------------------
# CNMF-E's spatial filter, noise and PNR

def psf_kernel(gSig, center_psf: bool = True) -> np.ndarray:
    """Gaussian kernel of std ``gSig`` (per axis) spanning +/- 2 gSig pixels.

    With ``center_psf`` (CNMF-E, 1p data) the kernel is made zero-mean on the
    disk where it exceeds its own border, and zero outside: filtering with it
    removes the smooth out-of-focus background and keeps neuron-sized blobs.
    Without, it sums to 1 (a plain Gaussian blur).
    """
    g = np.atleast_1d(np.asarray(gSig, dtype=float))
    if g.size == 1:
        g = np.repeat(g, 2)
    if g.size != 2 or np.any(g <= 0):
        raise ParameterError(f"gSig: expected one or two positive numbers, got {gSig!r}")
    axes = []
    for s in g:
        r = int(2 * s)
        x = np.arange(-r, r + 1, dtype=float)
        k = np.exp(-x * x / (2 * s * s))
        axes.append(k / k.sum())
    psf = np.outer(axes[0], axes[1])
    if center_psf:
        # the disk: where the kernel is at least its largest value on the
        # first row (CNMF-E's rule; the same disk as the corners' level set
        # for a round kernel)
        inside = psf >= psf[0].max()
        psf = np.where(inside, psf - psf[inside].mean(), 0.0)
    return psf


def _symmetric_index(n: int, r: int, device) -> torch.Tensor:
    # indices for (d c b a | a b c d | d c b a) padding, as scipy's 'reflect'
    i = torch.arange(-r, n + r, device=device)
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - 1 - i, i)


def _symmetric_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    if r == 0:
        return x
    if r > n:  # frames narrower than the kernel: index the mirrored copies
        return x.index_select(dim, _symmetric_index(n, r, x.device))
    head = x.narrow(dim, 0, r).flip(dim)
    tail = x.narrow(dim, n - r, r).flip(dim)
    return torch.cat([head, x, tail], dim)


def spatial_filter(frames: torch.Tensor, kernel: np.ndarray, border: str = "reflect") -> torch.Tensor:
    """Correlate each 2D frame of ``(n, d1, d2)`` with ``kernel`` (odd sizes)
    by FFT; ``border`` 'reflect' (symmetric, as scipy.ndimage's 'reflect')
    or 'replicate' (edge pixels repeated, OpenCV's BORDER_REPLICATE, which
    CNMF-E's seed filter uses).
    """
    if frames.ndim != 3:
        raise MovieError(f"movie: spatial filtering needs 2D frames, got shape "
                         f"{tuple(frames.shape)[1:]}")
    n, d1, d2 = frames.shape
    k1, k2 = kernel.shape
    r1, r2 = k1 // 2, k2 // 2
    dev = frames.device
    if border == "replicate":
        x = F.pad(frames[:, None], (r2, r2, r1, r1), mode="replicate")[:, 0]
    elif border == "reflect":
        x = _symmetric_pad(_symmetric_pad(frames, r1, 1), r2, 2)
    else:
        raise ParameterError(f"border: expected 'reflect' or 'replicate', got {border!r}")
    P1, P2 = d1 + 2 * r1, d2 + 2 * r2
    # kernel flipped (correlation) and rolled so its centre sits at (0, 0);
    # the padding is wide enough that the circular wrap never reaches the
    # pixels we keep.
    kt = torch.zeros((P1, P2), dtype=torch.float32, device=dev)
    kf = torch.as_tensor(np.ascontiguousarray(kernel[::-1, ::-1]), dtype=torch.float32,
                         device=dev)
    kt[:k1, :k2] = kf
    kt = torch.roll(kt, shifts=(-r1, -r2), dims=(0, 1))
    out = torch.fft.irfft2(torch.fft.rfft2(x) * torch.fft.rfft2(kt), s=(P1, P2))
    return out[:, r1:r1 + d1, r2:r2 + d2]


class _WelchNoise:
    """Per-pixel noise std from the power spectrum averaged over segments.

    White noise of variance s**2 has a flat spectrum at s**2; calcium signal
    lives at low frequencies. Averaging the spectrum over ``noise_range``
    (fractions of the sampling rate, 0.5 = Nyquist) of Hann-windowed
    segments of ``seg`` frames gives s**2 and streams: each segment is one
    FFT over frames we hold anyway.
    """

    def __init__(self, T, dims, device, noise_range=(0.25, 0.5), noise_method="mean",
                 seg=256):
        if not (0 <= noise_range[0] < noise_range[1] <= 0.5):
            raise ParameterError(f"noise_range: expected 0 <= low < high <= 0.5, "
                                 f"got {noise_range}")
        if noise_method not in ("mean", "median", "logmexp"):
            raise ParameterError(f"noise_method: expected 'mean', 'median' or "
                                 f"'logmexp', got {noise_method!r}")
        self.seg = int(min(seg, T))
        self.method = noise_method
        freqs = np.fft.rfftfreq(self.seg)
        sel = (freqs >= noise_range[0]) & (freqs <= noise_range[1])
        if not sel.any():
            sel[-1] = True
        self.sel = torch.as_tensor(np.flatnonzero(sel), device=device)
        if self.seg > 2:
            w = torch.hann_window(self.seg, periodic=False, dtype=torch.float64,
                                  device=device)
        else:
            w = torch.ones(self.seg, dtype=torch.float64, device=device)
        self.window = w.to(torch.float32)
        self.norm = float((w * w).sum())
        self.psd = torch.zeros((len(self.sel), *dims), dtype=torch.float64, device=device)
        self.count = 0
        self.carry = None

    def update(self, x: torch.Tensor) -> None:
        if self.carry is not None:
            x = torch.cat([self.carry, x], 0)
        n_seg = x.shape[0] // self.seg
        if n_seg:
            seg = x[: n_seg * self.seg].reshape(n_seg, self.seg, *x.shape[1:])
            seg = seg - seg.mean(1, keepdim=True)
            w = self.window.reshape(1, -1, *([1] * (x.ndim - 1)))
            spec = torch.fft.rfft(seg * w, dim=1).index_select(1, self.sel)
            self.psd += (spec.real ** 2 + spec.imag ** 2).sum(0, dtype=torch.float64)
            self.count += n_seg
        self.carry = x[n_seg * self.seg:]

    def std(self) -> torch.Tensor:
        psd = self.psd / (self.count * self.norm)
        if self.method == "mean":
            v = psd.mean(0)
        elif self.method == "median":
            v = psd.median(0).values
        else:
            v = torch.exp(torch.log(psd.clamp_min(1e-300)).mean(0))
        return v.sqrt()


def _pnr_pass(movie, gSig, center_psf, swap_dim, device, chunk_frames,
              noise_range, noise_method):
    T, dims = movie_shape(movie, swap_dim)
    kernel = None if gSig is None else psf_kernel(gSig, center_psf)
    mom = PixelMoments(dims=tuple(dims), device=device)
    noise = _WelchNoise(T, tuple(dims), device, noise_range, noise_method)
    for _s, x in iter_movie(movie, chunk_frames, device, swap_dim, copies=8):
        if kernel is not None:
            x = spatial_filter(x, kernel, border="replicate")
        mom.update(x)
        noise.update(x)
    return kernel, mom, noise.std()


def pnr_image(movie, gSig=None, center_psf: bool = True, swap_dim: bool = False,
              noise_range=(0.25, 0.5), noise_method: str = "mean", use_cuda=False,
              chunk_frames: int | None = None) -> np.ndarray:
    """Peak-to-noise ratio of each pixel: ``(max_t x - mean_t x) / sn``.

    Parameters
    ----------
    gSig : int or (int, int), optional
        When given, each frame is first filtered with :func:`psf_kernel`
        (``center_psf`` as there); None reads the raw pixels.
    noise_range, noise_method
        How the noise std ``sn`` is read off the power spectrum (CaImAn's
        meanings: the band in fractions of the frame rate, and 'mean',
        'median' or 'logmexp' over it).

    Returns
    -------
    ndarray, float32, ``dims``; negative ratios are set to 0.
    """
    device = get_device(use_cuda)
    _k, mom, sn = _pnr_pass(movie, gSig, center_psf, swap_dim, device, chunk_frames,
                            noise_range, noise_method)
    return _host(_pnr(mom, sn))


def _pnr(mom, sn):
    peak = mom.mx.double() - mom.mean()
    return torch.where(sn > 0, peak / sn.clamp_min(1e-300), torch.zeros_like(peak)).clamp_min(0)


def correlation_pnr(movie, gSig, center_psf: bool = True, swap_dim: bool = False,
                    threshold: float = 3.0, noise_range=(0.25, 0.5),
                    noise_method: str = "mean", use_cuda=False,
                    chunk_frames: int | None = None,
                    background_filter: str = "disk") -> tuple[np.ndarray, np.ndarray]:
    """CNMF-E's correlation and peak-to-noise ratio images: see
    :func:`gpu_cnmf.cnmf.corr_pnr.correlation_pnr` (the definition)."""
    from .cnmf.corr_pnr import correlation_pnr as _core

    if gSig is None:
        raise ParameterError("gSig: correlation_pnr needs the neuron size gSig "
                             "(e.g. [3, 3] for 1p data)")
    return _core(movie, gSig, center_psf=center_psf, swap_dim=swap_dim,
                 background_filter=background_filter, threshold=threshold,
                 noise_range=noise_range, noise_method=noise_method, use_cuda=use_cuda,
                 chunk_frames=chunk_frames)


# --------------------------------------------------------------------------
# correlation images over time windows

def _time_slice(movie, start: int, stop: int, swap_dim: bool):
    """Frames [start, stop) of an array, tensor or MovieSource, (n, *dims)."""
    if hasattr(movie, "read"):
        return movie.read(start, stop)
    if swap_dim:
        part = movie[..., start:stop]
        return (part.permute(-1, *range(part.ndim - 1)) if isinstance(part, torch.Tensor)
                else np.moveaxis(np.asarray(part), -1, 0))
    return movie[start:stop]


def max_correlation_image(movie, bin_size: int = 1000, eight_neighbours: bool = True,
                          swap_dim: bool = False, use_cuda=False) -> np.ndarray:
    """Pixelwise maximum of the local correlation images of consecutive
    bins of frames (CaImAn's ``max_correlation_image``).

    A neuron active in only part of a long recording correlates strongly
    within the bins where it fires; one image over all frames dilutes it.
    Bins hold ``bin_size`` frames; when the leftover is under half a bin
    the bins are lengthened to ``T // (T // bin_size)`` frames so that none
    is short; frames past the last whole bin are not used. A movie of at
    most ``bin_size`` frames gives its :func:`local_correlations`.
    """
    T, dims = movie_shape(movie, swap_dim)
    b = int(bin_size)
    if b < 2:
        raise ParameterError(f"bin_size: expected at least 2 frames, got {bin_size}")
    if T <= b:
        return local_correlations(movie, eight_neighbours, swap_dim, use_cuda)
    if T % b < b / 2:
        b = T // (T // b)
    out = None
    for i in range(T // b):
        cn = local_correlations(_time_slice(movie, i * b, (i + 1) * b, swap_dim),
                                eight_neighbours, False, use_cuda)
        out = cn if out is None else np.maximum(out, cn)
    return out


def running_percentile_baseline(frames, window: int = 50, quantile: float = 8) -> np.ndarray:
    """Slow baseline of each pixel: the ``quantile``-th percentile of each
    run of ``window`` frames (non-overlapping; a last partial run is not
    used), linearly interpolated back to every frame (run values sit at the
    run centres, constant beyond the first and last) — CaImAn's
    ``movie.removeBL``.

    Parameters
    ----------
    frames : (T, *dims) array
    window : int
        Frames per run (all frames when the movie is shorter).
    quantile : float
        Percentile, 0-100.

    Returns
    -------
    ndarray (T, *dims) float32
    """
    x = np.asarray(frames, dtype=np.float32)
    T = x.shape[0]
    w = min(int(window), T)
    if w < 1:
        raise ParameterError(f"winSize_baseline: expected a positive number of frames, got {window}")
    if not 0 <= float(quantile) <= 100:
        raise ParameterError(f"quantil_min_baseline: expected a percentile in [0, 100], "
                             f"got {quantile}")
    n = T // w
    runs = np.percentile(x[:n * w].reshape((n, w) + x.shape[1:]), float(quantile), axis=1)
    # resampling n run values to T frames with pixel-centre alignment (as an
    # image resize does): frame t reads run position (t + 0.5) n / T - 0.5
    pos = np.clip((np.arange(T) + 0.5) * n / T - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    f = (pos - lo).reshape((T,) + (1,) * (x.ndim - 1)).astype(np.float32)
    return (runs[lo] * (1 - f) + runs[hi] * f).astype(np.float32)


def gaussian_blur_frames(frames, sigma: float = 1.0, radius: int = 2) -> np.ndarray:
    """Blur each 2D frame with a Gaussian of std ``sigma`` on a
    ``2 radius + 1`` square kernel, edge pixels repeated (CaImAn's
    ``movie.gaussian_blur_2D`` defaults: 5 x 5, std 1)."""
    from scipy.ndimage import gaussian_filter
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim != 3:
        raise MovieError(f"movie: Gaussian blurring needs 2D frames, got shape {x.shape[1:]}")
    return gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest",
                           truncate=radius / sigma).astype(np.float32)


def window_starts(T: int, window: int, stride: int) -> list[int]:
    """First frames of the windows of :func:`local_correlations_movie`:
    every ``stride`` frames while a whole window fits before the last one,
    plus one window ending at the last frame."""
    if int(window) < 2 or int(stride) < 1:
        raise ParameterError(f"window, stride: expected window >= 2 and stride >= 1 frames, "
                             f"got {window}, {stride}")
    if int(window) > T:
        raise ParameterError(f"window: {window} frames is longer than the movie ({T})")
    return list(range(0, T - int(window), int(stride))) + [T - int(window)]


def local_correlations_movie(movie, window: int = 100, stride: int = 100,
                             eight_neighbours: bool = True, order_mean: float = 1,
                             swap_dim: bool = False, remove_baseline: bool = False,
                             winSize_baseline: int = 50, quantil_min_baseline: float = 8,
                             gaussian_blur: bool = False, mean_subtract: bool = False,
                             n_frames: int | None = None, use_cuda=False) -> np.ndarray:
    """Local correlation images of sliding windows of frames.

    Windows of ``window`` frames start every ``stride`` frames
    (:func:`window_starts`). The frames of each window are optionally
    blurred (:func:`gaussian_blur_frames`), have their running-percentile
    baseline removed (:func:`running_percentile_baseline`) and their
    per-frame spatial mean subtracted (``mean_subtract``: removes light
    shared by the whole frame, which would otherwise correlate every pixel
    with its neighbours), in that order; then :func:`local_correlations`.

    Parameters
    ----------
    movie : array, tensor or MovieSource
    n_frames : int, optional
        Use only the first ``n_frames`` frames.

    Returns
    -------
    ndarray (n_windows, *dims) float32
    """
    T, dims = movie_shape(movie, swap_dim)
    if n_frames is not None:
        if not 1 <= int(n_frames) <= T:
            raise ParameterError(f"Tot_frames: expected 1 to {T} frames, got {n_frames}")
        T = int(n_frames)
    out = []
    for s in window_starts(T, window, stride):
        x = np.asarray(_time_slice(movie, s, s + int(window), swap_dim), dtype=np.float32)
        if gaussian_blur:
            x = gaussian_blur_frames(x)
        if remove_baseline:
            x = x - running_percentile_baseline(x, winSize_baseline, quantil_min_baseline)
        if mean_subtract:
            x = x - x.reshape(x.shape[0], -1).mean(1).reshape((-1,) + (1,) * len(dims))
        out.append(local_correlations(x, eight_neighbours, False, use_cuda,
                                      order_mean=order_mean))
    return np.stack(out).astype(np.float32)
