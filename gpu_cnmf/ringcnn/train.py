"""Training the Ring-CNN on frames streamed from an array or a movie file.

Every frame is one training example: the target is the frame itself and the
prediction the ring model's background. With the quantile ("pinball") loss
at a small quantile ``pct`` the fit is a lower envelope of the data: a
pixel's neuron only adds positive transients on top of the background, so
frames where the prediction overshoots cost ``1 - pct`` per unit while
frames where the data overshoots (transients) cost only ``pct``, and the
transients stay out of the background (Friedrich et al. 2021). ``'mse'``
instead fits the conditional mean, transients included.

Frames are read chunk by chunk (chunk size from the backend's memory budget),
chunk order and frame order within a chunk are shuffled every epoch, and a
fixed, evenly spaced set of frames (``val_fraction``) is held out to monitor
early stopping. A movie that fits in one chunk stays on the device for the
whole fit.
"""
from __future__ import annotations

import copy
import difflib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..backend import describe, frames_per_chunk, get_device, to_tensor
from ..errors import ParameterError
from ._frames import FrameReader, prefetch, spans_of
from .model import RingCNN, load_model, save_model

#: Defaults of CNMFParams.ring_CNN (spec/caiman_parameters.md).
RING_DEFAULTS = {
    "n_channels": 2,
    "use_bias": False,
    "use_add": False,
    "pct": 0.01,
    "patience": 3,
    "max_epochs": 100,
    "width": 5,
    "loss_fn": "pct",
    "lr": 1e-3,
    "lr_scheduler": None,
    "path_to_model": None,
    "remove_activity": False,
    "reuse_model": False,
}

# At most this many held-out frames, kept on the device for the whole fit.
_MAX_VAL_FRAMES = 256


def ring_params(params_ring=None) -> dict:
    """Validated ring_CNN parameters with CaImAn's defaults filled in.

    Parameters
    ----------
    params_ring : dict, CNMFParams or None
        The ``ring_CNN`` group (or a CNMFParams, whose group is used).
    """
    if params_ring is None:
        given = {}
    elif hasattr(params_ring, "get_group"):
        given = dict(params_ring.get_group("ring_CNN"))
    elif isinstance(params_ring, dict):
        given = dict(params_ring)
    else:
        raise ParameterError(
            f"params_ring: expected a dict of ring_CNN parameters, got {type(params_ring).__name__}")
    for key in given:
        if key not in RING_DEFAULTS:
            close = difflib.get_close_matches(key, RING_DEFAULTS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ParameterError(f"ring_CNN: unknown parameter {key!r}{hint}")
    p = {**RING_DEFAULTS, **given}

    def need(cond, key, what):
        if not cond:
            raise ParameterError(f"ring_CNN {key}: expected {what}, got {p[key]!r}")

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    need(is_int(p["n_channels"]) and p["n_channels"] >= 1, "n_channels", "a positive integer")
    need(is_int(p["width"]) and p["width"] >= 1, "width", "a positive integer (pixels)")
    need(is_int(p["patience"]) and p["patience"] >= 0, "patience", "an integer >= 0")
    need(is_int(p["max_epochs"]) and p["max_epochs"] >= 0, "max_epochs", "an integer >= 0")
    need(p["loss_fn"] in ("pct", "mse"), "loss_fn", "'pct' (quantile loss) or 'mse'")
    need(isinstance(p["pct"], (float, int, np.floating)) and 0 < p["pct"] < 1, "pct",
         "a quantile strictly between 0 and 1 (e.g. 0.01, not a percentage)")
    need(isinstance(p["lr"], (float, int, np.floating)) and p["lr"] >= 0
         and math.isfinite(p["lr"]), "lr", "a learning rate >= 0")
    need(p["lr_scheduler"] is None or callable(p["lr_scheduler"]), "lr_scheduler",
         "None or a callable taking the optimizer and returning a torch LR scheduler")
    for key in ("use_bias", "use_add", "remove_activity", "reuse_model"):
        need(isinstance(p[key], (bool, np.bool_)), key, "True or False")
    if p["reuse_model"] and p["path_to_model"] is None:
        raise ParameterError("ring_CNN reuse_model=True needs path_to_model (the saved model)")
    return p


def quantile_loss(residual: torch.Tensor, pct: float) -> torch.Tensor:
    """Mean pinball loss of ``residual = data - prediction`` at quantile ``pct``.

    Minimised when a fraction ``pct`` of the data lies below the prediction.
    """
    return torch.maximum(pct * residual, (pct - 1.0) * residual).mean()


def mse_loss(residual: torch.Tensor) -> torch.Tensor:
    """Mean squared residual (fits the conditional mean)."""
    return (residual * residual).mean()


def make_loss(loss_fn: str, pct: float = 0.01):
    """The loss named by the ring_CNN ``loss_fn`` parameter, as f(residual)."""
    if loss_fn == "pct":
        return lambda r: quantile_loss(r, pct)
    if loss_fn == "mse":
        return mse_loss
    raise ParameterError(f"ring_CNN loss_fn: expected 'pct' or 'mse', got {loss_fn!r}")


@dataclass
class TrainHistory:
    """What happened during :func:`fit_ring_cnn`.

    Losses are per epoch, in units of the movie's ``scale`` (its RMS).
    ``best_epoch`` (0-based) is the epoch whose weights the model keeps;
    ``reused`` is True when the model was loaded instead of trained.
    """
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    epoch_time: list = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    reused: bool = False
    n_train_frames: int = 0
    n_val_frames: int = 0
    device: str = ""
    path_to_model: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.train_loss)


