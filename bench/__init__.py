"""Benchmarks: runnable modules, not tests (python -m bench.bench_schedules)."""
