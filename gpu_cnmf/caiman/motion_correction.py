"""CaImAn's ``caiman.motion_correction``: ``MotionCorrect`` with CaImAn's
constructor, attributes and ``apply_shifts_movie`` signature, over
:class:`gpu_cnmf.motion.MotionCorrect` (NoRMCorre, rigid and piecewise)."""
from __future__ import annotations

import os

import numpy as np

from ..motion import MotionCorrect as _CoreMotionCorrect
from .base.movies import movie

__all__ = ["MotionCorrect"]


class MotionCorrect(_CoreMotionCorrect):
    """NoRMCorre motion correction with CaImAn's interface.

    After :meth:`motion_correct`: ``shifts_rig`` (T, 2) shifts applied to each
    frame (y, x); with ``pw_rigid`` also ``x_shifts_els``, ``y_shifts_els``
    (T, n_patches); ``templates_rig``, ``total_template_rig``,
    ``total_template_els``; ``fname_tot_rig`` / ``fname_tot_els`` (the
    F-order memmaps written with ``save_movie=True``) and ``mmap_file`` (the
    one of the mode used); ``border_to_0`` (pixels the shifts filled in);
    ``min_mov``. ``dview`` is accepted and not needed (the work is batched
    on one device). Other keyword arguments go to the core class
    (``base_name``, ``chunk_frames``, ``progress``, and any motion parameter
    the core adds later, so ``**params.get_group('motion')`` always fits).
    """

    def __init__(self, fname, min_mov=None, dview=None, max_shifts=(6, 6), niter_rig=1,
                 splits_rig=14, num_splits_to_process_rig=None, strides=(96, 96),
                 overlaps=(32, 32), splits_els=14, num_splits_to_process_els=None,
                 upsample_factor_grid=4, max_deviation_rigid=3, shifts_opencv=True,
                 nonneg_movie=True, gSig_filt=None, use_cuda=False, border_nan=True,
                 pw_rigid=False, num_frames_split=80, var_name_hdf5="mov", is3D=False,
                 indices=(slice(None), slice(None)), shifts_interpolate=False, **kwargs):
        if shifts_interpolate:
            raise NotImplementedError("MotionCorrect(shifts_interpolate=True) is not "
                                      "supported; nearest: shifts_opencv=True (bicubic "
                                      "warping of the estimated shifts)")
        if isinstance(fname, movie):
            fname = np.asarray(fname)
        super().__init__(fname, min_mov=min_mov, dview=dview, max_shifts=max_shifts,
                         niter_rig=niter_rig, splits_rig=splits_rig,
                         num_splits_to_process_rig=num_splits_to_process_rig, strides=strides,
                         overlaps=overlaps, splits_els=splits_els,
                         num_splits_to_process_els=num_splits_to_process_els,
                         upsample_factor_grid=upsample_factor_grid,
                         max_deviation_rigid=max_deviation_rigid, shifts_opencv=shifts_opencv,
                         nonneg_movie=nonneg_movie, gSig_filt=gSig_filt, use_cuda=use_cuda,
                         border_nan=border_nan, pw_rigid=pw_rigid,
                         num_frames_split=num_frames_split, var_name_hdf5=var_name_hdf5,
                         is3D=is3D, indices=indices, **kwargs)
        self.fname_tot_rig = None
        self.fname_tot_els = None
        self.x_shifts_els = self.y_shifts_els = None

    def motion_correct(self, template=None, save_movie=False):
        """Estimate the shifts (rigid, or piecewise-rigid with ``pw_rigid``)
        and, with ``save_movie``, write the corrected movie as an F-order
        memmap (``mmap_file``). Returns self."""
        super().motion_correct(template=template, save_movie=save_movie)
        written = list(self.mmap_file) if save_movie else [None]
        if self.pw_rigid:
            self.fname_tot_els = written
            self.fname_tot_rig = [None]
        else:
            self.fname_tot_rig = written
        if not save_movie:
            self.mmap_file = [None]
        return self

    def apply_shifts_movie(self, fname, rigid_shifts=None, save_memmap=False,
                           save_base_name="MC", order="F", remove_min=True):
        """Apply the estimated shifts to another movie of the same shape
        (e.g. another channel). ``rigid_shifts``: None applies what was
        estimated; True only the rigid shifts. Returns a :class:`movie`, or
        with ``save_memmap`` the path of the memmap
        ``<save_base_name>_d1_.._order_<order>_..`` written next to ``fname``."""
        base = None
        if save_memmap:
            base = os.fspath(save_base_name)
            if not os.path.dirname(base) and isinstance(fname, (str, os.PathLike)):
                base = os.path.join(os.path.dirname(os.path.abspath(fname)), base)
        src = np.asarray(fname) if isinstance(fname, movie) else fname
        out = super().apply_shifts_movie(src, save_memmap=save_memmap, order=order,
                                         base_name=base, remove_min=remove_min,
                                         rigid_shifts=rigid_shifts)
        if save_memmap:
            return out
        fr = getattr(fname, "fr", None) if isinstance(fname, movie) else 30
        return movie(out, fr=fr)
