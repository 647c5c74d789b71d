"""Reproducible performance benchmarks (``fedrec bench NAME``), each returning a typed result."""
