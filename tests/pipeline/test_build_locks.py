"""A JIT op build killed at the walltime leaves torch's extension lock behind, and every later job would
wait on it forever: build_engine first removes locks older than any build takes, and only those."""

from __future__ import annotations

import os
import time

from training.engine import STALE_BUILD_LOCK_MIN, clear_stale_build_locks


def test_only_locks_older_than_a_build_are_removed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / "py311_cpu" / "cpu_adam" / "lock"
    fresh = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    built = tmp_path / "py311_cpu" / "fused_adam" / "fused_adam.so"
    for path in (stale, fresh, built):
        path.parent.mkdir(parents=True)
        path.write_text("")
    old = time.time() - (STALE_BUILD_LOCK_MIN + 5) * 60
    os.utime(stale, (old, old))
    os.utime(built, (old, old))

    assert clear_stale_build_locks() == [stale]
    assert not stale.exists() and fresh.exists() and built.exists()
    assert "cpu_adam/lock" in caplog.text and "min old" in caplog.text
    assert clear_stale_build_locks() == []  # nothing left to remove
