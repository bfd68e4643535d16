"""Retention keeps the last K and every M-th step, never the only valid one, never one being written."""

from __future__ import annotations

from checkpoints.manifest import MANIFEST
from checkpoints.retention import plan_deletions, prune


def test_keep_last_and_every():
    steps = list(range(100, 1100, 100))
    assert plan_deletions(steps, set(steps), keep_last=2, keep_every=500) == [100, 200, 300, 400, 600, 700, 800]


def test_invalid_folders_are_neither_counted_nor_deleted():
    steps = [10, 20, 30, 40]
    # 40 failed its save (no manifest): the last two valid ones are 20 and 30.
    assert plan_deletions(steps, {10, 20, 30}, keep_last=2, keep_every=0) == [10]


def test_protected_step_survives():
    assert plan_deletions([1, 2, 3], {1, 2, 3}, keep_last=1, keep_every=0, protect={1}) == [2]


def test_never_deletes_the_only_valid_checkpoint():
    assert plan_deletions([5], {5}, keep_last=1, keep_every=0) == []
    assert plan_deletions([5, 6], {5}, keep_last=1, keep_every=0) == []


def make(ckpt, name, valid=True):
    folder = ckpt / name
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"x")
    if valid:
        (folder / MANIFEST).write_text("{}")
    return folder


def test_prune_on_disk(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        make(ckpt, f"global_step{step}")
    writing = make(ckpt, ".tmp-global_step10", valid=False)
    broken = make(ckpt, "global_step9", valid=False)
    (ckpt / ".deleting-global_step0").mkdir()  # left by a prune killed half-way
    assert prune(ckpt, keep_last=2, keep_every=4) == [2]
    left = sorted(p.name for p in ckpt.iterdir())
    assert left == [".tmp-global_step10", "global_step4", "global_step6", "global_step8", "global_step9"]
    assert writing.exists() and broken.exists()
