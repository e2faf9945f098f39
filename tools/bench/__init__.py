"""Benchmarks: ``python -m tools.bench NAME``; each prints a JSON line last."""
