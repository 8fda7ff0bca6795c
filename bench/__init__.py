"""Benchmarks: `make bench` runs them all; each prints its own table."""
