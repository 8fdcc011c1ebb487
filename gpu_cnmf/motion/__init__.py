"""Motion correction: NoRMCorre's rigid and piecewise-rigid registration,
batched on torch tensors so the CPU and the GPU run the same code.

- :mod:`.registration` estimates translations (band-passed cross-correlation
  on a window of the cropped spectrum, Gaussian sub-pixel peak fit).
- :mod:`.piecewise` cuts patches and turns patch shifts into a dense field.
- :mod:`.warp` applies shifts and fields (bicubic or Fourier).
- :mod:`.template` splits, template combination and quality metrics.
- :mod:`.correct` holds :class:`MotionCorrect`, CaImAn's interface.

Shifts follow CaImAn's convention: ``corrected(p) = observed(p - shift)``.
"""
from .correct import MotionCorrect
from .piecewise import patch_grid, patch_plan, register_patches, shift_field
from .registration import (bandpass_response, frame_spectra, highpass_spectrum, make_plan,
                           register_translation)
from .template import crispness, frame_correlations
from .warp import shift_rigid_cubic, shift_rigid_fft, warp_field, warp_field_fft_blocks

__all__ = ["MotionCorrect", "register_translation", "make_plan", "frame_spectra",
           "bandpass_response", "highpass_spectrum", "patch_grid", "patch_plan",
           "register_patches", "shift_field", "shift_rigid_cubic", "shift_rigid_fft",
           "warp_field", "warp_field_fft_blocks", "crispness", "frame_correlations"]
