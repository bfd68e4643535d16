"""Fixtures of the real-Slurm tests: one prepared run directory (data stages done) for the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import tiny_run


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """corpus -> clean -> tokenizer -> preprocess of tiny_run, done once; tests copy `data` (run_copy)."""
    base = tmp_path_factory.mktemp("slurm-pretrain")
    tiny_run.prepare(base / "data", base / "corpus")
    return base