def movie_scale(reader: FrameReader, n_sample: int = 64) -> float:
    """RMS intensity of up to ``n_sample`` evenly spaced frames (the model's unit)."""
    idx = np.unique(np.linspace(0, reader.n_frames - 1, min(n_sample, reader.n_frames)).astype(int))
    acc, n = 0.0, 0
    for t in idx:
        f = reader.read(int(t), int(t) + 1)
        f = f.double() if isinstance(f, torch.Tensor) else torch.from_numpy(np.asarray(f, np.float64))
        acc += float((f * f).sum())
        n += f.numel()
    rms = math.sqrt(acc / max(n, 1))
    return rms if rms > 0 else 1.0


def _val_indices(n_frames: int, val_fraction: float) -> np.ndarray:
    if not 0 <= val_fraction < 1:
        raise ParameterError(f"val_fraction: expected a fraction in [0, 1), got {val_fraction!r}")
    n_val = min(int(round(val_fraction * n_frames)), _MAX_VAL_FRAMES, n_frames - 1)
    if n_val <= 0:
        return np.zeros(0, dtype=int)
    # Evenly spaced, offset from the ends, so validation spans the whole session.
    return np.unique(((np.arange(n_val) + 0.5) * n_frames / n_val).astype(int))


def _calibrate(model: RingCNN, frames: torch.Tensor, loss_fn: str, pct: float) -> None:
    """Shift or rescale the initial model so that it already sits at the
    target quantile (or least-squares level) of the data.

    The ring mean overshoots a low quantile by a few noise std; one global
    constant, read off a sample of frames, removes that before the first
    step and saves the epochs the optimizer would spend on it. With an
    additive term (use_add) or biases (use_bias) the constant is an offset,
    which keeps the slope on the ring at one; otherwise it is a factor on
    the gains, applied only if the initial background is positive.
    """
    with torch.no_grad():
        b = model(frames)
        offset = model.add is not None or model.bias is not None
        stat = (frames - b) / model.scale if offset else frames / b
        if not offset and not bool((b > 0).all()):
            return
        if loss_fn == "pct":
            stat = stat.flatten()
            if stat.numel() > 2**24:  # torch.quantile's input limit
                stat = stat[torch.randperm(stat.numel(), device=stat.device)[:2**24]]
            value = torch.quantile(stat, pct)
        else:
            value = stat.mean() if offset else (frames * b).sum() / (b * b).sum()
        if not torch.isfinite(value):
            return
        if model.add is not None:
            model.add.add_(value)
        elif model.bias is not None:
            # sum_c gain_c * bias_c is the offset; gains sum to ~1 inside the frame.
            model.bias.add_(value)
        elif value > 0:
            model.gain.mul_(value)


