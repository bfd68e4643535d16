"""Durable file writes: every writer here goes through a temporary name in the same folder, fsyncs
the file, renames it over the target and fsyncs the folder, so that a crash at any moment leaves
either the old file or the new one, never a torn one, on local disks and on Lustre/GPFS alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (the directory itself must be synced)."""
    fsync_file(path)


def tmp_name(path: Path) -> Path:
    """The temporary name a write of `path` goes through: hidden, per process, in the same folder."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it is fsynced and renamed over `path`, on an
    error it is removed and `path` is left as it was. Text modes default to UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    tmp = tmp_name(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace `path` with `data` (text as UTF-8), durably."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_json(path: str | Path, data: Any, indent: int | None = 1, sort_keys: bool = True) -> None:
    """Replace `path` with `data` as JSON (non-ASCII kept), durably."""
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=indent, sort_keys=sort_keys) + "\n")
