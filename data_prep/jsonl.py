"""Atomic, deterministic writers (jsonl.zst / jsonl.gz / json / npy) and the matching jsonl reader.

Every file is written under `<name>.tmp` and renamed once complete, so a killed task never leaves a
file that looks finished. Output bytes depend only on the records: zstd runs single-threaded at a
fixed level and gzip headers carry no timestamp or file name.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

ZSTD_LEVEL = 3


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


class JsonlWriter:
    """Write records to `path` (.jsonl, .jsonl.zst or .jsonl.gz); the file appears only on `close()`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._raw = open(_tmp(self.path), "wb")  # noqa: SIM115 - closed in close()
        if self.path.name.endswith(".zst"):
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0)
            self._stream = cctx.stream_writer(self._raw, closefd=False)
        elif self.path.name.endswith(".gz"):
            self._stream = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
        else:
            self._stream = self._raw
        self._text = io.TextIOWrapper(self._stream, encoding="utf-8", newline="\n", write_through=False)

    def write(self, record: dict[str, Any]) -> None:
        self._text.write(dumps(record))
        self._text.write("\n")
        self.count += 1

    def close(self) -> None:
        self._text.flush()
        self._text.detach()
        if self._stream is not self._raw:
            self._stream.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(_tmp(self.path), self.path)

    def abort(self) -> None:
        self._raw.close()
        _tmp(self.path).unlink(missing_ok=True)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_npy(path: Path, array: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, path)
