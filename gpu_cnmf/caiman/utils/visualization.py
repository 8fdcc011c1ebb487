"""CaImAn's ``caiman.utils.visualization``: contour plots and viewers.

Thin adapters over :mod:`gpu_cnmf.plots` (matplotlib, extra
``gpu_cnmf[report]``; headless machines draw on the Agg canvas). The
notebook viewers ``nb_view_patches`` and ``nb_plot_contour`` are drawn
with matplotlib too (CaImAn uses bokeh): in a notebook with an interactive
matplotlib backend (``%matplotlib widget``) the component slider is live.
"""
from __future__ import annotations

import numpy as np

from ... import plots as _plots
from ...errors import ParameterError

__all__ = ["plot_contours", "get_contours", "inspect_correlation_pnr", "nb_view_patches",
           "view_patches_bar", "nb_plot_contour", "view_quilt"]


def get_contours(A, dims, thr: float = 0.9, thr_method: str = 'nrg', swap_dim: bool = False,
                 slice_dim: str = 'z'):
    """Contours of footprints: list of dicts with 'coordinates', 'CoM',
    'neuron_id', 'bbox' (see :func:`gpu_cnmf.plots.get_contours`)."""
    if len(dims) != 2:
        raise NotImplementedError(
            f"get_contours for 3D footprints (dims={tuple(dims)}) is not supported; the "
            "nearest is get_contours on 2D footprints (e.g. a max projection per component)")
    return _plots.get_contours(A, dims, thr=thr, thr_method=thr_method, swap_dim=swap_dim)


def plot_contours(A, Cn, thr=None, thr_method='max', maxthr=0.2, nrgthr=0.9,
                  display_numbers=True, max_number=None, cmap=None, swap_dim=False,
                  colors='w', vmin=None, vmax=None, coordinates=None, contour_args={},
                  number_args={}, ax=None, **kwargs):
    """Draw ``Cn`` with the contour of each footprint of ``A``; returns the
    coordinates list (:func:`get_contours`)."""
    return _plots.plot_contours(A, Cn, thr=thr, thr_method=thr_method, maxthr=maxthr,
                                nrgthr=nrgthr, display_numbers=display_numbers,
                                max_number=max_number, cmap=cmap, swap_dim=swap_dim,
                                colors=colors, vmin=vmin, vmax=vmax, coordinates=coordinates,
                                contour_args=dict(contour_args), number_args=dict(number_args),
                                ax=ax, **kwargs)


def inspect_correlation_pnr(correlation_image_pnr, pnr_image, cmap='jet'):
    """The correlation image, the PNR image and their product, to choose
    ``min_corr`` and ``min_pnr``. Returns the matplotlib figure."""
    return _plots.correlation_pnr_figure(correlation_image_pnr, pnr_image, cmap=cmap)


def view_patches_bar(Yr, A, C, b, f, d1, d2, YrA=None, img=None, r_values=None, SNR=None,
                     cnn_preds=None):
    """Step through components with a slider (image with the contour,
    footprint, traces). Returns ``(fig, slider)``."""
    return _plots.component_viewer(A, C, (d1, d2), YrA=YrA, img=img)


def nb_view_patches(Yr, A, C, b, f, d1, d2, YrA=None, image_neurons=None, thr=0.99,
                    denoised_color=None, cmap='jet', r_values=None, SNR=None, cnn_preds=None):
    """The notebook component viewer, drawn with matplotlib (see the module
    docstring). Returns ``(fig, slider)``."""
    return _plots.component_viewer(A, C, (d1, d2), YrA=YrA, img=image_neurons, thr=thr)


def nb_plot_contour(image, A, d1, d2, thr=None, thr_method='max', maxthr=0.2, nrgthr=0.9,
                    face_color=None, line_color='red', alpha=0.4, line_width=2, **kwargs):
    """Contours on an image (CaImAn draws it with bokeh; matplotlib here).
    Returns the matplotlib axes."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    _plots.plot_contours(A, np.asarray(image).reshape((d1, d2), order='F')
                         if np.ndim(image) == 1 else image,
                         thr=thr, thr_method=thr_method, maxthr=maxthr, nrgthr=nrgthr,
                         colors=line_color, display_numbers=False, ax=ax,
                         contour_args={"lw": line_width})
    return ax


def view_quilt(template_image, stride, overlap, color='white', vmin=None, vmax=None,
               figsize=(6, 6), ax=None):
    """The image with the grid of CNMF patches: side ``stride + overlap``,
    one every ``stride`` pixels. Returns the axes."""
    if stride is None or overlap is None:
        raise ParameterError("stride, overlap: both are needed (pixels)")
    return _plots.view_quilt(template_image, stride, overlap, color=color, vmin=vmin,
                             vmax=vmax, figsize=figsize, ax=ax)
