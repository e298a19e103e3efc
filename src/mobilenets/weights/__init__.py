"""Weights: the official catalog, readers for each source format, the download cache."""
