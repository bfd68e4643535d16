"""Which checkpoints to keep: the last K, plus every M-th step as a permanent intermediate release.

Only published folders (`global_step<N>` with a manifest) are candidates; folders being written
(`.tmp-*`) are never touched, and the checkpoint `latest` points to is never deleted, so pruning can
never leave a run without a valid checkpoint. A deletion first renames the folder away, so a
half-deleted checkpoint is never mistaken for one.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from checkpoints.manifest import MANIFEST

log = logging.getLogger("graine.checkpoints")

STEP_DIR = re.compile(r"^global_step(\d+)$")


def published_steps(ckpt_dir: Path) -> dict[int, Path]:
    """{step: folder} of every `global_step<N>` folder (valid or not)."""
    out = {}
    if not ckpt_dir.is_dir():
        return out
    for path in ckpt_dir.iterdir():
        m = STEP_DIR.match(path.name)
        if m and path.is_dir():
            out[int(m.group(1))] = path
    return out


def is_release(step: int, keep_every: int) -> bool:
    return keep_every > 0 and step % keep_every == 0


def plan_deletions(steps: list[int], valid: set[int], keep_last: int, keep_every: int,
                   protect: set[int] = frozenset()) -> list[int]:
    """Steps to delete: valid ones beyond the last `keep_last`, except releases and `protect`.

    Folders without a manifest are left alone (they may be a failed save worth a look; they are
    never resumed from). If nothing valid would remain, nothing is deleted.
    """
    candidates = sorted(s for s in steps if s in valid)
    keep = set(candidates[-keep_last:]) if keep_last > 0 else set()
    keep |= {s for s in candidates if is_release(s, keep_every)} | set(protect)
    delete = [s for s in candidates if s not in keep]
    if not keep & set(candidates):
        return []
    return delete


def prune(ckpt_dir: Path, keep_last: int, keep_every: int, protect: set[int] = frozenset()) -> list[int]:
    """Delete what `plan_deletions` says (rank 0 only); returns the deleted steps."""
    folders = published_steps(ckpt_dir)
    valid = {s for s, p in folders.items() if (p / MANIFEST).is_file()}
    deleted = []
    for step in plan_deletions(list(folders), valid, keep_last, keep_every, protect):
        doomed = folders[step].with_name(f".deleting-{folders[step].name}")
        folders[step].rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        universal = folders[step].with_name(f"{folders[step].name}_universal")  # its resharding copy goes too
        if universal.is_dir():
            gone = universal.with_name(f".deleting-{universal.name}")
            universal.rename(gone)
            shutil.rmtree(gone, ignore_errors=True)
        deleted.append(step)
    if deleted:
        log.info("retention: deleted checkpoints of steps %s (keep_last=%d, keep_every=%d)",
                 deleted, keep_last, keep_every)
    for leftover in ckpt_dir.glob(".deleting-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # from a prune killed half-way
    return deleted