def _batched_loss(model, frames, loss, batch_size):
    """Mean loss of ``model`` over ``frames`` (already on the device)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for a in range(0, frames.shape[0], batch_size):
            y = frames[a:a + batch_size]
            r = (y - model(y)) / model.scale
            total += float(loss(r)) * y.shape[0]
            n += y.shape[0]
    return total / max(n, 1)


def fit_ring_cnn(movie, gSig, params_ring=None, use_cuda=False, *, r_factor: float = 1.5,
                 batch_size: int = 32, val_fraction: float = 0.1,
                 chunk_frames: int | None = None, min_delta: float = 1e-4,
                 seed: int = 0, verbose: bool = False):
    """Train (or load) a Ring-CNN background model for a 1-photon movie.

    Parameters
    ----------
    movie : ndarray, torch.Tensor, MovieSource or path
        (T, d1, d2) frames; read chunk by chunk, never all at once unless
        they fit the device's memory budget.
    gSig : float or (float, float)
        Neuron half-size in pixels (CaImAn's ``gSig``); the ring's inner
        radius is ``int(gSig * r_factor)``.
    params_ring : dict or CNMFParams, optional
        The ``ring_CNN`` parameters (see :data:`RING_DEFAULTS`): n_channels,
        width, use_bias, use_add, loss_fn ('pct' quantile loss at ``pct``, or
        'mse'), lr (Adam), lr_scheduler (callable(optimizer) -> scheduler,
        stepped once per epoch; a ReduceLROnPlateau is given the monitored
        loss), max_epochs, patience (early stopping: stop after ``patience``
        epochs without improvement of the monitored loss and keep the best
        epoch's weights), path_to_model (where the trained model is saved, or
        the model to load), reuse_model (load instead of training).
        remove_activity is used at inference (:func:`subtract_background`).
    use_cuda : bool or str
        Device, resolved by :func:`gpu_cnmf.backend.get_device`.
    r_factor : float
        Inner ring radius in units of gSig (CNMF-E's ``ring_size_factor``).
    batch_size : int
        Frames per gradient step.
    val_fraction : float
        Fraction of frames held out (evenly spaced, at most 256) to monitor
        early stopping; 0 monitors the training loss.
    chunk_frames : int, optional
        Frames read and moved to the device at once (default: memory budget).
    min_delta : float
        Relative improvement of the monitored loss that counts as one.
    seed : int
        Seeds initialisation and shuffling (CPU runs are reproducible).

    Returns
    -------
    model : RingCNN
        On the chosen device, in eval mode.
    history : TrainHistory
    """
    p = ring_params(params_ring)
    device = get_device(use_cuda)
    reader = FrameReader(movie)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ParameterError(f"batch_size: expected a positive integer, got {batch_size!r}")
    structure = dict(dims=reader.dims, gSig=gSig, n_channels=p["n_channels"], width=p["width"],
                     use_bias=p["use_bias"], use_add=p["use_add"], r_factor=float(r_factor))
    if p["reuse_model"]:
        model = load_model(p["path_to_model"], device, expect=structure).eval()
        model.remove_activity = bool(p["remove_activity"])
        hist = TrainHistory(reused=True, device=describe(device),
                            path_to_model=str(p["path_to_model"]))
        return model, hist

    model = RingCNN(reader.dims, gSig, n_channels=p["n_channels"], width=p["width"],
                    use_bias=p["use_bias"], use_add=p["use_add"], r_factor=r_factor,
                    scale=movie_scale(reader), seed=seed).to(device)
    _calibrate(model, to_tensor(reader.read(0, min(64, reader.n_frames)), device),
               p["loss_fn"], float(p["pct"]))
    loss = make_loss(p["loss_fn"], float(p["pct"]))
    opt = torch.optim.Adam(model.parameters(), lr=float(p["lr"]))
    sched = p["lr_scheduler"](opt) if p["lr_scheduler"] is not None else None
    plateau = isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)

    T = reader.n_frames
    val_idx = _val_indices(T, val_fraction)
    is_val = np.zeros(T, dtype=bool)
    is_val[val_idx] = True
    val_frames = None
    if val_idx.size:
        val_frames = torch.stack([to_tensor(reader.read(int(t), int(t) + 1)[0], device)
                                  for t in val_idx])
    if chunk_frames is None:
        # Raw frames on the device, plus room for a batch's FFT workspace.
        chunk_frames = frames_per_chunk(reader.dims, copies=2.0, device=device, max_frames=T)
    spans = spans_of(T, chunk_frames)
    resident = None
    if len(spans) == 1:
        # The whole movie fits: move its training frames to the device once.
        resident = to_tensor(reader.read(0, T), device)[torch.from_numpy(~is_val).to(device)]
    gen = torch.Generator().manual_seed(int(seed))
    hist = TrainHistory(n_train_frames=int(T - val_idx.size), n_val_frames=int(val_idx.size),
                        device=describe(device))
    best, best_state, wait = math.inf, None, 0

    for epoch in range(p["max_epochs"]):
        t0 = time.perf_counter()
        model.train()
        if resident is not None:
            chunks = [resident]
        else:
            order = torch.randperm(len(spans), generator=gen).tolist()
            chunks = (to_tensor(f, device)[torch.from_numpy(~is_val[a:b]).to(device)]
                      for a, b, f in prefetch(reader, [spans[i] for i in order]))
        total, n_seen = 0.0, 0
        for y in chunks:
            perm = torch.randperm(y.shape[0], generator=gen).to(device)
            for s in range(0, y.shape[0], batch_size):
                yb = y[perm[s:s + batch_size]]
                opt.zero_grad(set_to_none=True)
                lb = loss((yb - model(yb)) / model.scale)
                lb.backward()
                opt.step()
                total += float(lb.detach()) * yb.shape[0]
                n_seen += yb.shape[0]
        train_loss = total / max(n_seen, 1)
        model.eval()
        val_loss = (_batched_loss(model, val_frames, loss, batch_size)
                    if val_frames is not None else float("nan"))
        hist.train_loss.append(train_loss)
        hist.val_loss.append(val_loss)
        hist.lr.append(float(opt.param_groups[0]["lr"]))
        monitored = val_loss if val_frames is not None else train_loss
        improved = monitored < (best - min_delta * abs(best) if math.isfinite(best) else best)
        if improved:
            best, wait, hist.best_epoch = monitored, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
        if sched is not None:
            sched.step(monitored) if plateau else sched.step()
        hist.epoch_time.append(time.perf_counter() - t0)
        if verbose:
            print(f"ring-CNN epoch {epoch + 1}: train {train_loss:.5g} val {val_loss:.5g} "
                  f"({hist.epoch_time[-1]:.2f} s)")
        if wait > 0 and wait >= p["patience"]:
            hist.stopped_early = epoch + 1 < p["max_epochs"]
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.remove_activity = bool(p["remove_activity"])
    if p["path_to_model"] is not None:
        hist.path_to_model = save_model(model, p["path_to_model"])
    return model, hist
