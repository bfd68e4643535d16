"""Fixtures of the pipeline tests."""

import pytest

from tests.support import toy_stages


@pytest.fixture
def toys(monkeypatch):
    """The toy stages registered, and their environment hooks cleared."""
    for key in ("TOY_EXEC_LOG", "TOY_DELAY", "TOY_FAIL_RANK"):
        monkeypatch.delenv(key, raising=False)
    with toy_stages.registered():
        yield
