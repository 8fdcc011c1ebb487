"""Component evaluation: which CNMF components are neurons.

Three scores per component, as in CaImAn: the SNR of its trace
(:func:`compute_snr`), the spatial correlation of its footprint with the
movie (:func:`spatial_correlation`) and a CNN's opinion of its footprint
(:func:`predict_cnn`); :func:`evaluate_components` combines them with the
``quality`` parameters. Also subsets of components
(:func:`select_components`, :func:`remove_components`) and ΔF/F
(:func:`detrend_df_f`).
"""
from .cnn import FootprintNet, footprint_crops, load_classifier, predict_cnn
from .components import (QUALITY_DEFAULTS, accept_components, detrend_df_f,
                         estimate_gSig, evaluate_components, mode_percentile,
                         remove_components, running_percentile, select_components)
from .snr import compute_snr, event_exceptionality, mode_robust, snr_from_fitness
from .spatial import active_frames, compute_residuals, spatial_correlation

__all__ = [
    "evaluate_components", "accept_components", "QUALITY_DEFAULTS", "estimate_gSig",
    "compute_snr", "event_exceptionality", "mode_robust", "snr_from_fitness",
    "spatial_correlation", "active_frames", "compute_residuals",
    "predict_cnn", "footprint_crops", "load_classifier", "FootprintNet",
    "select_components", "remove_components", "detrend_df_f", "running_percentile",
    "mode_percentile",
]
