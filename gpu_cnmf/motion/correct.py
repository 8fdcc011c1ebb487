"""``MotionCorrect``: CaImAn's motion-correction interface on the batched
registration functions of this package.

The movie is streamed in chunks of ``backend.frames_per_chunk`` frames. A
background thread reads the next chunk while the current one is processed;
on a GPU the chunk goes through a pinned host buffer and a side CUDA stream,
so the copy overlaps the FFT work of the previous chunk, and shifts stay on
the device until the pass ends (no host synchronisation inside the loop
except to hand corrected frames to the writer).
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import torch

from .. import backend
from ..errors import MotionWarning, MovieError, ParameterError
from ..io import MemmapWriter, open_movie
from . import piecewise as pw
from .registration import bandpass_response, highpass_spectrum, make_plan, \
    register_translation
from .template import at_bound, central_shift, combine_templates, covering_shifts, \
    crispness, frame_correlations, search_window, split_ranges, subset_splits
from .warp import shift_rigid_cubic, shift_rigid_fft, warp_field, warp_field_fft_blocks

__all__ = ["MotionCorrect"]

log = logging.getLogger(__name__)

# Refine the Gaussian peak fit on a 1/10 px grid by an upsampled DFT: a
# 13 x 13 correlation per frame, cheap next to the FFT, and it removes the
# fit's bias on the sharper (less low-passed) peaks of SIGMA_LO = 1 px.
_UPSAMPLE = 10
_INIT_FRAMES = 200      # frames sampled for the initial template
_INIT_ITER = 2          # at least this many centring iterations
_INIT_ITER_MAX = 5      # at most (the median shift is then ~0)


def _pair(v, nd, name):
    if isinstance(v, (int, float, np.integer, np.floating)):
        return tuple([int(v)] * nd)
    v = tuple(int(x) for x in v)
    if len(v) == nd - 1 and nd == 3:
        v = v + (v[-1],)
    if len(v) != nd:
        raise ParameterError(f"{name}: expected {nd} values, got {v!r}")
    return v


class MotionCorrect:
    """Rigid and piecewise-rigid motion correction (NoRMCorre), CaImAn's names.

    Parameters follow the ``motion`` group of CNMFParams; ``fname`` is a path,
    a list of paths, an array ``(T, *dims)`` or an opened movie
    (:func:`gpu_cnmf.io.open_movie`); ``plane`` and ``channel`` pick one of a
    multi-plane / multi-channel recording (``data.plane``, ``data.channel``).
    ``memmap_dtype='float16'`` writes the corrected movie at half the size
    (a value beyond float16's 65504 is an error naming the parameter; the
    rounding is 2^-11 of the value, far below shot noise).
    ``check_nan=True`` looks for NaN frames in the frames the template is
    built from and in every pass, so that a NaN costs no pass of its own:
    the first NaN frame is named in a :class:`~gpu_cnmf.errors.MovieError`
    and the partial file is removed.

    Attributes after :meth:`motion_correct`: ``shifts_rig`` (T, ndim),
    ``x_shifts_els``/``y_shifts_els``(/``z_shifts_els``) (T, n_patches) when
    ``pw_rigid``, ``total_template_rig``, ``total_template_els``,
    ``templates_rig``, ``templates_els``, ``mmap_file``, ``min_mov``,
    ``correlations`` (per-frame correlation with the final template),
    ``crispness`` (of the corrected mean image), ``frames_at_bound`` (frames
    whose rigid shift reached ``max_shifts``: registered only up to it; a
    :class:`~gpu_cnmf.errors.MotionWarning` then names their share and
    ``max_shifts_needed``, a bound that would cover them).

    The initial template sits at the centre of the motion: it is built
    from frames spread over the whole recording and shifted until the
    median of their shifts is zero, so ``+-max_shifts`` covers the motion
    around the movie's typical position (not around wherever the first
    frames or a blurred median happen to lie).
    """

    def __init__(self, fname, min_mov=None, dview=None, max_shifts=(6, 6), niter_rig=1,
                 splits_rig=14, num_splits_to_process_rig=None, strides=(96, 96),
                 overlaps=(32, 32), splits_els=14, num_splits_to_process_els=None,
                 upsample_factor_grid=4, max_deviation_rigid=3, shifts_opencv=True,
                 nonneg_movie=True, gSig_filt=None, use_cuda=False, border_nan=True,
                 pw_rigid=False, num_frames_split=80, var_name_hdf5="mov", is3D=False,
                 indices=(slice(None), slice(None)), base_name=None, chunk_frames=None,
                 progress=True, plane=None, channel=None, save_order="F", summary=False,
                 memmap_dtype="float32", check_nan=False):
        self.fname = fname if isinstance(fname, (list, tuple, np.ndarray)) else [fname]
        self.source = open_movie(fname, var_name_hdf5=var_name_hdf5, plane=plane,
                                 channel=channel)
        self.dims = tuple(int(d) for d in self.source.dims)
        self.is3D = bool(is3D)
        nd = 3 if self.is3D else 2
        if len(self.dims) != nd:
            raise MovieError(f"is3D={is3D} expects frames with {nd} axes, the movie has "
                             f"frame shape {self.dims}")
        self.ndim = nd
        self.dview = dview
        self.min_mov = min_mov
        self.max_shifts = _pair(max_shifts, nd, "max_shifts")
        self.niter_rig = int(niter_rig)
        if self.niter_rig < 1:
            raise ParameterError(f"niter_rig: expected >= 1, got {niter_rig}")
        self.splits_rig = int(splits_rig)
        self.num_splits_to_process_rig = num_splits_to_process_rig
        self.strides = _pair(strides, nd, "strides")
        self.overlaps = _pair(overlaps, nd, "overlaps")
        self.splits_els = int(splits_els)
        self.num_splits_to_process_els = num_splits_to_process_els
        self.upsample_factor_grid = int(upsample_factor_grid)
        self.max_deviation_rigid = _pair(max_deviation_rigid, nd, "max_deviation_rigid")
        self.shifts_opencv = bool(shifts_opencv)
        self.nonneg_movie = bool(nonneg_movie)
        self.gSig_filt = gSig_filt
        self.use_cuda = use_cuda
        self.device = backend.get_device(use_cuda)
        if not any(border_nan is v for v in (True, False)) and border_nan not in ("copy", "min"):
            raise ParameterError(f"border_nan: expected True, False, 'copy' or 'min', got "
                                 f"{border_nan!r}")
        self.border_nan = border_nan
        self.pw_rigid = bool(pw_rigid)
        self.num_frames_split = num_frames_split
        self.var_name_hdf5 = var_name_hdf5
        if indices is None:
            indices = (slice(None),) * nd
        indices = tuple(indices) + (slice(None),) * (nd - len(tuple(indices)))
        if len(indices) != nd or not all(isinstance(s, slice) for s in indices):
            raise ParameterError(f"indices: expected {nd} slices, got {indices!r}")
        self.indices = indices
        self.base_name = base_name
        self.chunk_frames = chunk_frames
        self.progress = progress
        if save_order not in ("C", "F"):
            raise ParameterError(f"save_order: expected 'C' or 'F', got {save_order!r}")
        self.save_order = save_order
        if memmap_dtype not in ("float32", "float16"):
            raise ParameterError(f"memmap_dtype: expected 'float32' or 'float16', got "
                                 f"{memmap_dtype!r}")
        self.memmap_dtype = np.dtype(memmap_dtype)
        self.summary = bool(summary)
        # an integer movie cannot hold a NaN
        self.check_nan = bool(check_nan) and self.source.dtype.kind == "f"
        self.summary_images = None
        self._moments = None
        self.mmap_file = []
        self.shifts_rig = None
        self.templates_rig, self.templates_els = [], []
        self.total_template_rig = self.total_template_els = None
        self.frames_at_bound = None
        self.max_shifts_needed = None

    # ------------------------------------------------------------------ setup
    def _crop_dims(self):
        return tuple(len(range(*s.indices(n))) for s, n in zip(self.indices, self.dims))

    def _chunk(self, copies):
        if self.chunk_frames:
            return int(self.chunk_frames)
        n = backend.frames_per_chunk(self.dims, copies=copies, device=self.device,
                                     max_frames=self.source.n_frames)
        # On a CPU a batch of ~16 MB of frames keeps the FFT and warp
        # temporaries near the caches; a GPU wants big batches.
        cap = 1024 if self.device.type == "cuda" else max(8, (1 << 22) // int(np.prod(self.dims)))
        return max(1, min(n, cap))

    def _compute_min_mov(self):
        T = self.source.n_frames
        idx = np.unique(np.linspace(0, T - 1, min(T, 400)).astype(int))
        # frame by frame: 400 frames stacked would be 400 MB at 512 x 512
        return float(min(np.nanmin(self.source.read(i, i + 1)) for i in idx))

    def _reader(self, ranges, chunk):
        """Yield (start, host array) over ``ranges`` with one read ahead."""
        jobs = [(s, min(s + chunk, b)) for a, b in ranges for s in range(a, b, chunk)]
        if not jobs:
            return
        with ThreadPoolExecutor(1) as ex:
            fut = ex.submit(self.source.read, *jobs[0])
            for i, (s, e) in enumerate(jobs):
                arr = fut.result()
                backend.count_movie_io(read=np.size(arr))
                if i + 1 < len(jobs):
                    fut = ex.submit(self.source.read, *jobs[i + 1])
                yield s, arr

    def _to_device(self, arr, state):
        """Host chunk -> float32 device tensor.

        On the CPU one numpy cast. On a GPU the raw bytes cross the bus
        (uint16 reinterpreted as int16 and widened on the device, so nothing
        doubles in size on the host) through a reused pinned buffer on a
        side stream, which the next chunk's compute waits for.
        """
        arr = np.asarray(arr)
        if self.device.type != "cuda":
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        unsigned16 = arr.dtype == np.uint16
        if unsigned16:
            arr = arr.view(np.int16)
        elif arr.dtype.kind not in "fi" or arr.dtype.itemsize > 4:
            arr = arr.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        key = (tuple(t.shape), t.dtype)
        if state.get("key") != key:
            state["buf"] = backend.pinned_empty(t.shape, t.dtype, self.device)
            state["key"] = key
        buf = state["buf"]
        ev = state.get("copied")
        if ev is not None:
            ev.synchronize()      # the previous upload from this buffer is done
        buf.copy_(t)
        stream = state.setdefault("stream", torch.cuda.Stream(self.device))
        with torch.cuda.stream(stream):
            dev = buf.to(self.device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(stream)
            state["copied"] = ev
        torch.cuda.current_stream(self.device).wait_stream(stream)
        dev.record_stream(torch.cuda.current_stream(self.device))
        if unsigned16:
            return dev.to(torch.int32).bitwise_and_(0xFFFF).float()
        return dev.float()

    # -------------------------------------------------------- per-chunk math
    def _filter(self, dims):
        if self.gSig_filt is not None:
            return highpass_spectrum(dims, self.gSig_filt, self.device)
        return bandpass_response(dims, device=self.device)

    def _prepare(self, template, pwr):
        """Registration plans (whole crop and patches) for one pass."""
        dev = self.device
        crop = self._crop_dims()
        t = torch.as_tensor(np.asarray(template), dtype=torch.float32, device=dev)
        if tuple(t.shape) == self.dims:
            t = t[self.indices]
        elif tuple(t.shape) != crop:
            raise ParameterError(f"template: expected shape {self.dims} or {crop}, got "
                                 f"{tuple(t.shape)}")
        if not torch.isfinite(t).any():
            raise ParameterError("template: no finite value")
        t = torch.nan_to_num(t, nan=float(torch.nanmean(t)))
        full = crop == self.dims
        ctx = {"crop": crop, "full": full, "plan": make_plan(t, self.ndim, self._filter(crop))}
        if pwr:
            starts, sizes, centres = pw.patch_grid(crop, self.strides, self.overlaps)
            ctx.update(starts=starts, sizes=sizes,
                       pplan=pw.patch_plan(t, starts, sizes, self._filter(sizes)))
            offs = [s.start or 0 for s in self.indices]
            ctx["mats"] = [pw.interpolation_matrix(n, c + o, self.upsample_factor_grid).to(dev)
                           for n, c, o in zip(self.dims, centres, offs)]
            ctx["grid"] = [len(s) for s in starts]
        return ctx

    def _estimate(self, x, ctx, pwr):
        """Rigid shifts (n, nd), patch shifts (n, *grid, nd) or None, and
        the frames' spectra when they can serve the Fourier warp."""
        xe = x if ctx["full"] else x[(slice(None),) + self.indices]
        S, Sc = ctx["plan"].spectra(xe)
        rig = register_translation(Sc, ctx["plan"], self.max_shifts, upsample_factor=_UPSAMPLE,
                                   cropped=True)
        spec = S if ctx["full"] else None
        if not pwr:
            return rig, None, spec
        ps = pw.register_patches(xe, ctx["pplan"], ctx["starts"], ctx["sizes"], rig,
                                 self.max_deviation_rigid, _UPSAMPLE)
        lim = torch.as_tensor([float(m) for m in self.max_deviation_rigid], device=ps.device)
        r = rig.reshape((rig.shape[0],) + (1,) * self.ndim + (self.ndim,))
        ps = torch.maximum(torch.minimum(ps, r + lim), r - lim)
        return rig, ps, spec

    def _apply(self, x, rig, ps, ctx, spec=None):
        """Warp a batch; ``border_nan='min'`` fills what comes from outside
        the frame with the frame's minimum (NaN fill, then replaced)."""
        mode = True if self.border_nan == "min" else self.border_nan
        if ps is None:
            if self.shifts_opencv:
                y = shift_rigid_cubic(x, rig, mode)
            else:
                y = shift_rigid_fft(x, rig, mode, spectra=spec)
        else:
            field = pw.shift_field(ps, ctx["mats"])
            if self.shifts_opencv or self.ndim == 3:
                y = warp_field(x, field, mode)
            else:
                block = tuple(max(2, s // max(1, self.upsample_factor_grid))
                              for s in self.strides)
                y = warp_field_fft_blocks(x, field, block, mode)
        if self.border_nan == "min":
            lo = x.reshape(x.shape[0], -1).amin(1).reshape((-1,) + (1,) * self.ndim)
            y = torch.where(torch.isnan(y), lo.expand_as(y), y)
        return y

    def _offset(self, y):
        if self.nonneg_movie:
            y = y - self.min_mov
            y = torch.where(torch.isnan(y), y, y.clamp(min=0))
        return y

    # ------------------------------------------------------------ one pass
    def _pass(self, template, pwr, ranges, writer=None, keep=None, desc="motion"):
        """Register (and warp) the frames in ``ranges``; return split templates.

        Returns (rigid shifts dict start->tensor, patch shifts, split means)
        """
        ctx = self._prepare(template, pwr)
        chunk = self._chunk(copies=24 if pwr else 12)
        n_tot = sum(b - a for a, b in ranges)
        sums = torch.zeros((len(ranges),) + self.dims, device=self.device)
        cnts = torch.zeros((len(ranges),) + self.dims, device=self.device)
        rig_out, ps_out = [], []
        state = {}
        from ..progress import progress
        bar = progress(total=n_tot, desc=desc, unit="frame",
                       disable=None if self.progress else True)
        ends = np.array([b for a, b in ranges])
        # Writes go to a background thread (one in flight), so disk I/O
        # overlaps the next chunk's compute; reads are prefetched likewise.
        wex = ThreadPoolExecutor(1) if (writer is not None or keep is not None) else None
        wfut = None
        try:
            for start, arr in self._reader(ranges, chunk):
                x = self._to_device(arr, state)
                self._refuse_nan(x)
                rig, ps, spec = self._estimate(x, ctx, pwr)
                y = self._offset(self._apply(x, rig, ps, ctx, spec))
                del spec
                # split means for the next template
                which = np.searchsorted(ends, np.arange(start, start + x.shape[0]),
                                        side="right")
                if self.border_nan is True:
                    ok = torch.isfinite(y)
                    wt = torch.as_tensor(which, device=self.device)
                    sums.index_add_(0, wt, torch.where(ok, y, torch.zeros_like(y)))
                    cnts.index_add_(0, wt, ok.to(sums.dtype))
                else:   # no NaN can appear: one sum per split in the chunk
                    for k in np.unique(which):
                        sel = np.nonzero(which == k)[0]
                        sums[k] += y[int(sel[0]):int(sel[-1]) + 1].sum(0)
                        cnts[k] += float(len(sel))
                if self._moments is not None and writer is not None:
                    # summary images of the written movie, on this pass
                    self._moments.update(torch.nan_to_num(y) if self.border_nan is True else y)
                rig_out.append((start, rig))
                if ps is not None:
                    ps_out.append((start, ps))
                if wex is not None:
                    host = y.to("cpu", non_blocking=True)
                    ev = None
                    if self.device.type == "cuda":
                        ev = torch.cuda.Event()
                        ev.record()
                    if wfut is not None:
                        wfut.result()
                    wfut = wex.submit(self._emit, (start, host, ev), writer, keep)
                bar.update(x.shape[0])
            if wfut is not None:
                wfut.result()
        finally:
            if wex is not None:
                wex.shutdown(wait=True)
        bar.close()
        means = sums / cnts.clamp(min=1)
        means = torch.where(cnts > 0, means, torch.full_like(means, float("nan")))
        return rig_out, ps_out, means

    @staticmethod
    def _emit(pending, writer, keep):
        start, host, ev = pending
        if ev is not None:
            ev.synchronize()
        a = host.numpy()
        if writer is not None:
            writer.write(start, a)
        if keep is not None:
            keep[start:start + a.shape[0]] = a

    def _refuse_nan(self, x):
        """With ``check_nan``, a NaN in frames ``x`` stops the correction
        with the movie's first NaN frame named (the search for it reads the
        movie up to that frame: only when there is one)."""
        if self.check_nan and bool(torch.isnan(x).any()):
            self.source.check_nan()
            raise MovieError(f"{self.source.name}: the movie holds NaN values")

    # --------------------------------------------------------- templates
    def _register_wide(self, x, ctx, window):
        """Rigid shifts of frames ``x`` within ``+-window`` (wider than
        ``max_shifts``) and their spectra when they can serve the Fourier
        warp."""
        xe = x if ctx["full"] else x[(slice(None),) + self.indices]
        S, Sc = ctx["plan"].spectra(xe)
        rig = register_translation(Sc, ctx["plan"], window, upsample_factor=_UPSAMPLE,
                                   cropped=True)
        return rig, (S if ctx["full"] else None)

    def _initial_template(self, pwr=False):
        """Template at the centre of the motion.

        Starts from the median of frames spread through the whole movie,
        then registers those frames to it within a window wider than
        ``max_shifts`` (:func:`search_window`, so that wandering motion is
        measured rather than clipped) and averages them aligned to the
        frame at the median shift: the template moves to the movie's
        typical position, where the ``+-max_shifts`` window of the passes
        covers the motion on both sides. Repeated until the median shift
        is within 0.1 px of zero (Fourier shifts that reuse the
        registration's spectra: no extra forward FFT).
        """
        T = self.source.n_frames
        # the sampled frames, registered all at once (spectra, warps: ~14
        # frame-sized buffers each), within the memory budget
        n_fit = backend.frames_per_chunk(self.dims, copies=14, device=self.device)
        idx = np.unique(np.linspace(0, T - 1, max(2, min(T, _INIT_FRAMES, n_fit))).astype(int))
        x = self._to_device(np.stack([self.source.read(i, i + 1)[0] for i in idx]), {})
        self._refuse_nan(x)
        templ = torch.median(x, dim=0).values
        full = self._crop_dims() == self.dims
        window = search_window(self.max_shifts, self._crop_dims())
        moved = torch.zeros(self.ndim, device=x.device)
        for it in range(_INIT_ITER_MAX):
            ctx = self._prepare(templ.cpu().numpy(), False)
            rig, spec = self._register_wide(x, ctx, window)
            med = central_shift(rig)
            moved += med
            # wrapped borders (border_nan=False) are a few px of the
            # template and save the replicate gathers
            templ = shift_rigid_fft(x, rig - med, False, spectra=spec if full else None).mean(0)
            if it + 1 >= _INIT_ITER and float(med.abs().max()) < 0.1:
                break
        log.info("motion template: centred on the median of %d frames' shifts (moved %s px "
                 "from their first alignment)", len(idx),
                 tuple(round(float(v), 2) for v in moved))
        return templ

    def _recentre(self, templ, shifts):
        """Shift a pass's template so that the median of the frames' shifts
        to it becomes zero (only when it is off by half a pixel or more:
        the template of a pass sits where its predecessor did, unless
        frames clipped at ``max_shifts`` pulled it)."""
        med = central_shift(torch.as_tensor(shifts))
        if float(med.abs().max()) < 0.5:
            return templ
        t = torch.as_tensor(templ, dtype=torch.float32)
        fill = float(torch.nanmean(t)) if torch.isfinite(t).any() else 0.0
        t = torch.nan_to_num(t, nan=fill)
        return shift_rigid_fft(t[None], -med[None].to(t.device), False)[0]

    def _check_bound(self, templ):
        """Count the frames whose rigid shift hit ``max_shifts``; re-measure
        (up to 256 of) them within a wider window against the template the
        pass used, and warn naming the share and a ``max_shifts`` that
        would cover them. Sets ``frames_at_bound`` and
        ``max_shifts_needed`` (None when no frame hit the bound)."""
        hit = at_bound(self.shifts_rig, self.max_shifts)
        T = len(hit)
        self.frames_at_bound = int(hit.sum())
        self.max_shifts_needed = None
        if not self.frames_at_bound:
            return
        which = np.nonzero(hit)[0]
        which = which[np.unique(np.linspace(0, len(which) - 1, min(len(which), 256))
                                .round().astype(int))]
        ctx = self._prepare(np.asarray(templ), False)
        window = search_window(self.max_shifts, self._crop_dims())
        wide = []
        for k in range(0, len(which), 64):
            sel = which[k:k + 64]
            x = self._to_device(np.stack([self.source.read(i, i + 1)[0] for i in sel]), {})
            wide.append(self._register_wide(x, ctx, window)[0].cpu().numpy())
        wide = np.concatenate(wide)
        need = tuple(max(a, b) for a, b in zip(covering_shifts(wide), self.max_shifts))
        beyond = at_bound(wide, window).any()
        self.max_shifts_needed = need
        cover = (f"the motion exceeds even +-{window} px (check the recording)" if beyond
                 else f"max_shifts={need} would cover them")
        msg = (f"motion correction: {self.frames_at_bound} of {T} frames "
               f"({100.0 * self.frames_at_bound / max(T, 1):.1f} %) needed a shift at the "
               f"max_shifts={self.max_shifts} bound and are registered only up to it; {cover}")
        log.warning(msg)
        warnings.warn(msg, MotionWarning, stacklevel=3)

    def _gather_shifts(self, out):
        out = sorted(out, key=lambda r: r[0])
        return torch.cat([r[1] for r in out]).cpu().numpy()

    # ----------------------------------------------------------- public API
    def motion_correct(self, template=None, save_movie=False, out=None):
        """Estimate (and with ``save_movie`` write) the corrected movie.

        Writes one memmap per call (``mmap_file``): F-order like CaImAn's
        ``mmap_F`` by default; with ``save_order='C'`` the pixels x T C-order
        file CNMF reads (``Yr_d1_.._order_C_..``), written in T-blocks sized
        from the host budget, so no separate transposition pass is needed.
        With ``summary=True`` the mean, max, std and local-correlation
        images of the written movie are accumulated on that same pass
        (``summary_images``). ``out``, an array ``(T, *dims)`` float32 (e.g. host RAM),
        receives the corrected frames of the last pass in addition.
        Returns self.
        """
        if self.min_mov is None:
            self.min_mov = self._compute_min_mov() if self.nonneg_movie else 0.0
        self.min_mov = float(self.min_mov)
        if self.pw_rigid:
            self.motion_correct_pwrigid(template=template, save_movie=save_movie, out=out)
            b0 = np.ceil(np.maximum(np.max(np.abs(self.x_shifts_els)),
                                    np.max(np.abs(self.y_shifts_els))))
        else:
            self.motion_correct_rigid(template=template, save_movie=save_movie, out=out)
            b0 = np.ceil(np.max(np.abs(self.shifts_rig)))
        self.border_to_0 = int(b0)
        return self

    def _base(self, suffix):
        if self.base_name is not None:
            return f"{self.base_name}_{suffix}"
        f0 = self.fname[0]
        if isinstance(f0, str):
            return os.path.splitext(f0)[0] + f"_{suffix}"
        return os.path.join(tempfile.gettempdir(), f"gpu_cnmf_mc_{suffix}")

    def _pass_to_file(self, templ, piecewise_rigid, use, suffix, keep, desc):
        """One registration pass; with a ``suffix`` the corrected movie streams
        to an F-order memmap (removed if the pass fails). Returns the rigid
        and patch shifts and the next template."""
        writer = None
        if suffix:
            # order C: the pixels x T file CNMF reads, written in T-blocks
            writer = MemmapWriter(self._base(suffix), self.dims, self.source.n_frames,
                                  order=self.save_order, dtype=self.memmap_dtype,
                                  buffer_frames="auto" if self.save_order == "C" else None)
            if self.summary:
                from ..summary import PixelMoments, neighbour_offsets
                self._moments = PixelMoments(dims=self.dims, device=self.device,
                                             offsets=neighbour_offsets(self.ndim))
        try:
            rig, ps, means = self._pass(templ.cpu().numpy(), piecewise_rigid, use, writer,
                                        keep=keep, desc=desc)
        except BaseException:
            if writer is not None:
                writer.abort()
            self._moments = None
            raise
        if writer is not None:
            self.mmap_file = [writer.close()]
        if self._moments is not None:
            m, self._moments = self._moments, None
            host = lambda t: t.to(torch.float32).cpu().numpy()  # noqa: E731
            self.summary_images = {"mean": host(m.mean()), "max": host(m.mx),
                                   "std": host(m.var().sqrt()), "Cn": host(m.correlation_image())}
        return rig, ps, combine_templates(means)

    def motion_correct_rigid(self, template=None, save_movie=False, out=None):
        T = self.source.n_frames
        templ = (self._initial_template() if template is None
                 else torch.as_tensor(np.asarray(template), dtype=torch.float32))
        ranges = split_ranges(T, self.splits_rig, self.num_frames_split)
        self.templates_rig = []
        for it in range(self.niter_rig):
            last = it == self.niter_rig - 1
            use = ranges if last else subset_splits(ranges, self.num_splits_to_process_rig)
            used = templ
            rig, _, templ = self._pass_to_file(
                templ, False, use, "rig" if (last and save_movie) else None,
                keep=out if last else None, desc=f"rigid {it + 1}/{self.niter_rig}")
            if not last:
                templ = self._recentre(templ, self._gather_shifts(rig))
            self.templates_rig.append(templ.cpu().numpy())
        self.shifts_rig = self._gather_shifts(rig)
        self.total_template_rig = templ.cpu().numpy()
        self._check_bound(used.cpu().numpy())
        return self

    def motion_correct_pwrigid(self, template=None, save_movie=True, out=None):
        T = self.source.n_frames
        if template is None:
            self.motion_correct_rigid(save_movie=False)
            templ = torch.as_tensor(self.total_template_rig)
        else:
            templ = torch.as_tensor(np.asarray(template), dtype=torch.float32)
        ranges = split_ranges(T, self.splits_els, self.num_frames_split)
        plan = self.num_splits_to_process_els
        plan = list(plan) if isinstance(plan, (list, tuple)) else [plan]
        if plan[-1] is not None:
            plan.append(None)  # the last pass corrects every frame
        self.templates_els = []
        for it, num in enumerate(plan):
            last = it == len(plan) - 1
            use = ranges if last else subset_splits(ranges, num)
            used = templ
            rig, ps, templ = self._pass_to_file(
                templ, True, use, "els" if (last and save_movie) else None,
                keep=out if last else None, desc=f"pw-rigid {it + 1}/{len(plan)}")
            self.templates_els.append(templ.cpu().numpy())
        self.shifts_rig = self._gather_shifts(rig)
        self._check_bound(used.cpu().numpy())
        shifts = self._gather_shifts(ps).reshape(T, -1, self.ndim)
        self.y_shifts_els = shifts[..., 0]
        self.x_shifts_els = shifts[..., 1]
        if self.ndim == 3:
            self.z_shifts_els = shifts[..., 2]
        self.patch_grid = tuple(len(s) for s in pw.patch_grid(
            self._crop_dims(), self.strides, self.overlaps)[0])
        self.total_template_els = templ.cpu().numpy()
        return self

    # ------------------------------------------------------------- outputs
    def _patch_shifts_tensor(self, start, stop):
        comps = [self.y_shifts_els, self.x_shifts_els]
        if self.ndim == 3:
            comps.append(self.z_shifts_els)
        s = np.stack([c[start:stop] for c in comps], -1)
        return torch.as_tensor(s, dtype=torch.float32, device=self.device).reshape(
            (stop - start,) + self.patch_grid + (self.ndim,))

    def dense_field(self, start=0, stop=None):
        """Dense correcting field ``(n, ndim, *dims)`` of frames [start, stop)
        (pw_rigid only; the rigid shift broadcast otherwise)."""
        stop = self.source.n_frames if stop is None else stop
        if not self.pw_rigid:
            s = torch.as_tensor(self.shifts_rig[start:stop], dtype=torch.float32)
            return s.reshape(s.shape + (1,) * self.ndim).expand(
                (s.shape[0], self.ndim) + self.dims).numpy()
        ctx = self._prepare(self.total_template_els, True)
        return pw.shift_field(self._patch_shifts_tensor(start, stop), ctx["mats"]).cpu().numpy()

    def apply_shifts_movie(self, fname, save_memmap=False, order="F", base_name=None,
                           remove_min=True, rigid_shifts=None):
        """Apply the estimated shifts to another movie of the same shape
        (e.g. a second channel). Returns the corrected array, or the memmap
        path when ``save_memmap``. ``rigid_shifts=True`` applies only the
        rigid shifts of a piecewise-rigid correction (None: as corrected)."""
        pw_rigid = self.pw_rigid if rigid_shifts is None else not rigid_shifts
        if pw_rigid and not self.pw_rigid:
            raise ParameterError("apply_shifts_movie(rigid_shifts=False): this correction "
                                 "was rigid (pw_rigid=False); there are no patch shifts")
        if self.shifts_rig is None:
            raise ParameterError("apply_shifts_movie: run motion_correct first")
        src = open_movie(fname, var_name_hdf5=self.var_name_hdf5)
        if tuple(src.shape) != (self.source.n_frames,) + self.dims:
            raise MovieError(f"apply_shifts_movie: movie shape {tuple(src.shape)} differs "
                             f"from the corrected one {(self.source.n_frames,) + self.dims}")
        ctx = self._prepare(self.total_template_els if pw_rigid
                            else self.total_template_rig, pw_rigid)
        T = src.n_frames
        chunk = self._chunk(copies=12)
        writer = (MemmapWriter(base_name or self._base("applied"), self.dims, T, order=order,
                               dtype=self.memmap_dtype) if save_memmap else None)
        out = None if save_memmap else np.empty((T,) + self.dims, np.float32)
        # CaImAn: with remove_min a movie with negative values is offset so
        # its minimum (over frames spread through the movie) is 0
        idx = np.unique(np.linspace(0, T - 1, min(T, 400)).astype(int))
        mn = float(np.nanmin(np.stack([src.read(i, i + 1)[0] for i in idx]))) \
            if remove_min else 0.0
        mn = min(mn, 0.0)
        try:
            for s in range(0, T, chunk):
                e = min(T, s + chunk)
                x = backend.to_tensor(src.read(s, e), self.device)
                rig = torch.as_tensor(self.shifts_rig[s:e], dtype=torch.float32,
                                      device=self.device)
                ps = self._patch_shifts_tensor(s, e) if pw_rigid else None
                y = self._apply(x, rig, ps, ctx) - mn
                y = y.cpu().numpy()
                if writer is not None:
                    writer.write(s, y)
                else:
                    out[s:e] = y
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return writer.close() if writer is not None else out

    def save_memmap_C(self, base_name=None):
        """Write the corrected movie as the C-order pixels x T memmap CNMF
        reads (``Yr_d1_.._order_C_..``); returns its path."""
        if not self.mmap_file:
            raise ParameterError("save_memmap_C: run motion_correct(save_movie=True) first")
        from ..io import parse_mmap_name, save_memmap
        if parse_mmap_name(self.mmap_file[-1])["order"] == "C":
            return self.mmap_file[-1]      # already written in CNMF's layout
        src = open_movie(self.mmap_file[-1])
        return save_memmap(src, base_name or self._base("C"), order="C")

    def quality(self, frames=None):
        """Per-frame correlation with the final template and crispness of the
        corrected mean image, from the written movie (or given frames)."""
        templ = self.total_template_els if self.pw_rigid else self.total_template_rig
        if frames is None:
            if not self.mmap_file:
                raise ParameterError("quality: no corrected movie written; pass frames")
            frames = open_movie(self.mmap_file[-1]).read(0, self.source.n_frames)
        t = torch.as_tensor(templ)
        self.correlations = frame_correlations(torch.as_tensor(frames), t).numpy()
        self.crispness = crispness(np.nanmean(frames, axis=0))
        return self.correlations, self.crispness
