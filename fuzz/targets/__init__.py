"""Fuzz targets, one module per area of untrusted input."""
