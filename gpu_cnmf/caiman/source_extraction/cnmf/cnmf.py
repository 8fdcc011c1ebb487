"""CaImAn's ``caiman.source_extraction.cnmf.cnmf``: ``CNMF`` with CaImAn's
constructor and methods, and ``load_CNMF``, over :class:`gpu_cnmf.cnmf.CNMF`.

``CNMF(n_processes, k=5, gSig=[4, 4], ..., params=None)``: with ``params``
given, the keyword arguments are ignored in favour of it (as in CaImAn);
without, they build a ``CNMFParams`` (CaImAn's legacy route).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from ....cnmf import CNMF as _CoreCNMF
from ....cnmf import load_CNMF as _core_load_CNMF
from ..._unsupported import add_unsupported
from ....errors import ParameterError
from ....params import CNMFParams

log = logging.getLogger(__name__)

__all__ = ["CNMF", "load_CNMF"]

# CaImAn CNMF methods we do not have -> the nearest thing here
_NOT_HERE = {
    "fit_online": "CNMF.fit (offline CNMF; OnACID is not implemented)",
    "initialize_online": "CNMF.fit (offline CNMF; OnACID is not implemented)",
    "fit_next": "CNMF.fit (offline CNMF; OnACID is not implemented)",
    "HALS4traces": "CNMF.update_temporal(Y)",
    "HALS4footprints": "CNMF.update_spatial(Y)",
    "preprocess": "CNMF.fit(images) (noise estimation is its first step)",
    "initialize": "CNMF.fit(images) with params.patch['only_init']=True",
    "compute_residuals": "CNMF.estimates.compute_residuals(Yr)",
}


class CNMF(_CoreCNMF):
    """CNMF / CNMF-E source extraction with CaImAn's interface.

    Parameters are CaImAn's (see its API reference); ``dview`` may be None,
    a ``dask.distributed.Client`` or CaImAn's pool (patches run
    ``n_processes`` at a time either way).
    """

    def __init__(self, n_processes, k=5, gSig=[4, 4], gSiz=None, merge_thresh=0.8, p=2,
                 dview=None, Ain=None, Cin=None, b_in=None, f_in=None, do_merge=True, ssub=2,
                 tsub=2, p_ssub=2, p_tsub=2, method_init="greedy_roi", alpha_snmf=100,
                 rf=None, stride=None, memory_fact=1, gnb=1, nb_patch=1, only_init_patch=False,
                 method_deconvolution="oasis", n_pixels_per_process=4000, block_size_temp=5000,
                 num_blocks_per_run_temp=20, num_blocks_per_run_spat=20, check_nan=True,
                 skip_refinement=False, normalize_init=True, options_local_NMF=None,
                 minibatch_shape=100, minibatch_suff_stat=3, update_num_comps=True,
                 rval_thr=0.9, thresh_fitness_delta=-20, thresh_fitness_raw=None,
                 thresh_overlap=.5, max_comp_update_shape=np.inf,
                 num_times_comp_updated=np.inf, batch_update_suff_stat=False, s_min=None,
                 remove_very_bad_comps=False, border_pix=0, low_rank_background=True,
                 update_background_components=True, rolling_sum=True, rolling_length=100,
                 min_corr=.85, min_pnr=20, ring_size_factor=1.5, center_psf=False,
                 use_dense=True, deconv_flag=True, simultaneously=False, n_refit=0,
                 del_duplicates=False, N_samples_exceptionality=None, max_num_added=3,
                 min_num_trial=2, thresh_CNN_noisy=0.5, fr=30, decay_time=0.4, min_SNR=2.5,
                 ssub_B=2, init_iter=2, params=None):
        if params is None:
            legacy = dict(
                k=k, gSig=gSig, gSiz=gSiz, merge_thresh=merge_thresh, p=p, do_merge=do_merge,
                ssub=ssub, tsub=tsub, p_ssub=p_ssub, p_tsub=p_tsub, method_init=method_init,
                alpha_snmf=alpha_snmf, rf=rf, stride=stride, memory_fact=memory_fact, gnb=gnb,
                nb_patch=nb_patch, only_init_patch=only_init_patch,
                method_deconvolution=method_deconvolution,
                n_pixels_per_process=n_pixels_per_process, block_size_temp=block_size_temp,
                num_blocks_per_run_temp=num_blocks_per_run_temp,
                num_blocks_per_run_spat=num_blocks_per_run_spat, check_nan=check_nan,
                skip_refinement=skip_refinement, normalize_init=normalize_init,
                options_local_NMF=options_local_NMF, s_min=s_min,
                remove_very_bad_comps=remove_very_bad_comps, border_pix=border_pix,
                low_rank_background=low_rank_background,
                update_background_components=update_background_components,
                rolling_sum=rolling_sum, rolling_length=rolling_length, min_corr=min_corr,
                min_pnr=min_pnr, ring_size_factor=ring_size_factor, center_psf=center_psf,
                del_duplicates=del_duplicates, fr=fr, decay_time=decay_time, min_SNR=min_SNR,
                ssub_B=ssub_B, init_iter=init_iter, rval_thr=rval_thr,
                n_processes=n_processes)
            online = dict(
                minibatch_shape=minibatch_shape, minibatch_suff_stat=minibatch_suff_stat,
                update_num_comps=update_num_comps, thresh_fitness_delta=thresh_fitness_delta,
                thresh_fitness_raw=thresh_fitness_raw, thresh_overlap=thresh_overlap,
                max_comp_update_shape=max_comp_update_shape,
                num_times_comp_updated=num_times_comp_updated,
                batch_update_suff_stat=batch_update_suff_stat, use_dense=use_dense,
                deconv_flag=deconv_flag, simultaneously=simultaneously, n_refit=n_refit,
                N_samples_exceptionality=N_samples_exceptionality,
                max_num_added=max_num_added, min_num_trial=min_num_trial,
                thresh_CNN_noisy=thresh_CNN_noisy, rval_thr=rval_thr, min_SNR=min_SNR)
            params = CNMFParams(params_dict=legacy)
            params.change_params({"online": online}, warn_unused=False)
        elif not isinstance(params, CNMFParams):
            raise ParameterError(f"params: expected a CNMFParams, got {type(params).__name__}")
        super().__init__(n_processes=n_processes, params=params, dview=dview, Ain=Ain,
                         Cin=Cin, b_in=b_in, f_in=f_in)
        self.mmap_file = None

    def fit(self, images, indices=(slice(None), slice(None))):
        """Run CNMF (or CNMF-E, with ``center_psf``) on ``images`` (T, d1, d2),
        e.g. ``np.reshape(Yr.T, [T] + list(dims), order='F')``. Returns self."""
        return super().fit(_plain(images), indices=indices)

    def refit(self, images, dview=None):
        """A new CNMF refined from this one's components on the whole field
        of view (CaImAn's re-run of seeded CNMF). Returns it."""
        return super().refit(_plain(images), dview=dview)

    def fit_file(self, motion_correct=False, indices=None, include_eval=False):
        """The whole pipeline on ``params.data['fnames']``: optional motion
        correction, the C-order memmap (``mmap_file``), fit, refit, component
        evaluation (with ``include_eval``), ΔF/F, the correlation image
        ``estimates.Cn``, and a save to ``<mmap base>.hdf5``. Returns the
        refitted CNMF."""
        from ...mmapping import load_memmap, save_memmap
        from ...motion_correction import MotionCorrect
        from ....summary import local_correlations

        fnames = self.params.get("data", "fnames")
        if not fnames:
            raise ParameterError("fit_file: params.data['fnames'] is not set")
        fnames = [fnames] if isinstance(fnames, str) else list(fnames)
        if os.path.splitext(fnames[0])[1] == ".mmap" and len(fnames) == 1 and \
                "_order_C_" in os.path.basename(fnames[0]):
            fname_new = fnames[0]
        elif motion_correct:
            mc = MotionCorrect(fnames, dview=self.dview, **self.params.get_group("motion"))
            mc.motion_correct(save_movie=True)
            self.params.change_params({"data": {"mmap_F": mc.mmap_file}})
            fname_new = save_memmap(mc.mmap_file, base_name="memmap_", order="C",
                                    border_to_0=mc.border_to_0 if mc.border_nan != "copy" else 0)
        else:
            fname_new = save_memmap(fnames, base_name="memmap_", order="C",
                                    var_name_hdf5=self.params.get("data", "var_name_hdf5"))
        self.params.change_params({"data": {"mmap_C": fname_new}})
        self.mmap_file = fname_new
        Yr, dims, T = load_memmap(fname_new)
        images = np.reshape(Yr.T, [T] + list(dims), order="F")
        if indices is None:
            indices = (slice(None), slice(None))
        fit = self.fit(images, indices=indices)
        Cn = local_correlations(images[::max(T // 1000, 1)], swap_dim=False)
        Cn = np.nan_to_num(np.asarray(Cn))
        cnm2 = fit.refit(images, dview=self.dview)
        cnm2.mmap_file = fname_new
        if include_eval:
            cnm2.estimates.evaluate_components(images, cnm2.params, dview=self.dview)
        cnm2.estimates.detrend_df_f(quantileMin=8, frames_window=250)
        cnm2.estimates.Cn = Cn
        cnm2.save(fname_new[:-4] + "hdf5")
        return cnm2

    def deconvolve(self, p=None, method_deconvolution=None, bas_nonneg=None,
                   noise_method=None, optimize_g=0, s_min=None, **kwargs):
        """Deconvolve the extracted traces again (``C + YrA``), with these
        ``temporal`` parameters replacing the stored ones for this call."""
        if kwargs:
            raise NotImplementedError(f"CNMF.deconvolve: argument(s) {sorted(kwargs)} are not "
                                      "supported; nearest: p=, method_deconvolution=, "
                                      "bas_nonneg=, noise_method=, optimize_g=, s_min=")
        over = {k: v for k, v in dict(p=p, method_deconvolution=method_deconvolution,
                                      bas_nonneg=bas_nonneg, noise_method=noise_method,
                                      s_min=s_min).items() if v is not None}
        if optimize_g:
            over["optimize_g"] = optimize_g
        params = self.params.copy()
        if over:
            params.change_params({"temporal": over})
        self.estimates.deconvolve(params, dview=self.dview)
        return self

    def update_spatial(self, Y, use_init=True, **kwargs):
        return super().update_spatial(_plain(Y), use_init=use_init, **kwargs)

    def update_temporal(self, Y, use_init=True, **kwargs):
        return super().update_temporal(_plain(Y), use_init=use_init, **kwargs)

    def merge_comps(self, Y, mx=50, fast_merge=True, max_merge_area=None):
        return super().merge_comps(_plain(Y), mx=mx, fast_merge=fast_merge,
                                   max_merge_area=max_merge_area)

    def remove_components(self, ind_rm):
        """Drop components ``ind_rm`` from the estimates."""
        self.estimates.remove_components(ind_rm)
        return self


add_unsupported(CNMF, _NOT_HERE)


def _plain(images):
    """A CaImAn ``movie`` as the plain ndarray view the core expects (memory
    maps and their reshaped views pass through untouched)."""
    from ...base.movies import movie
    if isinstance(images, movie):
        return images.view(np.ndarray)
    return images


def load_CNMF(filename, n_processes=1, dview=None):
    """A :class:`CNMF` from a results file written by ``cnm.save`` (ours or
    CaImAn's)."""
    core = _core_load_CNMF(filename, n_processes=n_processes, dview=dview)
    cnm = CNMF(n_processes, params=core.params, dview=dview)
    cnm.estimates = core.estimates
    cnm.dims = core.dims
    cnm.mmap_file = getattr(core, "mmap_file", None)
    return cnm
