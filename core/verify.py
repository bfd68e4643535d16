"""Published outputs checked against their completion records, cheaply or fully.

A stage's `_COMPLETE.json` lists every output file with its size and sha256. Before a task reads an
upstream stage, it checks that stage's files cheaply: every size, and for each file the sha256 of up to
SAMPLES blocks of BLOCK bytes at fixed offsets (recorded at publication), so a file of at most
SAMPLES x BLOCK bytes (1 MiB) is checked whole, and a larger one where the blocks fall: truncation,
replacement and corruption of large regions are caught, a change of a few bytes between blocks is not.
`graine verify [STAGE]` (or `verify_inputs: full` in the run config) re-hashes every byte.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.hashing import sha256_file

BLOCK = 1 << 16
SAMPLES = 16
WHOLE = BLOCK * SAMPLES  # files up to this size are hashed whole by the cheap check


def block_offsets(size: int) -> list[int]:
    """Where the sampled blocks of a file of `size` bytes start: evenly spread, first and last included."""
    if size <= WHOLE:
        return []
    last = size - BLOCK
    return [round(i * last / (SAMPLES - 1)) for i in range(SAMPLES)]


def _block_hash(f, offset: int) -> str:
    f.seek(offset)
    return hashlib.sha256(f.read(BLOCK)).hexdigest()[:32]


def sample_hashes(path: Path) -> dict[str, str]:
    """{offset: sha256 of the block there} for a file larger than WHOLE, else {}."""
    offsets = block_offsets(path.stat().st_size)
    if not offsets:
        return {}
    with open(path, "rb") as f:
        return {str(o): _block_hash(f, o) for o in offsets}


def check_folder(folder: Path, record: dict, full: bool = False) -> list[str]:
    """The problems of a published folder against its record (empty when it matches)."""
    problems = []
    samples = record.get("samples") or {}
    for rel, entry in sorted((record.get("files") or {}).items()):
        path = folder / rel
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{path} is missing")
            continue
        if size != entry["size"]:
            problems.append(f"{path} has {size} bytes, its record says {entry['size']}")
        elif full or size <= WHOLE or rel not in samples:
            if sha256_file(path) != entry["sha256"]:
                problems.append(f"{path} does not match its sha256")
        else:
            with open(path, "rb") as f:
                bad = [o for o, h in samples[rel].items() if _block_hash(f, int(o)) != h]
            if bad:
                problems.append(f"{path} differs from its record in the block at byte {bad[0]}")
    return problems
