"""Cargohold's benchmark harness (`make bench`)."""
