"""Fixtures of the real-Slurm tests: one prepared run directory (data stages done) for the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "checkpoints"))
import tiny_run  # noqa: E402


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """corpus -> clean -> tokenizer -> preprocess of tiny_run, done once; tests copy `data` (run_copy)."""
    base = tmp_path_factory.mktemp("slurm-pretrain")
    tiny_run.prepare(base / "data", base / "corpus")
    return base
