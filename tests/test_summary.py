"""Summary images against straightforward numpy, streamed and on each device."""
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from conftest import devices
from gpu_cnmf.errors import DeviceError, MovieError, ParameterError
from gpu_cnmf.summary import (correlation_pnr, local_correlations, max_image, mean_image,
                              neighbour_offsets, pnr_image, psf_kernel, spatial_filter,
                              std_image, summary_images)


# ---------------------------------------------------------------- helpers --

def small_movie(T=240, dims=(28, 36), seed=0, baseline=100.0):
    """Noise plus three square 'cells' with their own sparse transients."""
    rng = np.random.default_rng(seed)
    Y = baseline + rng.normal(size=(T, *dims))
    cells = [(4, 6), (15, 20), (8, 27)]
    for cy, cx in cells:
        s = (rng.random(T) < 0.05) * rng.uniform(2, 5, T)
        c = np.zeros(T)
        for t in range(1, T):
            c[t] = 0.9 * c[t - 1] + s[t]
        Y[:, cy:cy + 5, cx:cx + 5] += c[:, None, None]
    return Y.astype(np.float32), cells


def ref_cn(Y, eight=True):
    """Mean over neighbours of the Pearson correlation (z-scores, shifted copies)."""
    Y = Y.astype(np.float64)
    sd = Y.std(0)
    Z = np.where(sd > 0, (Y - Y.mean(0)) / np.where(sd > 0, sd, 1), 0)
    dims = Y.shape[1:]
    total = np.zeros(dims)
    count = np.zeros(dims)
    for o in np.ndindex(*(3,) * len(dims)):
        d = np.array(o) - 1
        if not d.any() or (not eight and np.abs(d).sum() != 1):
            continue
        # neighbour q = p + d, for the p whose neighbour exists
        src = tuple(slice(max(0, -di), n - max(0, di)) for di, n in zip(d, dims))
        dst = tuple(slice(max(0, di), n - max(0, -di)) for di, n in zip(d, dims))
        total[src] += (Z[(slice(None), *src)] * Z[(slice(None), *dst)]).mean(0)
        count[src] += 1
    return total / count


def ref_noise(X, seg=256, band=(0.25, 0.5)):
    """Welch estimate: Hann-windowed segments, power averaged over the band."""
    T = X.shape[0]
    L = min(seg, T)
    w = np.hanning(L)
    freqs = np.fft.rfftfreq(L)
    sel = (freqs >= band[0]) & (freqs <= band[1])
    acc = 0
    n = T // L
    for i in range(n):
        s = X[i * L:(i + 1) * L]
        s = s - s.mean(0)
        spec = np.fft.rfft(s * w.reshape(-1, *([1] * (X.ndim - 1))), axis=0)[sel]
        acc = acc + (np.abs(spec) ** 2).mean(0)
    return np.sqrt(acc / n / (w ** 2).sum())


def ref_periodogram_noise(X, band=(0.25, 0.5)):
    """Periodogram of the whole trace (CNMF-E's correlation_pnr), power
    averaged over the band."""
    T = X.shape[0]
    spec = np.fft.rfft(X - X.mean(0), axis=0)
    f = np.fft.rfftfreq(T)
    sel = (f > band[0]) & (f <= band[1])
    return np.sqrt((np.abs(spec[sel]) ** 2).mean(0) / T)


class FakeSource:
    """Just the MovieSource surface summary.py relies on."""

    def __init__(self, arr):
        self.arr = arr
        self.shape = arr.shape

    def iter_chunks(self, n):
        for s in range(0, self.shape[0], n):
            yield s, self.arr[s:s + n]


# ------------------------------------------------------------------ tests --

