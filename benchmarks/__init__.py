"""Runnable benchmarks: solver against solver, and DEQ against the explicit weight-tied net."""
