"""The synthetic generator's ground truth is self-consistent and exact."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import ndimage

from gpu_cnmf.errors import ParameterError
from gpu_cnmf.synthetic import (GroundTruth, ar_coefficients, fourier_shift, footprint_values,
                                make_movie, spline_warp, standard_1p, standard_2p,
                                window_mean_flow)

SMALL = dict(dims=(64, 64), n_frames=120, n_neurons=12)


def _noiseless(**kw):
    return make_movie(**{**SMALL, "noise": 0.0, "gain": None, **kw})


def _grid(dims):
    return np.meshgrid(np.arange(dims[0], dtype=float), np.arange(dims[1], dtype=float),
                       indexing="ij")


def test_no_motion_movie_is_A_C_plus_b_f():
    movie, tr = _noiseless()
    assert isinstance(tr, GroundTruth)
    assert movie.dtype == np.float32 and movie.shape == (120, 64, 64)
    Yr = (tr.A @ tr.C + tr.b @ tr.f)                      # pixels x T, Fortran order
    frames = Yr.T.reshape(120, 64, 64, order="C").transpose(0, 2, 1)
    np.testing.assert_allclose(movie, frames, atol=1e-4)
    np.testing.assert_allclose(movie, tr.denoised(), atol=1e-4)
    np.testing.assert_allclose(movie, tr.neural() + tr.background(), atol=1e-4)
    assert tr.clean is None and tr.flow is None
    np.testing.assert_array_equal(tr.shifts, np.zeros((120, 2)))


def test_footprints_format_and_positions():
    _, tr = make_movie(**SMALL)
    A = tr.A
    assert sp.isspmatrix_csc(A) and A.shape == (64 * 64, 12)
    assert A.min() >= 0
    np.testing.assert_allclose(A.max(0).toarray().ravel(), 1.0)
    # Fortran pixel order: the peak of column k is at its centre (i, j).
    for k in range(tr.K):
        p = A[:, k].toarray().argmax()
        i, j = p % 64, p // 64
        assert np.hypot(i - tr.centers[k, 0], j - tr.centers[k, 1]) <= 1.0
    # varying sizes, elliptical, overlapping neighbours
    assert tr.sigmas[:, 0].std() > 0.1 and np.all(tr.sigmas[:, 0] >= tr.sigmas[:, 1])
    overlap = (A.T @ A).toarray()
    np.fill_diagonal(overlap, 0)
    assert (overlap > 0).sum() >= 2


def test_noise_level_matches_sn():
    movie, tr = make_movie(**SMALL, noise=0.3, gain=10.0)
    resid = movie - tr.denoised()
    sn = tr.sn_image
    assert tr.sn.shape == (64 * 64,)
    # per-pixel std over 120 frames: ~6% sampling error
    ratio = resid.std(0) / sn
    assert abs(np.median(ratio) - 1) < 0.03
    assert abs(resid.mean()) < 0.01
    # shot noise makes sn track brightness
    assert np.corrcoef(sn.ravel(), tr.denoised().mean(0).ravel())[0, 1] > 0.99


def test_poisson_shot_noise_level():
    movie, tr = make_movie(**SMALL, noise=0.1, gain=5.0, shot_noise="poisson")
    resid = movie - tr.denoised()
    assert abs(np.median(resid.std(0) / tr.sn_image) - 1) < 0.05


@pytest.mark.parametrize("p", [1, 2])
def test_calcium_follows_ar_process(p):
    _, tr = make_movie(**SMALL, p=p, decay_time=0.5, fr=20.0)
    g = ar_coefficients(0.5, 20.0, p, 0.05)
    assert tr.g.shape == (tr.K, p)
    np.testing.assert_allclose(tr.g, np.tile(g, (tr.K, 1)))
    if p == 1:
        assert np.isclose(g[0], np.exp(-1 / (0.5 * 20.0)))
    C, S = tr.C.astype(np.float64), tr.S.astype(np.float64)
    pred = C[:, p:] - sum(g[i] * C[:, p - 1 - i:C.shape[1] - 1 - i] for i in range(p))
    np.testing.assert_allclose(pred, S[:, p:], atol=2e-4 * C.max())
    assert S.min() >= 0 and (S > 0).sum() > 10
    # spike amplitudes vary
    assert np.std(S[S > 0]) > 0.1 * np.mean(S[S > 0])


@pytest.mark.parametrize("p", [1, 2])
def test_single_spike_transient_peaks_at_amplitude(p):
    from scipy.signal import lfilter
    _, tr = make_movie(**{**SMALL, "n_neurons": 20, "n_frames": 1500}, p=p, amplitude=2.0)
    imp = np.zeros(300)
    imp[0] = 1
    h = lfilter([1], np.r_[1, -tr.g[0]], imp)
    # mean single-event transient peak (frames with one event) ~ amplitude
    peaks = tr.S[tr.S > 0] * h.max()
    assert 1.6 < np.mean(peaks) < 2.4


def test_seed_reproducible_and_motion_independent():
    m1, t1 = make_movie(**SMALL, seed=3)
    m2, t2 = make_movie(**SMALL, seed=3)
    m3, _ = make_movie(**SMALL, seed=4)
    np.testing.assert_array_equal(m1, m2)
    assert (t1.A != t2.A).nnz == 0
    assert not np.allclose(m1, m3)
    # the same seed with motion: same neurons, activity, noise; its clean
    # movie is exactly the motion-free one
    m4, t4 = make_movie(**SMALL, seed=3, motion="rigid")
    assert (t1.A != t4.A).nnz == 0
    np.testing.assert_array_equal(t1.C, t4.C)
    np.testing.assert_array_equal(t4.clean, m1)
    assert np.abs(m4 - m1).max() > 0.1


def _analytic_neural(tr, t, y, x, order):
    """Sum of footprints evaluated exactly at positions (y, x) for frame t."""
    A = tr.A.toarray()
    out = np.zeros(y.shape)
    for k in range(tr.K):
        p = A[:, k].argmax()
        i, j = p % tr.dims[0], p // tr.dims[0]
        peak = footprint_values(i, j, tr.centers[k], tr.sigmas[k], tr.angles[k], order) / A[p, k]
        out += tr.C[k, t] * footprint_values(y, x, tr.centers[k], tr.sigmas[k],
                                             tr.angles[k], order) / peak
    return out


def test_rigid_motion_is_exact():
    movie, tr = _noiseless(motion="rigid", max_shift=4.0, baseline=0.0, neuropil=0.0,
                           resting=0.0, seed=1)
    assert tr.shifts.shape == (120, 2) and tr.flow is None
    assert np.abs(tr.shifts).max() <= 4.0 + 1e-6 and np.abs(tr.shifts).max() > 2.0
    yy, xx = _grid(tr.dims)
    active = np.argsort(tr.C.sum(0))[-5:]
    for t in active:
        s = tr.shifts[t].astype(float)
        # observed(y) = clean(y + s_t), against footprints rendered analytically
        ref = _analytic_neural(tr, t, yy + s[0], xx + s[1], order=4)
        assert np.abs(movie[t] - ref).max() < 1e-4 * np.abs(ref).max()


def test_rigid_truth_undoes_motion():
    movie, tr = _noiseless(motion="rigid", max_shift=5.0, seed=2)
    yy, xx = _grid(tr.dims)
    c = slice(8, -8)
    for t in range(0, 120, 13):
        s = tr.shifts[t]
        # CaImAn's convention: corrected(y) = observed(y - s_t) = clean(y)
        corr = ndimage.map_coordinates(movie[t].astype(float), [yy - s[0], xx - s[1]],
                                       order=3, mode="nearest")
        scale = np.ptp(tr.clean[t])
        assert np.abs(corr - tr.clean[t])[c, c].max() < 1e-3 * scale
    # the same with Fourier shifts, all frames at once; the field of view
    # is not periodic, so ringing from its edges needs a wider border
    corr = fourier_shift(torch.from_numpy(movie), -torch.from_numpy(tr.shifts.astype(float)))
    c = slice(16, -16)
    err = np.abs(corr.numpy() - tr.clean)[:, c, c].max()
    assert err < 5e-3 * np.ptp(tr.clean)
    # the opposite sign is far off
    bad = fourier_shift(torch.from_numpy(movie), torch.from_numpy(tr.shifts.astype(float)))
    assert np.abs(bad.numpy() - tr.clean)[:, c, c].max() > 50 * err


def test_nonrigid_truth_undoes_motion():
    movie, tr = _noiseless(motion="nonrigid", max_shift=5.0, seed=5, n_frames=60)
    assert tr.flow.shape == (60, 2, 64, 64) and tr.flow.dtype == np.float32
    np.testing.assert_allclose(tr.shifts, tr.flow.mean(axis=(2, 3)), atol=1e-5)
    dev = np.abs(tr.flow - tr.shifts[:, :, None, None]).max()
    assert 0.5 < dev <= 2 * 0.4 * 5.0      # a real non-rigid part, within its bound
    assert np.abs(tr.flow).max() <= 5.0 + 1e-3
    yy, xx = _grid(tr.dims)
    c = slice(8, -8)
    for t in range(0, 60, 9):
        scale = np.ptp(tr.clean[t])
        s = tr.flow[t]
        corr = ndimage.map_coordinates(movie[t].astype(float), [yy - s[0], xx - s[1]],
                                       order=3, mode="nearest")
        assert np.abs(corr - tr.clean[t])[c, c].max() < 1e-3 * scale
        # the rigid part alone leaves a clear error
        r = tr.shifts[t]
        rig = ndimage.map_coordinates(movie[t].astype(float), [yy - r[0], xx - r[1]],
                                      order=3, mode="nearest")
        assert np.abs(rig - tr.clean[t])[c, c].max() > 10 * np.abs(corr - tr.clean[t])[c, c].max()


def test_nonrigid_is_exact_against_analytic_scene():
    """With the flow, the clean scene read off the observed frame matches
    the analytic footprints at the grid (no motion)."""
    movie, tr = _noiseless(motion="nonrigid", baseline=0.0, neuropil=0.0, resting=0.0, seed=6,
                           n_frames=40)
    yy, xx = _grid(tr.dims)
    t = int(np.argmax(tr.C.sum(0)))
    ref = _analytic_neural(tr, t, yy, xx, order=4)
    corr = ndimage.map_coordinates(movie[t].astype(float), [yy - tr.flow[t, 0],
                                   xx - tr.flow[t, 1]], order=3, mode="nearest")
    c = slice(8, -8)
    assert np.abs(corr - ref)[c, c].max() < 2e-3 * ref.max()


def test_spline_warp_matches_scipy():
    rng = np.random.default_rng(0)
    F = rng.random((3, 20, 24))
    y = rng.uniform(-5, 30, (3, 7, 9))
    x = rng.uniform(-5, 30, (3, 7, 9))
    out = spline_warp(torch.from_numpy(F), torch.from_numpy(y), torch.from_numpy(x)).numpy()
    ref = np.stack([ndimage.map_coordinates(F[i], [y[i], x[i]], order=3, mode="grid-wrap")
                    for i in range(3)])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_fourier_shift_sign():
    yy, xx = _grid((32, 32))
    img = np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 8.0)
    out = fourier_shift(torch.from_numpy(img[None]), torch.tensor([[2.0, -3.0]]))[0].numpy()
    # out(y) = img(y + s): the blob moves to (16 - 2, 16 + 3)
    assert np.unravel_index(out.argmax(), out.shape) == (14, 19)


def test_one_photon_background():
    movie, tr = make_movie("1p", dims=(80, 80), n_frames=150, n_neurons=12,
                           noise=0.0, gain=None)
    assert tr.kind == "1p" and tr.b.shape == (80 * 80, 4) and tr.f.shape == (4, 150)
    np.testing.assert_allclose(movie, tr.neural() + tr.background(), atol=2e-4)
    bg = tr.background()
    peak = np.median(tr.C.max(1))
    ratio = bg.mean() / peak
    assert 3 <= ratio <= 10
    assert bg.min() > 0 and tr.b.min() >= 0 and tr.f.min() > 0
    # fluctuates in time, several components
    assert np.all(tr.f[1:].std(1) > 0.1) and tr.f[0].std() > 0
    # spatially smooth: much smoother than the neurons
    gb = np.abs(np.diff(bg.mean(0), axis=0)).mean() / bg.mean()
    nm = tr.neural().mean(0)
    gn = np.abs(np.diff(nm, axis=0)).mean() / nm.mean()
    assert gb < 0.2 * gn


def test_two_photon_background_rank():
    _, tr = make_movie(**SMALL, nb=2)
    assert tr.b.shape == (64 * 64, 2) and tr.f.shape == (2, 120)
    assert tr.b.min() >= 0 and tr.f.min() > 0
    _, tr1 = make_movie(**SMALL)
    assert tr1.b.shape[1] == 1 and tr1.f[0].std() > 0.01


def test_two_photon_static_anatomy():
    """Cells are visible at rest (with a dimmer nucleus), silent cells and
    vessel shadows sit in the static background b; A and C stay activity."""
    kw = dict(dims=(96, 96), n_frames=60, n_neurons=12, seed=4, noise=0.0, gain=None,
              firing_rate=0.01)
    _, off = make_movie(**kw, resting=0.0, n_vessels=0)
    movie, tr = make_movie(**kw)
    # activity, footprints, the old background fields and motion draws are
    # untouched by the anatomy term
    assert (off.A != tr.A).nnz == 0
    np.testing.assert_array_equal(off.C, tr.C)
    np.testing.assert_allclose(movie, tr.neural() + tr.background(), atol=1e-4)
    assert tr.params["n_silent"] == 6 and tr.params["resting"] == 0.75
    _, nov = make_movie(**kw, n_vessels=0)
    rest = (nov.b[:, 0] - off.b[:, 0]).reshape(tr.dims, order="F")
    A = tr.footprint_images()
    # resting fluorescence at each cell, comparable to a spike's amplitude,
    # with a dark nucleus: the centre is dimmer than the ring around it
    yy, xx = _grid(tr.dims)
    ring_gt_centre = 0
    for k in range(tr.K):
        cy, cx = tr.centers[k]
        r = np.hypot(yy - cy, xx - cx)
        centre = rest[r <= 1].mean()
        ring = rest[(r > 0.5 * tr.sigmas[k, 1]) & (r < 1.2 * tr.sigmas[k, 1])].mean()
        ring_gt_centre += ring > centre
        assert 0.1 < rest[A[k] > 0.5].mean() / float(off.f[0].mean()) < 5
    assert ring_gt_centre >= tr.K - 1
    # silent cells: bright static spots outside every active footprint
    outside = A.max(0) < 0.05
    assert (np.abs(rest) > 0.2)[outside].sum() > 30
    # vessel shadows: dark bands, the shade never flips the sign
    shade = tr.b[:, 0] / nov.b[:, 0]
    assert 0.1 < shade.min() < 0.6 and shade.max() <= 1 + 1e-6 and tr.b.min() > 0
    assert 0.02 < (shade < 0.8).mean() < 0.3
    # (that moving frames carry the anatomy exactly is checked by the
    # truth tests above, which run with the default anatomy)


def test_resting_anatomy_is_two_photon_only_vessels_opt_in_for_1p():
    _, tr = make_movie("1p", dims=(48, 48), n_frames=20, n_neurons=4)
    assert tr.params["resting"] == 0.0 and tr.params["n_vessels"] == 0
    with pytest.raises(ParameterError, match="resting"):
        make_movie("1p", dims=(48, 48), n_frames=20, n_neurons=4, resting=1.0)
    # 1p vessels shadow the background (in and out of focus) and nothing else
    _, tv = make_movie("1p", dims=(48, 48), n_frames=20, n_neurons=4, n_vessels=3,
                       vessel_depth=0.3)
    assert (tv.A != tr.A).nnz == 0 and np.array_equal(tv.C, tr.C)
    # (the 1p background is rescaled to bg_ratio x the cells afterwards, so
    # compare the shading relative to its brightest, unshaded pixels)
    ratio = tv.background(0, 1) / tr.background(0, 1)
    ratio = ratio / ratio.max()
    assert ratio.min() < 0.8 and np.median(ratio) > 0.95


def test_window_mean_flow():
    flow = np.zeros((4, 2, 10, 10), np.float32)
    flow[:, 0, :5] = 1.0
    flow[:, 1, :, 5:] = -2.0
    out = window_mean_flow(flow, [(0, 5, 0, 5), (5, 10, 5, 10)])
    assert out.shape == (4, 2, 2)
    np.testing.assert_allclose(out[0], [[1.0, 0.0], [0.0, -2.0]])


def test_standard_movies_small_overrides():
    m, tr = standard_2p(dims=(48, 48), n_frames=40, n_neurons=6)
    assert m.shape == (40, 48, 48) and tr.kind == "2p" and np.abs(tr.shifts).max() > 0
    assert tr.clean is None
    m, tr = standard_1p(dims=(48, 48), n_frames=40, n_neurons=6)
    assert m.shape == (40, 48, 48) and tr.kind == "1p"


def test_zero_neurons():
    m, tr = make_movie(**{**SMALL, "n_neurons": 0})
    assert tr.A.shape == (64 * 64, 0) and tr.C.shape == (0, 120)
    assert np.isfinite(m).all()


@pytest.mark.parametrize("kw", [dict(kind="3p"), dict(motion="warp"), dict(p=3),
                                dict(dims=(4, 4)), dict(shot_noise="x"), dict(nb=0),
                                dict(noise=-1.0), dict(decay_time=0.0), dict(resting=-1.0),
                                dict(nucleus=1.5), dict(vessel_depth=1.0), dict(n_silent=-2)])
def test_bad_parameters(kw):
    with pytest.raises(ParameterError):
        make_movie(**{**SMALL, **kw})