@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("chunk", [None, 7, 100])
def test_summary_images_match_numpy(device, chunk):
    Y, _ = small_movie()
    Yd = Y.astype(np.float64)
    s = summary_images(Y, use_cuda=device, chunk_frames=chunk)
    np.testing.assert_allclose(s["mean"], Yd.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(s["max"], Y.max(0))
    np.testing.assert_allclose(s["std"], Yd.std(0), atol=1e-5)
    np.testing.assert_allclose(s["Cn"], ref_cn(Yd), atol=1e-5)
    for f, ref in [(mean_image, s["mean"]), (max_image, s["max"]), (std_image, s["std"])]:
        np.testing.assert_allclose(f(Y, use_cuda=device, chunk_frames=chunk), ref, atol=1e-6)


@pytest.mark.parametrize("device", devices())
def test_streaming_equals_one_pass_and_sources(device):
    Y, _ = small_movie(T=150)
    one = summary_images(Y, use_cuda=device, chunk_frames=150)
    for chunk in (1, 13, 64):
        many = summary_images(Y, use_cuda=device, chunk_frames=chunk)
        for k in one:
            np.testing.assert_allclose(many[k], one[k], atol=1e-6, err_msg=k)
    src = summary_images(FakeSource(Y), use_cuda=device, chunk_frames=11)
    swapped = summary_images(np.moveaxis(Y, 0, -1), swap_dim=True, use_cuda=device,
                             chunk_frames=20)
    tens = summary_images(torch.from_numpy(Y), use_cuda=device)
    for other in (src, swapped, tens):
        for k in one:
            np.testing.assert_allclose(other[k], one[k], atol=1e-6, err_msg=k)


def test_movie_source_from_io(tmp_path):
    from gpu_cnmf import io
    Y, _ = small_movie(T=60)
    np.save(tmp_path / "m.npy", Y)
    a = summary_images(io.open_movie(str(tmp_path / "m.npy")), chunk_frames=9)
    b = summary_images(Y)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)


def test_four_neighbours_3d_and_integer_movies():
    Y, _ = small_movie(T=80, dims=(10, 12))
    np.testing.assert_allclose(local_correlations(Y, eight_neighbours=False, chunk_frames=9),
                               ref_cn(Y, eight=False), atol=1e-5)
    rng = np.random.default_rng(1)
    V = rng.normal(size=(60, 5, 6, 4)) + rng.normal(size=(60, 1, 1, 1))
    for eight, n in ((True, 13), (False, 3)):
        assert len(neighbour_offsets(3, eight)) == n
        np.testing.assert_allclose(local_correlations(V.astype(np.float32), eight,
                                                      chunk_frames=7),
                                   ref_cn(V, eight), atol=1e-5)
    U = (rng.integers(0, 4000, size=(50, 8, 9))).astype(np.uint16)
    s = summary_images(U, chunk_frames=8)
    np.testing.assert_allclose(s["std"], U.astype(float).std(0), rtol=1e-5)
    np.testing.assert_allclose(s["Cn"], ref_cn(U), atol=1e-5)


def test_numerical_stability_large_baseline():
    # a small variance on a huge baseline: naive float32 sums lose it all
    rng = np.random.default_rng(2)
    Y = (2.0e4 + rng.normal(size=(2000, 6, 7))).astype(np.float32)
    Y[:, 2:4, 2:4] += rng.normal(size=(2000, 1, 1)).astype(np.float32)
    s = summary_images(Y, chunk_frames=50)
    Yd = Y.astype(np.float64)
    np.testing.assert_allclose(s["std"], Yd.std(0), rtol=1e-4)
    np.testing.assert_allclose(s["Cn"], ref_cn(Yd), atol=1e-4)
    # constant pixels correlate with nothing and have std 0
    Z = np.ones((30, 4, 4), np.float32) * 7.1
    s = summary_images(Z)
    assert np.all(s["std"] == 0) and np.all(s["Cn"] == 0)


def test_correlation_image_high_on_cells_low_on_noise():
    Y, cells = small_movie(T=400)
    cn = local_correlations(Y)
    inside = np.zeros(Y.shape[1:], bool)
    for cy, cx in cells:
        inside[cy + 1:cy + 4, cx + 1:cx + 4] = True
    ring = ndi.binary_dilation(inside, iterations=3)
    assert cn[inside].min() > 0.5
    assert np.abs(cn[~ring]).max() < 0.2
    assert abs(cn[~ring].mean()) < 0.02


