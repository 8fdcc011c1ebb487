"""CaImAn-compatible ``caiman.base`` namespace."""
