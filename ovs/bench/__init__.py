"""Benchmarks: ``python -m ovs.bench NAME``; each prints a JSON line last."""
