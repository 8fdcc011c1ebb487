"""placeholder package; filled by its stage."""
