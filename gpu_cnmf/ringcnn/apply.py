"""Streaming background subtraction with a trained Ring-CNN.

The movie is read chunk by chunk (chunk size from the backend's memory
budget), each chunk goes to the model's device, its background is predicted
and subtracted, and the cleaned frames are written to a pixels x T C-order
memory map (CaImAn's ``..._order_C_frames_N_.mmap``, what CNMF reads) or
gathered into an array.

``remove_activity`` (CaImAn's ring_CNN flag) subtracts an estimate of the
neurons' fluorescence from a frame before its background is predicted, so
that transients of neurons lying on a pixel's ring do not leak into that
pixel's background. With CNMF estimates ``A`` (pixels x K footprints) and
``C`` (K x T traces) the estimate is ``A c_t``. (CaImAn's online pipeline
uses the previous frame's ``c_{t-1}``, the latest it has; offline the
current frame's is known.) Without estimates it is taken from the frame
itself: the part of the smoothed first-pass residual ``y - b`` that rises
more than 2.5 robust standard deviations above its usual level
(:func:`estimate_activity`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..backend import frames_per_chunk, to_numpy, to_tensor
from ..errors import ParameterError
from ._frames import FrameReader, prefetch, spans_of
from .model import RingCNN

# Robust activity threshold, in residual standard deviations (self-estimate).
_ACTIVITY_THRESHOLD = 2.5
# Frames needed to take the noise statistics per pixel over time.
_MIN_FRAMES_TEMPORAL = 16


def _device_of(model: RingCNN) -> torch.device:
    return next(model.parameters()).device


def _copies_per_frame(model: RingCNN) -> float:
    """Frame-sized float32 buffers one frame needs during inference."""
    fh, fw = model._fft_shape
    ratio = fh * fw / float(np.prod(model.dims))
    return 3.0 + ratio * (2.0 + 3.0 * model.hparams["n_channels"])


def _auto_batch(model: RingCNN, device: torch.device) -> int:
    """Frames per forward pass. On the CPU small batches win: the FFT
    workspace of a batch should stay in cache and below the allocator's
    mmap threshold (fresh zeroed pages for every batch cost more than the
    FFTs at 256x256); a GPU wants large ones."""
    if device.type == "cuda":
        return 64
    fh, fw = model._fft_shape
    per_frame = fh * fw * 4 * 2 * model.hparams["n_channels"]   # complex64 spectra
    return int(max(1, min(16, 2**23 // per_frame)))


def _predict(model, y, batch_size):
    if batch_size is None:
        batch_size = _auto_batch(model, y.device)
    out = torch.empty_like(y)
    with torch.inference_mode():
        for a in range(0, y.shape[0], batch_size):
            out[a:a + batch_size] = model(y[a:a + batch_size])
    return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of frames (n, d1, d2), edges reflected."""
    rad = max(1, int(np.ceil(3 * sigma)))
    rad = min(rad, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-rad, rad + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum())
    out = torch.nn.functional.pad(x[:, None], (rad, rad, rad, rad), mode="reflect")
    out = torch.nn.functional.conv2d(out, k.view(1, 1, 1, -1))
    out = torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1))
    return out[:, 0]


def estimate_activity(y: torch.Tensor, background: torch.Tensor, gSig: float | None = None,
                      threshold: float = _ACTIVITY_THRESHOLD) -> torch.Tensor:
    """Neural activity in frames ``y`` (n, d1, d2) given a first background.

    The residual ``y - background`` is noise (around the loss's quantile
    offset) plus sparse positive transients. It is first smoothed with a
    Gaussian of width ``gSig / 2`` (a matched filter for neuron-sized
    blobs, which lifts transients out of the pixel noise). With at least
    ``_MIN_FRAMES_TEMPORAL`` frames each pixel's usual level and noise come
    from its own residuals over time (median and 1.4826 x MAD, robust to
    the sparse transients); with fewer, from each frame's pixels. What
    exceeds the usual level by more than ``threshold`` noise std is
    returned as activity (zero elsewhere).
    """
    r = y - background
    if gSig is not None and gSig > 0 and min(r.shape[-2:]) > 2:
        r = _gaussian_blur(r, gSig / 2.0)
    if r.shape[0] >= _MIN_FRAMES_TEMPORAL:
        centre = r.median(dim=0, keepdim=True).values
        sigma = 1.4826 * (r - centre).abs().median(dim=0, keepdim=True).values
    else:
        flat = r.flatten(1)
        centre = flat.median(dim=1, keepdim=True).values
        sigma = 1.4826 * (flat - centre).abs().median(dim=1, keepdim=True).values
        centre, sigma = centre[:, :, None], sigma[:, :, None]
    return torch.clamp(r - centre - threshold * sigma, min=0)


