"""Atomic, deterministic writers (jsonl.zst / jsonl.gz / json / npy) and the matching jsonl reader.

Every file is written through `core.fs` (a hidden temporary name, fsynced, renamed once complete),
so a killed task never leaves a file that looks finished. Output bytes depend only on the records:
zstd runs single-threaded at a fixed level and gzip headers carry no timestamp or file name.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from core.fs import atomic_open

ZSTD_LEVEL = 3


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class CompressedWriter:
    """A file at `path` (.zst, .gz or plain) written through one compressed stream (`self._stream`)
    that appears only when the writer closes without an error. Subclasses write to the stream; the
    chunks they hand it decide the compressed bytes, so each keeps its own."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.count = 0
        # The file stays open across calls: atomic_open is entered here and left in close() or __exit__.
        self._file = ExitStack()
        self._raw = self._file.enter_context(atomic_open(self.path, "wb"))
        if self.path.name.endswith(".zst"):
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0)
            self._stream = cctx.stream_writer(self._raw, closefd=False)
        elif self.path.name.endswith(".gz"):
            self._stream = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
        else:
            self._stream = self._raw

    def _finish(self) -> None:
        """Hand the stream what the subclass still holds."""

    def close(self) -> None:
        self._finish()
        if self._stream is not self._raw:
            self._stream.close()
        self._file.close()  # fsync, rename over self.path, fsync the folder

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # left by an error, atomic_open removes the partial file
            self._file.__exit__(exc_type, exc, tb)


class JsonlWriter(CompressedWriter):
    """Records to `path` (.jsonl, .jsonl.zst or .jsonl.gz), one compact JSON object per line."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._text = io.TextIOWrapper(self._stream, encoding="utf-8", newline="\n", write_through=False)

    def write(self, record: dict[str, Any]) -> None:
        self._text.write(dumps(record))
        self._text.write("\n")
        self.count += 1

    def _finish(self) -> None:
        self._text.flush()
        self._text.detach()


class LineWriter(CompressedWriter):
    """Lines already encoded (bytes, each ending in a newline), handed to the stream 1 MiB at a time."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._buffer: list[bytes] = []
        self._buffered = 0

    def write(self, line: bytes) -> None:
        self._buffer.append(line)
        self._buffered += len(line)
        self.count += 1
        if self._buffered >= 1 << 20:
            self._flush()

    def _flush(self) -> None:
        self._stream.write(b"".join(self._buffer))
        self._buffer, self._buffered = [], 0

    _finish = _flush


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    with JsonlWriter(path) as writer:
        for record in records:
            writer.write(record)
    return writer.count


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a jsonl, jsonl.gz or jsonl.zst file written by this module (no error recovery)."""
    path = Path(path)
    if path.name.endswith(".zst"):
        with open(path, "rb") as raw:
            stream = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
            yield from (json.loads(line) for line in stream)
    elif path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            yield from (json.loads(line) for line in fh)
    else:
        with open(path, encoding="utf-8") as fh:
            yield from (json.loads(line) for line in fh)


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
