"""CNMF-E's initialisation: seeds from the correlation and PNR images.

Zhou et al. (2018, eLife) initialise one-photon movies without a background
model: the frames are filtered with a mean-centred Gaussian
(:func:`gpu_cnmf.summary.psf_kernel`), which removes the smooth background
and keeps neuron-sized blobs. On the filtered movie two images are computed
(the definitions of :func:`gpu_cnmf.summary.correlation_pnr`):

- ``pnr``: peak-to-noise ratio, ``(max_t y - mean_t y) / sn``;
- ``Cn``: local correlation of each pixel with its 8 neighbours, of the
  movie standardised by mean and noise and set to 0 below 3 noise stds.

A pixel with ``Cn >= min_corr`` and ``pnr >= min_pnr`` that maximises
``Cn * pnr`` locally seeds a neuron. Its trace starts as the filtered trace
at the seed; its footprint is the regression, over the ``gSiz`` box of the
raw movie, of each pixel on that trace, a local background trace (median of
the box pixels away from and uncorrelated with the seed) and a constant;
pixels with a significant positive coefficient connected to the seed form
the footprint, and the trace is re-read from the background-corrected box
through it. The neuron is subtracted from the raw and filtered movies and
the images are recomputed before the next seeds are taken.

The first search runs on ``Y - B``, ``B`` the ring background
(:mod:`.ring_model`) fitted to the raw movie before any neuron is known: the
ring lies beyond a neuron's box, so it predicts each pixel from the light
shared around it and not from the neuron there. Without it the seed filter
passes the sharp edges of the shared light (blood-vessel shadows on a
fluctuating background, out-of-focus cells), whose fluctuations look like
neurons in both images (local correlation 0.95-0.99, PNR 10-15 on the hard
one-photon movies of :func:`gpu_cnmf.synthetic.hard_1p`). Only the images
and the seeds' traces come from ``Y - B``; footprints are regressed on the
raw movie as above.

The filtered movie is then not the filtered raw residual, and a neuron
fitted on the raw movie is not what it is in ``Y - B``: the ring takes
part of each cell (in the filtered movie the least-squares trace of the
filtered footprint is 0.25-1.0 times the raw trace, 0.7 typically, on the
hard movies) and the raw trace keeps some of the bright fluctuating
background the local median misses. So each neuron leaves the filtered
movie by its own least-squares trace there (:func:`filtered_traces`), a
projection that never adds energy. Subtracting
the raw trace instead over-subtracts: the centred filter's negative
surround turns the surplus into a bright annulus that fluctuates with the
subtracted trace, correlated and high in PNR, which seeds a false neuron
next to the true one, whose subtraction seeds the next: on seed 0 of the
96 x 96 x 1000 hard movie 123 seeds in 30 rounds for 15 cells, the field
filled, or 17 in 4 rounds for another draw of the same shot noise.

The paper takes one seed at a time. Here each round takes every seed whose
``gSiz`` box is disjoint from the boxes of better seeds of the round (their
fits do not interact), fits all of them in one batch, subtracts them and
recomputes the images; the search stops when no pixel passes both
thresholds.

``init_iter`` passes: after the first, the ring background
(:mod:`.ring_model`) is fitted to ``Y - A C``, the components are refined
by HALS on ``Y - B``, and the search runs again on the residual
``Y - B - A C`` for neurons the background hid.

Names: ``A`` footprints (pixels x K, Fortran pixel order), ``C`` traces
(K x T), ``b0`` and ``W`` the ring background (see :mod:`.ring_model`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..backend import memory_budget
from ..errors import ParameterError
from ..params import default_gsiz
from ..summary import PixelMoments, neighbour_offsets, psf_kernel, spatial_filter
from .morphology import from_images
from .ring_model import _frames_view, fit_ring, ring_radius, subtract_background

# z-score below which the filtered movie is zeroed for the correlation image
# (summary.correlation_pnr's threshold).
Z_THRESHOLD = 3.0
# Filtered-trace correlation under which a box pixel may serve as background.
BG_CORR = 0.3
# Footprint pixels: coefficient t-statistic and fraction of the peak.
T_MIN = 3.0
REL_MIN = 0.1
# Safety bound on seed rounds per pass.
MAX_ROUNDS = 100
# Budget (bytes) for the gathered boxes of one batch of seeds.
_BOX_BYTES = 256 * 2 ** 20
# Elements per chunk of the filtering and image passes, at most; and the
# share of the memory budget a chunk's temporaries (padded frames, spectra:
# about 16 float32 copies) may take.
_CHUNK_ELEMS = 2 ** 20
_CHUNK_SHARE = 1 / 16


def _chunk_elems(device):
    """Elements per chunk on ``device``: ``_CHUNK_ELEMS``, fewer under a
    small memory budget."""
    return int(max(1024, min(_CHUNK_ELEMS, _CHUNK_SHARE * memory_budget(device) // (4 * 16))))


def check_parameters(gSig, gSiz, min_corr, min_pnr, ring_size_factor, ssub_B, init_iter,
                     seed_method, nb):
    """Validate the corr-PNR parameters; returns ``(gSig, gSiz)`` as
    2-tuples (``gSiz`` defaulting to ``2 gSig + 1``)."""
    if seed_method in ("manual", "semi"):
        raise ParameterError(
            f"seed_method={seed_method!r} picks seeds by clicking on the correlation/PNR "
            "images in an interactive figure, which is not available in this "
            "non-interactive engine; use seed_method='auto' (tune min_corr/min_pnr) or pass "
            "footprints as Ain")
    if seed_method != "auto":
        raise ParameterError(f"seed_method: expected 'auto', 'manual' or 'semi', got {seed_method!r}")
    g = np.atleast_1d(np.asarray(gSig, dtype=float)).ravel()
    if g.size == 1:
        g = np.repeat(g, 2)
    if g.size != 2 or not np.all(g > 0):
        raise ParameterError(f"gSig: expected one or two positive neuron radii, got {gSig!r}")
    if gSiz is None:
        s = np.asarray(default_gsiz(g))
    else:
        s = np.atleast_1d(np.asarray(gSiz, dtype=float)).ravel()
        if s.size == 1:
            s = np.repeat(s, 2)
        if s.size != 2 or not np.all(s >= 1):
            raise ParameterError(f"gSiz: expected one or two box half-sizes >= 1, got {gSiz!r}")
        s = np.round(s).astype(int)
    if not (min_pnr is not None and float(min_pnr) > 0):
        raise ParameterError(f"min_pnr: expected a peak-to-noise ratio > 0, got {min_pnr!r}")
    if not (min_corr is not None and -1 <= float(min_corr) <= 1):
        raise ParameterError(f"min_corr: expected a correlation in [-1, 1], got {min_corr!r}")
    if not float(ring_size_factor) > 0:
        raise ParameterError(f"ring_size_factor: expected > 0, got {ring_size_factor!r}")
    if not (float(ssub_B) >= 1 and float(ssub_B) == round(float(ssub_B))):
        raise ParameterError(f"ssub_B: expected an integer >= 1, got {ssub_B!r}")
    if int(init_iter) < 1:
        raise ParameterError(f"init_iter: expected an integer >= 1, got {init_iter!r}")
    if int(nb) < -1:
        raise ParameterError(f"nb: expected an integer >= -1, got {nb!r}")
    return tuple(float(x) for x in g), tuple(int(x) for x in s)


# --------------------------------------------------------------------------
# images

BACKGROUND_FILTERS = ("disk", "box")
# CNMF-E's seed filter repeats the edge pixels beyond the frame (OpenCV's
# BORDER_REPLICATE, what CaImAn filters with).
BORDER = "replicate"


def seed_kernel(gSig, center_psf=True, background_filter="disk"):
    """The spatial filter of CNMF-E's seed images.

    A Gaussian of std ``gSig`` sampled over ``+/- int(2 gSig)`` pixels and
    normalised to sum 1 (:func:`gpu_cnmf.summary.psf_kernel`). With
    ``center_psf`` it becomes a high-pass ("difference") filter that removes
    the smooth background: ``'disk'`` subtracts the kernel's mean over the
    disk where it exceeds its value at the border and zeroes it outside;
    ``'box'`` subtracts the plain mean over the whole window (a Gaussian
    blur minus a box-filtered local mean). Without ``center_psf``: the
    Gaussian (a blur).

    Returns
    -------
    (2 int(2 gSig[0]) + 1, 2 int(2 gSig[1]) + 1) ndarray
    """
    if background_filter not in BACKGROUND_FILTERS:
        raise ParameterError(f"background_filter: expected 'disk' or 'box', got {background_filter!r}")
    if not center_psf or background_filter == "disk":
        return psf_kernel(gSig, bool(center_psf))
    g = psf_kernel(gSig, False)
    return g - 1.0 / g.size


def fft_frames(T, max_num_samples_fft=3072):
    """Frames whose periodogram gives a pixel's noise: all of them, or, when
    there are more than ``max_num_samples_fft``, a third of that many from
    the start, the middle and the end of the recording (CaImAn's documented
    bound on the cost of its noise FFT)."""
    m = int(max_num_samples_fft)
    if m < 16:
        raise ParameterError(f"max_num_samples_fft: expected an int >= 16, got {max_num_samples_fft!r}")
    if T <= m:
        return np.arange(T)
    n3 = m // 3
    mid = T // 2 - n3 // 2
    return np.concatenate([np.arange(n3), np.arange(mid, mid + n3), np.arange(T - n3, T)])


def periodogram_noise(y, noise_range=(0.25, 0.5), noise_method="mean"):
    """Noise std of each column of ``y`` (n frames, P pixels) from the
    periodogram of the whole column (no taper, no pieces): the bins at
    frequencies in ``(lo, hi]`` of the frame rate, ``|FFT|^2 / n``, each of
    mean ``sn**2`` for white noise, averaged by ``noise_method`` ('median'
    and 'logmexp' divided by their bias for exponential bins, as in
    :mod:`gpu_cnmf.deconvolution.noise`). Returns (P,) float64."""
    from ..deconvolution.noise import _LOGMEXP_BIAS, _MEDIAN_BIAS, check_noise_params

    lo, hi = check_noise_params(noise_range, noise_method)
    n = y.shape[0]
    f = torch.arange(n // 2 + 1, dtype=torch.float64, device=y.device) / n
    band = ((f > lo) & (f <= hi)).nonzero().flatten()
    if band.numel() == 0:
        raise ParameterError(f"noise_range: {tuple(noise_range)!r} holds no frequency bin for "
                             f"{n} frames")
    out = torch.empty(y.shape[1], dtype=torch.float64, device=y.device)
    step = max(1, _chunk_elems(y.device) // max(1, n))
    for p0 in range(0, y.shape[1], step):
        X = torch.fft.rfft(y[:, p0:p0 + step], dim=0).index_select(0, band)
        pxx = torch.view_as_real(X).square().sum(-1).double() / n
        if noise_method == "mean":
            v = pxx.mean(0)
        elif noise_method == "median":
            v = pxx.median(0).values / _MEDIAN_BIAS
        else:
            v = torch.exp(torch.log(pxx.clamp_min(1e-300)).mean(0)) / _LOGMEXP_BIAS
        out[p0:p0 + step] = v.sqrt()
    return out


def correlation_pnr(Y, gSig=None, center_psf=True, swap_dim=False, background_filter="disk",
                    threshold=Z_THRESHOLD, noise_range=(0.25, 0.5), noise_method="mean",
                    use_cuda=False, chunk_frames=None, max_num_samples_fft=3072):
    """CNMF-E's correlation and peak-to-noise ratio (PNR) images.

    The definition (Zhou et al. 2018, eLife, and CaImAn's documented
    behaviour):

    1. each frame is filtered with :func:`seed_kernel` (``gSig``,
       ``center_psf``, ``background_filter``), edge pixels repeated beyond
       the frame; ``gSig=None`` skips the filter;
    2. the filtered trace ``y`` of each pixel has its temporal mean removed;
       its noise ``sn`` is read from the high-frequency part
       (``noise_range``, fractions of the frame rate) of the periodogram of
       the whole trace (:func:`periodogram_noise`; over the frames of
       :func:`fft_frames` when it is longer than ``max_num_samples_fft``);
       ``pnr = max_t y / sn``, negative values set to 0;
    3. ``z = y / sn`` with values below ``threshold`` (3) set to 0, so only
       large positive transients remain; ``Cn`` is, for each pixel, the mean
       Pearson correlation of ``z`` with that of each of its 8 neighbours
       (those inside the frame); a constant ``z`` correlates 0.

    Two passes over the movie, chunk by chunk (mean, maximum, and the
    filtered frames the periodogram needs; then the thresholded
    correlations). The periodogram needs each pixel's whole trace: the
    filtered frames it uses are held for as many pixels as the memory
    budget allows, and the first pass is repeated for the others.

    Parameters
    ----------
    Y : (T, d1, d2) array, memory map, tensor or MovieSource
        ``(d1, d2, T)`` with ``swap_dim``.
    gSig : float or (float, float), optional
    center_psf : bool
    swap_dim : bool
        Time is the last axis.
    background_filter : 'disk' or 'box'
    threshold : float
    noise_range, noise_method
    use_cuda : bool or device
    chunk_frames : int, optional
    max_num_samples_fft : int
        At most this many frames enter a pixel's periodogram.

    Returns
    -------
    Cn, pnr : float32 ndarray (d1, d2)
    """
    from ..backend import frames_per_chunk, get_device
    from ..summary import _accumulate, _host, iter_movie, movie_shape

    device = get_device(use_cuda)
    kernel = None if gSig is None else seed_kernel(gSig, center_psf, background_filter)

    def filt(x):
        return x if kernel is None else spatial_filter(x, kernel, border=BORDER)

    T, dims = movie_shape(Y, swap_dim)
    if len(dims) != 2:
        raise ParameterError(f"Y: correlation_pnr needs 2D frames, got frames of shape {tuple(dims)}")
    sel = fft_frames(T, max_num_samples_fft)
    n, d = sel.size, int(dims[0]) * int(dims[1])
    if n < 8:
        raise ParameterError(f"Y: at least 8 frames are needed to estimate the noise, got {n}")
    # pixels whose periodogram frames are held at once (the buffer and the FFT's)
    fit = frames_per_chunk(dims, itemsize=4, copies=3, device=device, max_frames=n)
    block = d if fit >= n else max(1, fit * d // n)
    sel_t = torch.as_tensor(sel, device=device)
    mom = PixelMoments(dims=tuple(dims), device=device)
    sn = torch.empty(d, dtype=torch.float64, device=device)
    for p0 in range(0, d, block):
        p1 = min(d, p0 + block)
        buf = torch.empty((n, p1 - p0), dtype=torch.float32, device=device)
        for s, x in iter_movie(Y, chunk_frames, device, swap_dim, copies=8):
            lo, hi = np.searchsorted(sel, [s, s + x.shape[0]])
            if p0 and lo == hi:
                continue
            x = filt(x)
            if p0 == 0:
                mom.update(x)
            if hi > lo:
                buf[lo:hi] = x.reshape(x.shape[0], d)[sel_t[lo:hi] - s, p0:p1]
        sn[p0:p1] = periodogram_noise(buf, noise_range, noise_method)
        del buf
    sn = sn.reshape(tuple(dims))
    mean = mom.mean()
    peak = mom.mx.double() - mean
    pnr = torch.where(sn > 0, peak / sn.clamp_min(1e-300), torch.zeros_like(peak)).clamp_min(0)
    mean = mean.to(torch.float32)
    inv = torch.where(sn > 0, 1.0 / sn.clamp_min(1e-300), torch.zeros_like(sn)).to(torch.float32)

    def thresholded(x):
        z = (filt(x) - mean) * inv
        return torch.where(z >= threshold, z, torch.zeros_like(z))

    cmom = _accumulate(Y, neighbour_offsets(2, True), device, chunk_frames, swap_dim,
                       transform=thresholded)
    return _host(cmom.correlation_image()), _host(pnr)


def filter_movie(frames, kernel):
    """The seed filter (:func:`seed_kernel`, edges replicated) over
    (T, d1, d2) in chunks."""
    T, d1, d2 = frames.shape
    out = torch.empty((T, d1, d2), dtype=torch.float32, device=frames.device)
    step = max(1, _chunk_elems(frames.device) // (d1 * d2))
    for t0 in range(0, T, step):
        out[t0:t0 + step] = spatial_filter(frames[t0:t0 + step], kernel, border=BORDER)
    return out


def frame_noise(frames, noise_range=(0.25, 0.5), noise_method="mean", max_num_samples_fft=3072):
    """Noise std of each pixel of (T, d1, d2) frames -> (d1, d2): the
    periodogram of its whole trace, as in :func:`correlation_pnr`."""
    T, d1, d2 = frames.shape
    sel = fft_frames(T, max_num_samples_fft)
    flat = frames.reshape(T, d1 * d2)
    if sel.size < T:
        flat = flat[torch.as_tensor(sel, device=frames.device)]
    sn = periodogram_noise(flat, noise_range, noise_method)
    return sn.to(torch.float32).reshape(d1, d2)


def corr_pnr_images(Yf, sn, threshold=Z_THRESHOLD):
    """Correlation and PNR images of a filtered movie held on the device.

    Parameters
    ----------
    Yf : (T, d1, d2) tensor
        Spatially filtered movie (or residual).
    sn : (d1, d2) tensor
        Noise std of the filtered pixels.
    threshold : float
        z-score below which frames are zeroed for the correlations.

    Returns
    -------
    Cn, pnr : (d1, d2) tensors
    """
    T, h, w = Yf.shape
    mean = Yf.mean(0)
    ok = sn > 0
    inv = torch.where(ok, 1.0 / sn.clamp_min(1e-30), torch.zeros_like(sn))
    pnr = ((Yf.amax(0) - mean) * inv).clamp_min(0)
    mom = PixelMoments(dims=(h, w), device=Yf.device, offsets=neighbour_offsets(2, True))
    step = max(1, _chunk_elems(Yf.device) // (h * w))
    for t0 in range(0, T, step):
        z = (Yf[t0:t0 + step] - mean) * inv
        mom.update(z.masked_fill_(z < threshold, 0.0))
    return mom.correlation_image().float(), pnr.float()


# --------------------------------------------------------------------------
# seeds

def pick_seeds(Cn, pnr, min_corr, min_pnr, blocked, gSig, gSiz, max_seeds=None):
    """Seeds of one round: local maxima of ``Cn * pnr`` over both
    thresholds, best first, each ``gSiz`` box disjoint from the better
    seeds' boxes.

    Returns
    -------
    (n, 2) int64 ndarray of (row, col)
    """
    ok = (Cn >= min_corr) & (pnr >= min_pnr) & ~blocked
    if not bool(ok.any()):
        return np.zeros((0, 2), np.int64)
    score = torch.where(ok, Cn * pnr, torch.zeros_like(Cn))
    ry, rx = (max(1, int(math.ceil(g))) for g in gSig)
    peak = F.max_pool2d(score[None, None], (2 * ry + 1, 2 * rx + 1), stride=1,
                        padding=(ry, rx))[0, 0]
    cand = torch.nonzero(ok & (score >= peak)).cpu().numpy()
    vals = score[cand[:, 0], cand[:, 1]].cpu().numpy() if len(cand) else np.zeros(0)
    order = np.argsort(-vals, kind="stable")
    chosen = []
    sy, sx = 2 * gSiz[0], 2 * gSiz[1]
    for i in order:
        y, x = cand[i]
        if all(abs(y - cy) > sy or abs(x - cx) > sx for cy, cx in chosen):
            chosen.append((y, x))
            if max_seeds is not None and len(chosen) >= max_seeds:
                break
    return np.asarray(chosen, dtype=np.int64).reshape(-1, 2)


def _flood(mask, start, n_iter):
    """Pixels of ``mask`` (n, H, W) 8-connected to ``start`` within it."""
    m = start & mask
    x = mask.float()[:, None]
    mf = m.float()[:, None]
    for _ in range(n_iter):
        new = F.max_pool2d(mf, 3, stride=1, padding=1) * x
        if bool((new == mf).all()):
            break
        mf = new
    return mf[:, 0] > 0


def fit_seeds(Yres, Yf, seeds, gSig, gSiz, min_pixels):
    """Footprints and traces of a batch of seeds with disjoint boxes.

    Parameters
    ----------
    Yres : (T, d1, d2) tensor
        Raw movie (residual of the components found so far).
    Yf : (T, d1, d2) tensor
        Its filtered version.
    seeds : (n, 2) int array
    min_pixels : int
        Smallest footprint accepted.

    Returns
    -------
    A_img : (m, d1, d2) footprints (peak 1), C : (m, T) traces, ok : (n,)
    bool ndarray telling which seeds gave a neuron (m of them).
    """
    T, h, w = Yres.shape
    dev = Yres.device
    gy, gx = gSiz
    by, bx = 2 * gy + 1, 2 * gx + 1
    P = by * bx
    n_all = len(seeds)
    per = max(1, int(_BOX_BYTES // max(1, 2 * P * T * 4)))
    imgs, traces, oks = [], [], []
    oy = torch.arange(-gy, gy + 1, device=dev)
    ox = torch.arange(-gx, gx + 1, device=dev)
    dist = torch.sqrt((oy[:, None].float() / max(gSig[0], 1e-6)) ** 2
                      + (ox[None, :].float() / max(gSig[1], 1e-6)) ** 2).reshape(-1)
    for s0 in range(0, n_all, per):
        sd = torch.as_tensor(seeds[s0:s0 + per], device=dev)
        n = sd.shape[0]
        I = sd[:, :1] + oy[None]
        J = sd[:, 1:] + ox[None]
        vy = (I >= 0) & (I < h)
        vx = (J >= 0) & (J < w)
        valid = (vy[:, :, None] & vx[:, None, :]).reshape(n, P)
        Ic, Jc = I.clamp(0, h - 1), J.clamp(0, w - 1)
        Yb = Yres[:, Ic[:, :, None], Jc[:, None, :]].permute(1, 2, 3, 0).reshape(n, P, T)
        Fb = Yf[:, Ic[:, :, None], Jc[:, None, :]].permute(1, 2, 3, 0).reshape(n, P, T)
        cf = Yf[:, sd[:, 0], sd[:, 1]].T                                   # (n, T)
        cc = cf - cf.mean(1, keepdim=True)
        Fc = Fb - Fb.mean(2, keepdim=True)
        rho = torch.einsum("npt,nt->np", Fc, cc) / (
            Fc.norm(dim=2) * cc.norm(dim=1, keepdim=True)).clamp_min(1e-12)
        del Fb, Fc
        # local background trace: median of far, uncorrelated box pixels
        bg = valid & (rho < BG_CORR) & (dist[None] >= 2.0)
        few = bg.sum(1) < 5
        if bool(few.any()):
            bg[few] = valid[few] & (rho[few] < BG_CORR)
        ybg = torch.where(bg[:, :, None], Yb, torch.full_like(Yb, float("nan")))
        ybg = torch.nanmedian(ybg, dim=1).values
        ybg = torch.nan_to_num(ybg, nan=0.0)
        bc = ybg - ybg.mean(1, keepdim=True)
        X = torch.stack([cc, bc], 1)                                       # (n, 2, T)
        G = X @ X.transpose(1, 2)
        G = G + 1e-6 * torch.diagonal(G, dim1=1, dim2=2).sum(1)[:, None, None] \
            * torch.eye(2, device=dev)
        Gi = torch.linalg.inv(G.double()).float()
        Yc = Yb - Yb.mean(2, keepdim=True)
        del Yb
        rhs = Yc @ X.transpose(1, 2)                                       # (n, P, 2)
        coef = rhs @ Gi                                                    # (n, P, 2)
        rss = (Yc * Yc).sum(2) - (coef * rhs).sum(2)
        s2 = rss.clamp_min(0) / max(T - 3, 1)
        se = torch.sqrt(s2 * Gi[:, 0, 0][:, None]).clamp_min(1e-12)
        a = coef[..., 0].clamp_min(0) * valid
        keep = (a / se >= T_MIN) & (a >= REL_MIN * a.amax(1, keepdim=True))
        keep = keep.reshape(n, by, bx)
        start = (dist <= 1.0).reshape(1, by, bx).expand(n, by, bx)
        keep = _flood(keep, start, by + bx)
        a = (a.reshape(n, by, bx) * keep).reshape(n, P)
        ok = (keep.reshape(n, P).sum(1) >= min_pixels) & (a.amax(1) > 0)
        a = a / a.amax(1, keepdim=True).clamp_min(1e-30)
        # trace through the footprint, background part removed
        Yc -= coef[..., 1:2] * bc[:, None, :]
        c = torch.einsum("np,npt->nt", a, Yc) / (a * a).sum(1, keepdim=True).clamp_min(1e-12)
        del Yc
        c = (c - c.median(1, keepdim=True).values).clamp_min(0)
        ok &= c.amax(1) > 0
        # paste the boxes into full frames
        full = torch.zeros((n, h + 2 * gy, w + 2 * gx), device=dev)
        aimg = a.reshape(n, by, bx) * valid.reshape(n, by, bx)
        for k in torch.nonzero(ok).flatten().tolist():
            y, x = int(sd[k, 0]), int(sd[k, 1])
            full[k, y:y + by, x:x + bx] = aimg[k]
        imgs.append(full[ok][:, gy:gy + h, gx:gx + w])
        traces.append(c[ok])
        oks.append(ok.cpu().numpy())
    if not imgs:
        return (torch.zeros((0, h, w), device=dev), torch.zeros((0, T), device=dev),
                np.zeros(0, bool))
    return torch.cat(imgs), torch.cat(traces), np.concatenate(oks)


def filtered_traces(Yf, Af):
    """Least-squares traces of filtered footprints in a filtered movie.

    ``argmin_Cf ||Yf - Cf' Af||`` frame by frame: what the footprints
    explain of the movie the seed images come from. Subtracting
    ``Cf' Af`` projects each frame onto the complement of the footprints'
    span, so the residual's energy can only go down.

    Parameters
    ----------
    Yf : (T, d1, d2) tensor
    Af : (m, d1 * d2) tensor

    Returns
    -------
    (m, T) tensor
    """
    T = Yf.shape[0]
    rhs = (Af @ Yf.reshape(T, -1).T).double()                      # (m, T)
    G = (Af @ Af.T).double()
    # the batch's boxes are disjoint, its filtered footprints nearly so: a
    # tiny ridge only guards a footprint the filter nearly cancels
    lam = 1e-9 * float(torch.diagonal(G).sum().clamp_min(1e-30))
    G = G + lam * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return torch.linalg.solve(G, rhs).to(Yf.dtype)


def greedy_search(Yres, gSig, gSiz, min_corr, min_pnr, kernel, blocked, max_neurons=None,
                  noise_range=(0.25, 0.5), noise_method="mean", return_images=False, Yf=None):
    """Rounds of seeding, fitting and subtracting on a raw residual movie.

    Parameters
    ----------
    Yres : (T, d1, d2) tensor
        Raw residual, modified in place (found neurons subtracted).
    kernel : ndarray
        The filter of the seed images.
    blocked : (d1, d2) bool tensor
        Pixels not to seed from; updated in place around every seed tried.
    max_neurons : int, optional
        Stop after this many neurons.
    Yf : (T, d1, d2) tensor, optional
        The filtered movie the seed images and traces come from (modified
        in place), when not the filtered ``Yres``. Each neuron found is then
        subtracted from it with its least-squares trace there
        (:func:`filtered_traces`), from ``Yres`` with its raw trace.

    Returns
    -------
    A_img (K, d1, d2), C (K, T), info dict (Cn, pnr of the first round,
    rounds, seeds)
    """
    T, h, w = Yres.shape
    dev = Yres.device
    own = Yf is None
    if own:
        Yf = filter_movie(Yres, kernel)
    sn = frame_noise(Yf, noise_range, noise_method)
    min_pixels = max(4, int(round(0.5 * gSig[0] * gSig[1])))
    yy = torch.arange(h, device=dev, dtype=torch.float32)[:, None]
    xx = torch.arange(w, device=dev, dtype=torch.float32)[None, :]
    imgs, traces, seeds_all = [], [], []
    info = dict(rounds=0)
    found = 0
    for rnd in range(MAX_ROUNDS):
        Cn, pnr = corr_pnr_images(Yf, sn)
        if rnd == 0:
            info["Cn"], info["pnr"] = Cn.cpu().numpy(), pnr.cpu().numpy()
        left = None if max_neurons is None else max_neurons - found
        if left is not None and left <= 0:
            break
        seeds = pick_seeds(Cn, pnr, min_corr, min_pnr, blocked, gSig, gSiz, left)
        if len(seeds) == 0:
            break
        info["rounds"] = rnd + 1
        for y, x in seeds:
            blocked |= ((yy - float(y)) / gSig[0]) ** 2 + ((xx - float(x)) / gSig[1]) ** 2 <= 1.0
        A_img, C, ok = fit_seeds(Yres, Yf, seeds, gSig, gSiz, min_pixels)
        seeds_all.append(seeds[ok])
        if A_img.shape[0] == 0:
            continue
        found += A_img.shape[0]
        # subtract from the raw and the filtered residual: with the raw
        # traces where Yf is the filtered Yres (filtering is linear), else
        # with the traces that fit Yf (see the module docstring)
        Yres -= (C.T @ A_img.reshape(-1, h * w)).reshape(T, h, w)
        Af = spatial_filter(A_img, kernel, border=BORDER).reshape(-1, h * w)
        Cf = C if own else filtered_traces(Yf, Af)
        Yf -= (Cf.T @ Af).reshape(T, h, w)
        imgs.append(A_img)
        traces.append(C)
    del Yf
    info["seeds"] = np.concatenate(seeds_all) if seeds_all else np.zeros((0, 2), np.int64)
    if not imgs:
        return torch.zeros((0, h, w), device=dev), torch.zeros((0, T), device=dev), info
    return torch.cat(imgs), torch.cat(traces), info


def initialize_corr_pnr(Y, gSig, gSiz=None, min_corr=0.8, min_pnr=10.0, ring_size_factor=1.5,
                        ssub_B=2, init_iter=2, center_psf=True, seed_method="auto", nb=0,
                        device="cpu", dims=None, K=None, noise_range=(0.25, 0.5),
                        noise_method="mean", hals_iter=2, border_pix=0):
    """CNMF-E initialisation (see the module docstring).

    Parameters
    ----------
    Y : (T, d1, d2) array / memory map / tensor, or (d, T) tensor with ``dims``
    gSig : int or (int, int)
        Neuron radius (px); width of the seed filter.
    gSiz : int or (int, int), optional
        Half-size of each neuron's box (default ``2 gSig + 1``).
    min_corr, min_pnr : float
        Seed thresholds on the correlation and PNR images.
    ring_size_factor : float
        Ring radius is ``round(ring_size_factor * gSiz)``.
    ssub_B : int
        Downsampling of the ring background fit.
    init_iter : int
        Passes of the seed search (ring background fitted between them).
    center_psf : bool
        Mean-centre the seed filter (1p data); False filters with a plain
        Gaussian.
    seed_method : 'auto'
        'manual' and 'semi' need an interactive figure and raise.
    nb : int
        Only validated here: the ring model is what the search uses.
    device : str or torch.device
    K : int, optional
        Largest number of neurons (None: as many as pass the thresholds).
    hals_iter : int
        HALS rounds on ``Y - B`` after each background fit.
    border_pix : int
        No seed within this many pixels of the edge (where motion correction
        fills in frames, the edge rows repeat and correlate perfectly).

    Returns
    -------
    A : (d, K) tensor, C : (K, T) tensor,
    ring : :class:`.ring_model.RingModel` (with ``b0``), extra : dict (Cn, pnr of the
    first search, seeds, rounds per pass)
    """
    from .initialization import hals_refine

    gSig, gSiz = check_parameters(gSig, gSiz, min_corr, min_pnr, ring_size_factor, ssub_B,
                                  init_iter, seed_method, nb)
    dev = torch.device(device)
    if isinstance(Y, torch.Tensor) and dims is not None:
        Ymat = Y.to(dev, torch.float32)
        dims = tuple(int(x) for x in dims)
    else:
        from .products import MovieMatrix
        mm = MovieMatrix(Y, dev, dims=dims)
        Ymat, dims = mm.frames(0, mm.T), mm.dims
    d, T = Ymat.shape
    ssub_B = int(round(float(ssub_B)))
    radius = ring_radius(gSiz, ring_size_factor)
    kernel = psf_kernel(gSig, bool(center_psf))
    blocked = torch.zeros(dims, dtype=torch.bool, device=dev)
    bp = int(border_pix)
    if bp < 0:
        raise ParameterError(f"border_pix: expected an int >= 0, got {border_pix!r}")
    if bp:
        blocked[:bp], blocked[-bp:], blocked[:, :bp], blocked[:, -bp:] = True, True, True, True
    # The first search already runs on Y - B: the ring background of the
    # raw movie (no neurons yet). The ring lies beyond a neuron's box, so it
    # predicts each pixel from the light shared around it (the diffuse
    # background, out-of-focus cells, and what vessel shadows make of their
    # fluctuations) but not from the neuron at that pixel. On the raw
    # movie the seed filter passes the sharp edges of that shared light,
    # which fluctuate with it and seed as many false neurons as true ones.
    # Only the seed images and the seeds' traces come from Y - B: the
    # footprints are still regressed on the raw movie (with a local
    # background trace, see fit_seeds), since the ring, fitted before any
    # neuron is known, also absorbs a little of each neuron it surrounds.
    empty_b, empty_f = Ymat.new_zeros((d, 0)), Ymat.new_zeros((0, T))
    ring0 = fit_ring(Ymat, empty_b, empty_f, dims, radius, ssub_B)
    Yf = filter_movie(_frames_view(subtract_background(ring0, Ymat), dims), kernel)
    del ring0
    Yres = _frames_view(Ymat, dims).contiguous()
    A_img, C, info = greedy_search(Yres, gSig, gSiz, min_corr, min_pnr, kernel, blocked,
                                   K, noise_range, noise_method, Yf=Yf)
    del Yf
    extra = dict(Cn=info["Cn"], pnr=info["pnr"], seeds=[info["seeds"]], rounds=[info["rounds"]])
    A = from_images(A_img).contiguous()
    for _ in range(int(init_iter) - 1):
        ring = fit_ring(Ymat, A, C, dims, radius, ssub_B)
        Yhat = subtract_background(ring, Ymat, A, C)
        if A.shape[1]:
            A, C, _, _ = hals_refine(Yhat, dims, A, C, empty_b, empty_f, maxIter=hals_iter)
        left = None if K is None else int(K) - A.shape[1]
        if left is not None and left <= 0:
            break
        Yhat -= A @ C
        Yres = _frames_view(Yhat, dims).contiguous()
        del Yhat
        A2, C2, info = greedy_search(Yres, gSig, gSiz, min_corr, min_pnr, kernel, blocked,
                                     left, noise_range, noise_method)
        del Yres
        extra["seeds"].append(info["seeds"])
        extra["rounds"].append(info["rounds"])
        if A2.shape[0]:
            A = torch.cat([A, from_images(A2)], 1).contiguous()
            C = torch.cat([C, C2], 0)
    ring = fit_ring(Ymat, A, C, dims, radius, ssub_B)
    if A.shape[1]:
        A, C, _, _ = hals_refine(subtract_background(ring, Ymat, A, C), dims, A, C, empty_b,
                                 empty_f, maxIter=hals_iter)
    keep = (A.amax(0) > 0) & (C.amax(1) > 0)
    return A[:, keep].contiguous(), C[keep].contiguous(), ring, extra
