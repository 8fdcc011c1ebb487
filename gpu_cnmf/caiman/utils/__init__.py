"""CaImAn-compatible ``caiman.utils`` namespace."""