@pytest.mark.parametrize("gSig,center", [(3, True), ((2, 3), True), (2, False)])
def test_spatial_filter_matches_scipy(gSig, center):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5, 23, 31)).astype(np.float32)
    k = psf_kernel(gSig, center)
    assert k.shape == tuple(4 * int(g) + 1 for g in np.broadcast_to(gSig, (2,)))
    if center:
        assert abs(k.sum()) < 1e-12 and k[0, 0] == 0
    else:
        assert abs(k.sum() - 1) < 1e-12
    got = spatial_filter(torch.from_numpy(X), k).numpy()
    ref = np.stack([ndi.correlate(x.astype(float), k, mode="reflect") for x in X])
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("device", devices())
def test_pnr_and_correlation_pnr_match_numpy(device):
    Y, cells = small_movie(T=600, dims=(30, 34))
    Yd = Y.astype(np.float64)
    # raw pnr
    sn = ref_noise(Yd)
    ref = np.clip((Yd.max(0) - Yd.mean(0)) / sn, 0, None)
    np.testing.assert_allclose(pnr_image(Y, use_cuda=device, chunk_frames=77), ref,
                               rtol=1e-4)
    # CNMF-E: filtered, thresholded, correlated
    k = psf_kernel(2, True)
    # CNMF-E's seed filter repeats the edge pixels ('nearest'; OpenCV's BORDER_REPLICATE)
    Xf = np.stack([ndi.correlate(y, k, mode="nearest") for y in Yd])
    snf = ref_periodogram_noise(Xf)
    pnr_ref = np.clip((Xf.max(0) - Xf.mean(0)) / snf, 0, None)
    Z = (Xf - Xf.mean(0)) / snf
    Z[Z < 3] = 0
    cn_ref = ref_cn(Z)
    for chunk in (None, 50):
        cn, pnr = correlation_pnr(Y, gSig=2, use_cuda=device, chunk_frames=chunk)
        np.testing.assert_allclose(pnr, pnr_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(cn, cn_ref, atol=1e-4)
    # swap_dim gives the same
    cn2, pnr2 = correlation_pnr(np.moveaxis(Y, 0, -1), gSig=2, swap_dim=True,
                                use_cuda=device)
    np.testing.assert_allclose(cn2, cn, atol=1e-6)
    # neurons stand out in both images
    inside = np.zeros(Y.shape[1:], bool)
    for cy, cx in cells:
        inside[cy + 1:cy + 4, cx + 1:cx + 4] = True
    far = ~ndi.binary_dilation(inside, iterations=6)
    assert np.median(pnr[inside]) > 3 * np.median(pnr[far])
    assert np.median(cn[inside]) > 0.3 > np.median(cn[far])


def test_noise_estimate_is_calibrated():
    rng = np.random.default_rng(4)
    X = (3.0 * rng.normal(size=(3000, 8, 8))).astype(np.float32)
    pnr = pnr_image(X, chunk_frames=100)
    # max of 3000 standard normals: about 3.4-3.8
    assert 3.0 < np.median(pnr) < 4.2


def test_errors():
    with pytest.raises(MovieError):
        summary_images(np.zeros((10, 10), np.float32))
    bad = np.zeros((10, 4, 4), np.float32)
    bad[3, 1, 1] = np.nan
    with pytest.raises(MovieError):
        summary_images(bad)
    with pytest.raises(ParameterError):
        psf_kernel(-1)
    with pytest.raises(ParameterError):
        correlation_pnr(np.zeros((10, 8, 8), np.float32), gSig=None)
    with pytest.raises(ParameterError):
        summary_images(np.zeros((10, 4, 4), np.float32), chunk_frames=0)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            summary_images(np.zeros((10, 4, 4), np.float32), use_cuda=True)


@pytest.mark.gpu
def test_gpu_matches_cpu_on_larger_movie():
    Y, _ = small_movie(T=500, dims=(64, 64))
    a = summary_images(Y, use_cuda=False, chunk_frames=64)
    b = summary_images(Y, use_cuda=True, chunk_frames=128)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)
    ca, pa = correlation_pnr(Y, 3, use_cuda=False)
    cb, pb = correlation_pnr(Y, 3, use_cuda=True)
    np.testing.assert_allclose(ca, cb, atol=1e-4)
    np.testing.assert_allclose(pa, pb, rtol=1e-4, atol=1e-4)
