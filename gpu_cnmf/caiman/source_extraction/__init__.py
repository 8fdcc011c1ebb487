"""CaImAn-compatible ``caiman.source_extraction`` namespace."""
