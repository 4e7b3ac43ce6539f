"""Benchmarks: ``python -m rlbuf.bench`` prints one table of ratios measured in one process."""
