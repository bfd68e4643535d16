"""Fixtures of the data-preparation tests."""

from pathlib import Path

import pytest

from data_prep.synthetic import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The generated multilingual corpus (40 documents per language, seed 3), once per test module."""
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, seed=3, docs_per_language=40)
    return out
