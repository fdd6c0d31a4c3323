"""Data: datasets by name (IDX files found locally or downloaded; generated ones), the splits the engine trains on,
and building them from the data section of a config (class filters, subsets, normalization)."""
