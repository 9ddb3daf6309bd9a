"""Benchmark helpers used by ``scripts/bench.py`` (not installed with the library)."""
