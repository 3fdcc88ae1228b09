"""Rerunnable benchmarks and benchmark data (see docs/performance.md)."""
