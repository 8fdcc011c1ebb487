"""Ring-CNN background model: geometry, training, persistence, streaming.

Accuracy is scored on a small synthetic one-photon movie against its true
background ``b f`` and neural activity ``A C``.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import devices
from gpu_cnmf.errors import DeviceError, MovieError, ParameterError
from gpu_cnmf.ringcnn import (RingCNN, estimate_activity, fit_ring_cnn, load_model,
                              quantile_loss, ring_background, ring_mask, ring_params,
                              ring_radii, save_model, subtract_background)

GSIG = 4
FAST = dict(lr=1e-2, max_epochs=30)  # defaults otherwise; lr up so tests stay quick


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.fixture(scope="module")
def movie1p():
    from gpu_cnmf.synthetic import make_movie
    Y, truth = make_movie("1p", dims=(64, 64), n_frames=300, n_neurons=10, seed=1)
    return Y, truth, truth.background(), truth.neural()


@pytest.fixture(scope="module")
def pct_fit(movie1p):
    return fit_ring_cnn(movie1p[0], GSIG, dict(FAST))


@pytest.fixture(scope="module")
def mse_fit(movie1p):
    return fit_ring_cnn(movie1p[0], GSIG, dict(FAST, loss_fn="mse"))


# -- geometry and the network ------------------------------------------------
def test_ring_geometry_follows_gsig_and_width():
    r_in, r_out = ring_radii(4, 5)
    assert (r_in, r_out) == (6, 11)              # int(1.5 * gSig), + width
    m = ring_mask(4, 5)
    assert m.shape == (21, 21)
    yy, xx = np.mgrid[-10:11, -10:11]
    d = np.hypot(yy, xx)
    assert m[d < 6].sum() == 0 and m[d >= 11].sum() == 0 and m[(d >= 6) & (d < 11)].all()
    assert ring_mask(3, 2, r_factor=2.0).shape == (2 * (6 + 2 - 1) + 1,) * 2
    model = RingCNN((40, 40), 4, n_channels=3, width=2)
    assert model.kernel.shape == (3, 15, 15)
    with pytest.raises(ParameterError, match="width"):
        ring_radii(4, 0)
    with pytest.raises(ParameterError, match="gSig"):
        ring_radii(-1, 5)


@pytest.mark.parametrize("device", devices())
def test_fft_ring_responses_equal_conv2d(device):
    model = RingCNN((37, 52), 3, n_channels=3, width=4, use_bias=True).to(device)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    y = torch.randn(5, 37, 52, generator=torch.Generator().manual_seed(0)).to(device)
    k = model.ring_kernels()
    with torch.no_grad():
        ref = F.conv2d(y[:, None], k[:, None], padding=k.shape[-1] // 2) + model.bias[None, :, None, None]
        out = model.ring_responses(y)
    assert torch.allclose(out, ref, atol=1e-5 * float(ref.abs().max()))


def test_initial_model_is_the_ring_mean_everywhere():
    """Gains undo the zero padding: a flat frame maps to itself, borders too."""
    model = RingCNN((48, 40), 3, n_channels=2, width=5)
    with torch.no_grad():
        model.kernel.fill_(1.0)                      # drop the symmetry-breaking jitter
        b = model(torch.full((1, 48, 40), 7.0))
    assert torch.allclose(b, torch.full_like(b, 7.0), rtol=1e-4)


# -- accuracy ----------------------------------------------------------------
def test_background_beats_temporal_median(movie1p, pct_fit, mse_fit):
    """The issue's criterion: RMS error against the true background below
    that of a per-pixel temporal median.

    The quantile model (pct=0.01) is a lower envelope by design, about 2.3
    noise std below the truth at every pixel (a constant that CNMF's
    baseline absorbs), so it is scored on the background's fluctuations
    (per-pixel time means removed); the mse model is scored raw.
    """
    Y, _, B, _ = movie1p
    err_med = np.median(Y, 0)[None] - B
    err_pct = ring_background(pct_fit[0], Y) - B
    err_mse = ring_background(mse_fit[0], Y) - B
    fluct = lambda e: rms(e - e.mean(0))  # noqa: E731
    assert fluct(err_pct) < 0.35 * fluct(err_med)
    assert fluct(err_mse) < 0.35 * fluct(err_med)
    assert rms(err_mse) < 0.5 * rms(err_med)
    # The envelope's offset is the noise's pct-quantile, nearly uniform.
    offset = err_pct.mean(0)
    assert offset.mean() < 0 and offset.std() < 0.5 * abs(offset.mean())


def test_quantile_loss_leaves_transients_out(movie1p, pct_fit, mse_fit):
    Y, truth, B, AC = movie1p
    bg_pct = ring_background(pct_fit[0], Y)
    bg_mse = ring_background(mse_fit[0], Y)
    # A fraction pct of the data lies below the quantile fit; half below the mse fit.
    assert (Y < bg_pct).mean() < 0.03
    assert 0.4 < (Y < bg_mse).mean() < 0.6
    # Transients leak much less into the quantile background.
    leak = lambda bg: np.corrcoef((bg - B).ravel(), AC.ravel())[0, 1]  # noqa: E731
    assert leak(bg_pct) < leak(bg_mse) - 0.15
    # The cleaned movie carries the neurons: traces read out through the true
    # footprints follow the true calcium, far better than after a median.
    A = truth.A.toarray()
    pinv = np.linalg.pinv(A)

    def trace_corr(cleaned):
        tr = pinv @ cleaned.transpose(0, 2, 1).reshape(len(cleaned), -1).T
        return np.mean([np.corrcoef(tr[k], truth.C[k])[0, 1] for k in range(truth.K)])

    c_ring = trace_corr(Y - bg_pct)
    assert c_ring > 0.55 and c_ring > trace_corr(Y - np.median(Y, 0)) + 0.25


# -- training controls -------------------------------------------------------
def test_early_stopping_by_patience(movie1p):
    Y = movie1p[0][:96]
    # lr=0: the loss never improves after the first epoch.
    model, hist = fit_ring_cnn(Y, GSIG, dict(lr=0.0, patience=2, max_epochs=50))
    assert hist.epochs == 3 and hist.stopped_early and hist.best_epoch == 0
    model, hist = fit_ring_cnn(Y, GSIG, dict(lr=0.0, patience=0, max_epochs=50))
    assert hist.epochs == 2 and hist.stopped_early
    # Real training: stops exactly `patience` epochs after the best one.
    model, hist = fit_ring_cnn(Y, GSIG, dict(lr=3e-2, patience=1, max_epochs=40))
    assert hist.stopped_early and hist.epochs == hist.best_epoch + 2
    assert hist.val_loss[hist.best_epoch] == min(hist.val_loss)


def test_lr_scheduler_and_max_epochs(movie1p):
    Y = movie1p[0][:64]
    sched = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
    _, hist = fit_ring_cnn(Y, GSIG, dict(lr=1e-2, lr_scheduler=sched, max_epochs=3,
                                         patience=10))
    assert hist.epochs == 3 and not hist.stopped_early
    assert np.allclose(hist.lr, [1e-2, 5e-3, 2.5e-3])
    plateau = lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)  # noqa: E731
    _, hist = fit_ring_cnn(Y, GSIG, dict(lr=0.0, lr_scheduler=plateau, max_epochs=2, patience=5))
    assert hist.epochs == 2


def test_bias_and_additive_terms_are_learned(movie1p):
    Y = movie1p[0][:96]
    model, _ = fit_ring_cnn(Y, GSIG, dict(lr=1e-2, use_bias=True, use_add=True,
                                          n_channels=3, width=3, max_epochs=4))
    keys = set(model.state_dict())
    assert {"kernel", "gain", "bias", "add"} <= keys
    assert model.bias.shape == (3,) and model.add.shape == (64, 64)
    add, bias = model.add.detach(), model.bias.detach()
    # Trained, not just calibrated: the additive image varies over the frame.
    assert float(add.std()) > 0 and float(bias.abs().max()) > 0
    plain, _ = fit_ring_cnn(Y, GSIG, dict(max_epochs=1))
    assert plain.bias is None and plain.add is None
    assert "bias" not in plain.state_dict() and "add" not in plain.state_dict()


# -- persistence ---------------------------------------------------------------
def test_save_load_round_trip_and_reuse(movie1p, tmp_path):
    Y = movie1p[0][:96]
    path = tmp_path / "models" / "ring.pt"
    params = dict(lr=1e-2, max_epochs=3, path_to_model=str(path), use_add=True)
    model, hist = fit_ring_cnn(Y, GSIG, params)
    assert hist.path_to_model == str(path) and path.is_file()
    ref = ring_background(model, Y)
    again = load_model(path)
    assert np.array_equal(ring_background(again, Y), ref)
    reused, h2 = fit_ring_cnn(Y, GSIG, dict(params, reuse_model=True))
    assert h2.reused and h2.epochs == 0
    assert np.array_equal(ring_background(reused, Y), ref)
    # A save/load through save_model directly is exact too.
    save_model(reused, tmp_path / "copy.pt")
    assert np.array_equal(ring_background(load_model(tmp_path / "copy.pt"), Y), ref)


def test_reuse_model_errors(movie1p, tmp_path):
    Y = movie1p[0][:40]
    path = tmp_path / "ring.pt"
    fit_ring_cnn(Y, GSIG, dict(max_epochs=1, path_to_model=str(path)))
    with pytest.raises(ParameterError, match="n_channels"):
        fit_ring_cnn(Y, GSIG, dict(n_channels=3, path_to_model=str(path), reuse_model=True))
    with pytest.raises(ParameterError, match="width"):
        fit_ring_cnn(Y, GSIG, dict(width=3, path_to_model=str(path), reuse_model=True))
    with pytest.raises(ParameterError, match="dims"):
        fit_ring_cnn(Y[:, :32], GSIG, dict(path_to_model=str(path), reuse_model=True))
    with pytest.raises(ParameterError, match="no saved model"):
        fit_ring_cnn(Y, GSIG, dict(path_to_model=str(tmp_path / "nope.pt"), reuse_model=True))
    with pytest.raises(ParameterError, match="path_to_model"):
        fit_ring_cnn(Y, GSIG, dict(reuse_model=True))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ParameterError, match="readable"):
        load_model(tmp_path / "junk.pt")


# -- streaming -----------------------------------------------------------------
def test_subtract_background_streams_to_memmap(movie1p, pct_fit, tmp_path):
    from gpu_cnmf.io import load_memmap, open_movie
    Y = movie1p[0]
    model = pct_fit[0]
    in_memory = subtract_background(Y, model)
    assert in_memory.dtype == np.float32 and in_memory.shape == Y.shape
    assert np.allclose(in_memory, Y - ring_background(model, Y), atol=1e-4)
    np.save(tmp_path / "movie.npy", Y)
    src = open_movie(str(tmp_path / "movie.npy"))
    path = subtract_background(src, model, out_base_name=str(tmp_path / "clean"),
                               chunk_frames=70)
    Yr, dims, T = load_memmap(path)
    assert dims == (64, 64) and T == Y.shape[0] and Yr.shape == (64 * 64, T)
    assert "_order_C_" in path and Yr.flags.c_contiguous
    # Fortran pixel order: pixel p = i + j * d1.
    frames = np.asarray(Yr).T.reshape(T, 64, 64, order="F")
    assert np.allclose(frames, in_memory, atol=1e-4)
    assert not list(tmp_path.glob("*.part"))


def test_training_streams_from_a_movie_source(movie1p, tmp_path):
    """Chunked reading from a file trains as well as the resident array."""
    from gpu_cnmf.io import open_movie
    Y, _, B, _ = movie1p
    np.save(tmp_path / "movie.npy", Y)
    model, hist = fit_ring_cnn(open_movie(str(tmp_path / "movie.npy")), GSIG,
                               dict(FAST, max_epochs=12), chunk_frames=64)
    err = ring_background(model, Y) - B
    err_med = np.median(Y, 0)[None] - B
    assert rms(err - err.mean(0)) < 0.35 * rms(err_med - err_med.mean(0))
    assert hist.n_train_frames + hist.n_val_frames == Y.shape[0]


def test_remove_activity(movie1p, pct_fit):
    Y, truth, B, AC = movie1p
    model = pct_fit[0]
    y = Y[:50]
    act = AC[:50]
    # Known activity: the ring sees the frames without it.
    assert np.allclose(ring_background(model, y, activity=act),
                       ring_background(model, y - act), atol=1e-5)
    out = subtract_background(y, model, remove_activity=True, A=truth.A, C=truth.C[:, :50])
    assert np.allclose(out, y - ring_background(model, y - act), atol=1e-4)
    # Self-estimate: non-negative and concentrated on the active neurons.
    bg = torch.from_numpy(ring_background(model, y))
    est = estimate_activity(torch.from_numpy(y), bg, gSig=GSIG).numpy()
    assert est.min() >= 0 and 0 < (est > 0).mean() < 0.1
    # At this movie's SNR the raw residual correlates with A C at ~0.2 only.
    assert np.corrcoef(est.ravel(), act.ravel())[0, 1] > 0.3
    cleaned = subtract_background(y, model, remove_activity=True)
    assert np.allclose(cleaned, y - ring_background(model, y - est), atol=1e-4)
    # The flag from ring_CNN params travels with the fitted model.
    model.remove_activity = True
    try:
        assert np.allclose(subtract_background(y, model), cleaned, atol=1e-5)
    finally:
        model.remove_activity = False


# -- bad input -----------------------------------------------------------------
def test_parameter_and_movie_errors(movie1p):
    Y = movie1p[0][:20]
    with pytest.raises(ParameterError, match="did you mean 'n_channels'"):
        ring_params(dict(n_channel=2))
    with pytest.raises(ParameterError, match="pct"):
        ring_params(dict(pct=10))
    with pytest.raises(ParameterError, match="loss_fn"):
        ring_params(dict(loss_fn="l1"))
    with pytest.raises(ParameterError, match="lr_scheduler"):
        ring_params(dict(lr_scheduler=0.5))
    with pytest.raises(ParameterError, match="n_channels"):
        ring_params(dict(n_channels=0))
    assert ring_params() == ring_params({}) and ring_params()["pct"] == 0.01
    bad = Y.copy()
    bad[3, 5, 5] = np.nan
    with pytest.raises(MovieError, match="NaN"):
        fit_ring_cnn(bad, GSIG, dict(max_epochs=1))
    with pytest.raises(MovieError, match="d1, d2"):
        fit_ring_cnn(Y[..., None], GSIG)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            fit_ring_cnn(Y, GSIG, use_cuda=True)
    model = RingCNN((32, 32), GSIG)
    with pytest.raises(ParameterError, match="trained for"):
        subtract_background(Y, model)


def test_quantile_loss_values():
    r = torch.tensor([2.0, -1.0])
    assert torch.isclose(quantile_loss(r, 0.1), torch.tensor((0.1 * 2 + 0.9 * 1) / 2))
    # Minimiser of the pinball loss over a constant is the pct-quantile.
    x = torch.randn(10001, generator=torch.Generator().manual_seed(0))
    c = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([c], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        quantile_loss(x - c, 0.2).backward()
        opt.step()
    assert abs(float(c.detach()) - float(torch.quantile(x, 0.2))) < 0.05


# -- GPU -----------------------------------------------------------------------
@pytest.mark.gpu
def test_cpu_and_gpu_agree(movie1p, pct_fit):
    Y, _, B, _ = movie1p
    cpu_model = pct_fit[0]
    gpu_model = load_model_copy(cpu_model, "cuda")
    bg_cpu = ring_background(cpu_model, Y)
    bg_gpu = ring_background(gpu_model, Y)
    assert np.allclose(bg_cpu, bg_gpu, atol=1e-4 * np.abs(bg_cpu).max())
    model, hist = fit_ring_cnn(Y, GSIG, dict(FAST), use_cuda=True)
    assert "cuda" in hist.device.lower() or "gpu" in hist.device.lower() or hist.device
    err = ring_background(model, Y) - B
    err_med = np.median(Y, 0)[None] - B
    assert rms(err - err.mean(0)) < 0.35 * rms(err_med - err_med.mean(0))
    out = subtract_background(torch.from_numpy(Y).cuda(), model)
    assert np.allclose(out, Y - ring_background(model, Y), atol=1e-3)


def load_model_copy(model, device):
    import io
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    hp = model.hparams
    twin = RingCNN(hp["dims"], hp["gSig"], n_channels=hp["n_channels"], width=hp["width"],
                   use_bias=hp["use_bias"], use_add=hp["use_add"], r_factor=hp["r_factor"])
    twin.load_state_dict(torch.load(buf, weights_only=True))
    return twin.to(device).eval()


# -- end to end ------------------------------------------------------------------
@pytest.mark.slow
def test_cnmf_on_ring_cleaned_movie(tmp_path):
    """The issue's end-to-end criterion: CNMF as for 2p data (patches, then
    component evaluation) on the Ring-CNN-cleaned movie, read from the memory
    map subtract_background writes, finds the neurons with F1 >= 0.85, close
    to what it reaches with the true background removed."""
    from gpu_cnmf import CNMF, CNMFParams
    from gpu_cnmf.io import load_memmap
    from gpu_cnmf.metrics import roi_f1
    from gpu_cnmf.synthetic import make_movie
    dims, K = (128, 128), 30
    Y, truth = make_movie("1p", dims=dims, n_frames=800, n_neurons=K, seed=1)
    model, _ = fit_ring_cnn(Y, GSIG, dict(FAST, max_epochs=40, use_add=True))
    path = subtract_background(Y, model, out_base_name=str(tmp_path / "clean"))
    Yr, dims_, T = load_memmap(path)
    images = np.reshape(Yr.T, (T,) + tuple(dims_), order="F")

    def f1(movie):
        params = CNMFParams(params_dict=dict(
            fr=30, decay_time=0.4, gSig=(GSIG, GSIG), K=8, nb=1, p=1, rf=24, stride=12,
            method_init="greedy_roi", only_init=True, min_SNR=2.5, rval_thr=0.8, use_cnn=False))
        est = CNMF(n_processes=1, params=params).fit(movie).estimates
        est.evaluate_components(movie, params)
        return roi_f1(truth.A, est.A[:, est.idx_components], dims)["f1"]

    f1_ring = f1(images)
    # Reference: the true background removed (plus a constant, as CNMF wants
    # a positive baseline).
    f1_true = f1(Y - truth.background() + 5.0)
    assert f1_ring >= 0.85
    assert f1_ring >= f1_true - 0.1
