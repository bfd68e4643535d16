"""Reading the `clean` stage's shards: `clean/part-NNNNN.jsonl.zst` or `.jsonl.gz`, one JSON document a line.

The tokenizer and preprocess stages see the cleaned corpus as one deterministic sequence of documents:
shards in name order, lines in file order. A line that is not a JSON object with a string `text` is
counted and skipped with its file and line number.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from core.errors import DataError

log = logging.getLogger("graine.shards")

SUFFIXES = (".jsonl.zst", ".jsonl.gz", ".jsonl")


@dataclass
class CleanDocument:
    """One line of a clean shard (data_prep.readers.Document is a raw input's record, before cleaning)."""

    index: int  # position in the global document order (counts skipped lines too, so it is stable)
    id: str
    text: str
    lang: str
    source: str
    record: dict = field(repr=False, default_factory=dict)


def list_shards(clean_dir: Path) -> list[Path]:
    """The clean shards in their global order; an error names the folder and the stage to run."""
    clean_dir = Path(clean_dir)
    if not clean_dir.is_dir():
        raise DataError(f"{clean_dir} does not exist; run the clean stage first (`graine run clean`)")
    # Only the parts: rejects.jsonl and summaries beside them are reports, not documents.
    shards = sorted(p for p in clean_dir.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)
                    and p.name.startswith("part-"))
    if not shards:
        raise DataError(f"{clean_dir} holds no part-*.jsonl.zst / .jsonl.gz shards; re-run the clean stage")
    return shards


def open_text(path: Path) -> io.TextIOBase:
    """A text stream over a shard, whatever its compression."""
    path = Path(path)
    if path.name.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        return io.TextIOWrapper(io.BufferedReader(raw, 1 << 20), encoding="utf-8", newline="\n")
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def count_lines(path: Path) -> int:
    """Documents in a shard without parsing them (a cheap first pass)."""
    with open_text(path) as f:
        return sum(1 for _ in f)


def parse_line(line: str, path: Path, lineno: int, index: int) -> CleanDocument | None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        log.warning("%s:%d: skipped, not valid JSON (%s)", path, lineno, exc)
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        log.warning("%s:%d: skipped, not an object with a string 'text'", path, lineno)
        return None
    return CleanDocument(index=index, id=str(rec.get("id", f"{path.name}:{lineno}")), text=rec["text"],
                    lang=str(rec.get("lang") or "und"), source=str(rec.get("source") or ""), record=rec)


def read_shard(path: Path, first_index: int = 0, start: int = 0, stop: int | None = None) -> Iterator[CleanDocument]:
    """Documents of lines [start, stop) of one shard; `first_index` is the global index of its line 0."""
    with open_text(path) as f:
        for lineno, line in enumerate(f):
            if stop is not None and lineno >= stop:
                break
            if lineno < start or not line.strip():
                continue
            doc = parse_line(line, path, lineno + 1, first_index + lineno)
            if doc is not None:
                yield doc


def read_documents(clean_dir: Path) -> Iterator[CleanDocument]:
    """Every document of clean/, in the global order (indices count every line, as `count_lines` does)."""
    first = 0
    for path in list_shards(clean_dir):
        with open_text(path) as f:
            lineno = -1
            for lineno, line in enumerate(f):
                doc = parse_line(line, path, lineno + 1, first + lineno) if line.strip() else None
                if doc is not None:
                    yield doc
            first += lineno + 1
