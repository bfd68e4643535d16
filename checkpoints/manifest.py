"""Checkpoint manifests: every file of a checkpoint with its size and sha256, written durably (core.fs).

A checkpoint folder counts only if its `manifest.json` lists every file and each file still has the
recorded size and checksum. Hashing is split across ranks (file i is hashed by rank i % world_size) so
the cost of a multi-terabyte checkpoint is shared; the results are gathered by rank 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.fs import fsync_dir, fsync_file, write_atomic
from core.hashing import sha256_file

MANIFEST = "manifest.json"


def list_files(folder: Path) -> list[str]:
    """Relative paths of the files a manifest covers (everything but the manifest)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != MANIFEST)


def hash_share(folder: Path, files: list[str], rank: int, world_size: int, fsync: bool = False) -> dict:
    """{file: {size, sha256}} for this rank's share of `files`; fsyncs them first when asked."""
    out = {}
    for rel in files[rank::world_size]:
        path = folder / rel
        if fsync:
            fsync_file(path)
        out[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def write_manifest(folder: Path, entries: dict) -> None:
    write_atomic(folder / MANIFEST, json.dumps({"version": 1, "files": entries}, indent=1, sort_keys=True))


def read_manifest(folder: Path) -> tuple[dict | None, str | None]:
    """(entries, None), or (None, why the manifest is unusable)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None, f"{path} is missing (the save did not finish)"
    try:
        data = json.loads(path.read_text())
        return data["files"], None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{path} is unreadable ({exc})"


def check_entries(folder: Path, entries: dict, rank: int = 0, world_size: int = 1,
                  full: bool = True) -> str | None:
    """Why this rank's share of the manifest does not match the files, or None when it matches.

    `full=False` checks presence and sizes only (cheap, used right after a save whose checksums were
    just computed); `full=True` also recomputes the checksums (used before resuming).
    """
    for rel in sorted(entries)[rank::world_size]:
        expect = entries[rel]
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != expect["size"]:
            return f"{rel} has {size} bytes, the manifest says {expect['size']}"
        if full and sha256_file(path) != expect["sha256"]:
            return f"{rel} does not match its sha256 in the manifest (corrupted)"
    return None


def verify(folder: Path, full: bool = True) -> str | None:
    """Why `folder` is not a valid checkpoint, or None (single process)."""
    entries, why = read_manifest(folder)
    if entries is None:
        return why
    return check_entries(folder, entries, full=full)


def seal(folder: Path) -> dict:
    """Write `folder`'s manifest (size and sha256 of every file), all hashed by this one process, fsynced."""
    entries = hash_share(folder, list_files(folder), 0, 1, fsync=True)
    write_manifest(folder, entries)
    fsync_dir(folder)
    return entries


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the complete folder `tmp` in the place of `final`: a reader never sees a partial one."""
    if final.exists():
        stale = final.with_name(f".deleting-{final.name}")
        final.rename(stale)
        shutil.rmtree(stale)
    tmp.rename(final)
    fsync_dir(final.parent)
