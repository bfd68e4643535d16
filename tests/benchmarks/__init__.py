"""Benchmarks, run as scripts (`.venv/bin/python tests/benchmarks/bench_pretrain.py`) or as modules
(`.venv/bin/python -m tests.benchmarks.bench_pretrain` from the repository root). Not collected by pytest."""
