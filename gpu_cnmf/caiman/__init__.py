"""CaImAn-compatible façade over gpu_cnmf.

``import gpu_cnmf.caiman as cm`` lets a script written for CaImAn run with only
its imports changed.  This package only adapts names and call signatures; every
algorithm lives in the core ``gpu_cnmf`` modules, and nothing in the core
imports this package.
"""
