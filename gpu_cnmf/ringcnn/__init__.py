"""Ring-CNN background model for one-photon (microendoscopic) movies.

In one-photon data most of the fluorescence is out-of-focus background that
varies in space and time. CNMF-E (Zhou et al. 2018) predicts the background
at a pixel from the fluorescence on a ring around it; the Ring-CNN
(Friedrich et al. 2021) learns such ring weights as a small convolutional
network trained with a quantile loss, so that neurons, which only add
positive transients, are left out of the background. Subtracting it leaves
a movie that CNMF can process like two-photon data.

Typical use::

    from gpu_cnmf.ringcnn import fit_ring_cnn, subtract_background
    model, history = fit_ring_cnn(movie, gSig=4, params_ring=params.get_group("ring_CNN"),
                                  use_cuda=True)
    mmap_path = subtract_background(movie, model, out_base_name="cleaned")

What to expect. With the quantile loss (``loss_fn='pct'``, ``pct=0.01``)
the background is a lower envelope: it lies about ``Phi^-1(1 - pct)``
(2.3 at pct=0.01) noise std below the true background, a nearly uniform
offset that CNMF's baseline absorbs. Without ``use_add`` (or ``use_bias``)
the model is homogeneous in the data (``b(lambda y) = lambda b(y)``), so it
can only make that offset by shrinking its gains, and then follows the
background's fluctuations with a slope below one; ``use_add=True`` lets
the offset be additive and is recommended for 1p movies (on the synthetic
1p benchmark it halves the error of the background's fluctuations and
lifts the F1 of CNMF on the cleaned movie).

Modules: :mod:`.model` (the network, save/load), :mod:`.train` (losses and
training loop), :mod:`.apply` (streaming background subtraction).
"""
from .apply import estimate_activity, ring_background, subtract_background
from .model import RingCNN, load_model, ring_mask, ring_radii, save_model
from .train import (RING_DEFAULTS, TrainHistory, fit_ring_cnn, make_loss, mse_loss,
                    quantile_loss, ring_params)

__all__ = [
    "RingCNN", "ring_mask", "ring_radii", "save_model", "load_model",
    "RING_DEFAULTS", "ring_params", "quantile_loss", "mse_loss", "make_loss",
    "TrainHistory", "fit_ring_cnn",
    "ring_background", "subtract_background", "estimate_activity",
]
