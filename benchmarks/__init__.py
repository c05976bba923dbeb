"""Benchmark scripts (run as `python benchmarks/<script>.py`); `_common` holds their shared helpers."""