def ring_background(model: RingCNN, movie_chunk, activity=None, batch_size: int | None = None):
    """Background of the frames ``movie_chunk`` predicted by ``model``.

    Parameters
    ----------
    model : RingCNN
    movie_chunk : ndarray or torch.Tensor
        (n, d1, d2) frames (or one (d1, d2) frame).
    activity : ndarray or torch.Tensor, optional
        Neural fluorescence of the same shape, removed from the frames
        before the ring sees them (``remove_activity``).
    batch_size : int, optional
        Frames per forward pass (default: small on the CPU, 64 on a GPU).

    Returns
    -------
    ndarray or torch.Tensor
        float32 background of the input's shape; a tensor on the model's
        device for tensor input, a numpy array otherwise.
    """
    device = _device_of(model)
    as_tensor = isinstance(movie_chunk, torch.Tensor)
    y = to_tensor(movie_chunk, device)
    single = y.dim() == 2
    if single:
        y = y[None]
    if y.dim() != 3:
        raise ParameterError(
            f"movie_chunk: expected (n, d1, d2) frames, got shape {tuple(y.shape)}")
    if activity is not None:
        act = to_tensor(activity, device)
        if act.shape != y.shape and not (single and act.shape == y.shape[1:]):
            raise ParameterError(
                f"activity: shape {tuple(act.shape)} does not match the frames {tuple(y.shape)}")
        y = y - act.view_as(y)
    b = _predict(model, y, batch_size)
    if single:
        b = b[0]
    return b if as_tensor else to_numpy(b)


def _activity_from_estimates(A, C, dims, frames: slice) -> np.ndarray:
    """A c_t for the frames in ``frames`` as (n, d1, d2) (Fortran pixel order)."""
    Ct = np.asarray(C[:, frames], dtype=np.float32)
    act = A @ Ct  # pixels x n, works for dense and scipy.sparse A
    act = np.asarray(act, dtype=np.float32)
    n = act.shape[1]
    return act.reshape(dims[1], dims[0], n).transpose(2, 1, 0)


def subtract_background(movie_or_source, model: RingCNN, out_base_name=None,
                        chunk_frames: int | None = None, *, remove_activity=None,
                        A=None, C=None, batch_size: int | None = None):
    """Subtract the Ring-CNN background from a movie, chunk by chunk.

    Parameters
    ----------
    movie_or_source : ndarray, torch.Tensor, MovieSource or path
        (T, d1, d2) frames matching ``model.dims``.
    model : RingCNN
        Trained model (its device is used).
    out_base_name : str, optional
        Write the cleaned movie to a C-order memory map named from this base
        (pixels x T, via :class:`gpu_cnmf.io.MemmapWriter`) and return its
        path. Without it the cleaned movie is returned as a float32 array.
    chunk_frames : int, optional
        Frames per chunk (default: from the device's memory budget).
    remove_activity : bool, optional
        Remove neural activity before predicting the background (see the
        module docstring); default: the model's ``remove_activity`` (set
        from ring_CNN params by :func:`fit_ring_cnn`).
    A, C : optional
        CNMF footprints (pixels x K, Fortran pixel order; dense or sparse)
        and traces (K x T) to estimate that activity from.
    batch_size : int, optional
        Frames per forward pass (default: small on the CPU, 64 on a GPU).

    Returns
    -------
    str or ndarray
        Path of the memory map, or the (T, d1, d2) cleaned movie.
    """
    reader = FrameReader(movie_or_source)
    if reader.dims != model.dims:
        raise ParameterError(
            f"movie_or_source: frames of shape {reader.dims} but the Ring-CNN was trained "
            f"for {model.dims}")
    if remove_activity is None:
        remove_activity = bool(getattr(model, "remove_activity", False))
    if (A is None) != (C is None):
        raise ParameterError("A and C: give both CNMF estimates or neither")
    if A is not None:
        if A.shape[0] != int(np.prod(reader.dims)):
            raise ParameterError(
                f"A: expected {int(np.prod(reader.dims))} rows (pixels), got {A.shape[0]}")
        if C.shape[1] != reader.n_frames or C.shape[0] != A.shape[1]:
            raise ParameterError(
                f"C: expected shape ({A.shape[1]}, {reader.n_frames}), got {tuple(C.shape)}")
    device = _device_of(model)
    T = reader.n_frames
    if chunk_frames is None:
        chunk_frames = frames_per_chunk(reader.dims, copies=_copies_per_frame(model),
                                        device=device, max_frames=T)

    writer = None
    out = None
    if out_base_name is not None:
        from ..io import MemmapWriter
        writer = MemmapWriter(out_base_name, reader.dims, T, order="C")
    else:
        out = np.empty((T, *reader.dims), dtype=np.float32)
    try:
        for a, b, frames in prefetch(reader, spans_of(T, chunk_frames)):
            y = to_tensor(frames, device)
            if remove_activity:
                if A is not None:
                    act = to_tensor(_activity_from_estimates(A, C, reader.dims, slice(a, b)),
                                    device)
                else:
                    act = estimate_activity(y, _predict(model, y, batch_size),
                                            gSig=model.hparams["gSig"])
                bg = _predict(model, y - act, batch_size)
            else:
                bg = _predict(model, y, batch_size)
            cleaned = to_numpy(y - bg)
            if writer is not None:
                writer.write(a, cleaned)
            else:
                out[a:b] = cleaned
    except BaseException:
        if writer is not None:
            _abort(writer)
        raise
    if writer is not None:
        return writer.close()
    return out


def _abort(writer):
    """Drop a half-written memory map (the writer removes its temp file)."""
    for name in ("abort", "discard"):
        if hasattr(writer, name):
            getattr(writer, name)()
            return
    if hasattr(writer, "__exit__"):
        writer.__exit__(RuntimeError, RuntimeError("aborted"), None)
