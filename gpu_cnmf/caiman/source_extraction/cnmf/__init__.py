"""CaImAn-compatible ``caiman.source_extraction.cnmf`` namespace."""
