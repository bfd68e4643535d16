"""Raw-document readers: jsonl (plain, .gz, .zst), parquet, plain text and source files.

`list_inputs` expands `clean.inputs` into a sorted, numbered file list (the number is part of every
document's global key, so it must not depend on the task count), `list_catalogue` the globs of every
`clean.sources` entry into one such list whose files name their source; `split_inputs` cuts uncompressed
jsonl files larger than a task's share into byte ranges, so one big file spreads over many tasks;
`assign_files` splits files or ranges by size into tasks; `read_file` / `read_slice` yield a
`Document` per record and a `Reject` per record they cannot read. A reject names its reason, file and
line (line 0 = the whole file) and the task goes on. Line numbers count from the start of the file
whatever the range, so keys, ids and rejects do not depend on the task count.

A file that ends or breaks before its end (a truncated .gz or .zst, a corrupt parquet, an I/O error)
yields the records read up to there, then one `corrupt_file` (or `unreadable_file`) reject at line 0
saying how many records came before the error; the clean stage then fails or goes on as
`clean.on_corrupt_file` says. A JSON `\\ud800` escape decodes to a lone surrogate, which no UTF-8
consumer accepts: such a record is an `invalid_unicode` reject.
"""

from __future__ import annotations

import glob
import gzip
import heapq
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from core.errors import DataError
from data_prep.code_languages import language_of_extension, sniff

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".ndjson")
TEXT_SUFFIXES = (".txt", ".md")
PARQUET_SUFFIXES = (".parquet",)
SNIFF_BYTES = 64 << 10  # of a file without extension, read to tell whether it is source code
# File-level rejects after which records of the file may be missing: clean.on_corrupt_file decides.
BROKEN_FILE_REASONS = ("corrupt_file", "unreadable_file")
# What decoding a damaged file raises: truncated gzip (EOFError), bad gzip data (zlib.error,
# BadGzipFile: an OSError), zstd (ZstdError, or EOFError from _ZstdReader), parquet (ArrowInvalid:
# a ValueError; ArrowIOError: an OSError).
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, zstandard.ZstdError)


@dataclass(frozen=True)
class InputFile:
    path: Path
    source: str  # path relative to the common root of the inputs: stable across machines
    index: int  # position in the sorted list of all inputs
    size: int
    kind: str  # jsonl | parquet | text | code | extensionless (code if its content says so) | unknown
    code_lang: str = ""
    source_name: str = ""  # the clean.sources entry whose globs matched the file ("" for clean.inputs)


@dataclass(slots=True)
class Document:
    id: str
    text: str
    source: str
    line: int  # 1-based line (jsonl), row + 1 (parquet), 1 (text and code files)
    key: int  # file index << 32 | line: sorts documents in input order whatever the task split
    meta: dict = field(default_factory=dict)
    code_lang: str = ""
    source_name: str = ""


@dataclass(slots=True)
class Reject:
    reason: str
    source: str
    line: int
    detail: str = ""


def file_kind(path: Path, code_extensions: list[str]) -> tuple[str, str]:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl", ""
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet", ""
    if name.endswith(TEXT_SUFFIXES):
        return "text", ""
    if path.suffix.lower() in code_extensions:
        return "code", language_of_extension(path.suffix)
    if not path.suffix:  # a script such as bin/serve: its reader decides from its content
        return "extensionless", ""
    return "unknown", ""


def list_inputs(patterns: list[str], code_extensions: list[str]) -> list[InputFile]:
    """Expand paths, directories and globs (`**` allowed) into a sorted list of files."""
    if not patterns:
        raise DataError("clean.inputs is empty; set it to the raw corpus, e.g. clean.inputs='[data/raw/**/*]'")
    return list_catalogue([("", patterns, "clean.inputs", "")], code_extensions)


def list_catalogue(groups: list[tuple[str, list[str], str, str]], code_extensions: list[str]) -> list[InputFile]:
    """The files of every (source name, patterns, config key, declared programming language) group, sorted
    and numbered together (so keys are in path order whatever the sources), each naming its source; a
    file two sources match is an error: a document belongs to one source. A source that declares a
    programming language makes every file of it code of that language (whatever its extension), and
    every record of its jsonl or parquet files."""
    owner: dict[Path, tuple[str, str]] = {}
    declared_code: dict[str, str] = {}
    for name, patterns, key, code_lang in groups:
        declared_code[name] = code_lang
        for pattern in patterns:
            for p in _expand(pattern, key):
                if p in owner and owner[p][0] != name:
                    raise DataError(f"{p} is matched by {owner[p][1]} and {key} ({pattern!r}); a file belongs to "
                                    "one source: narrow one of the globs")
                owner.setdefault(p, (name, key))
    ordered = sorted(owner, key=str)
    root = Path(os.path.commonpath([p.parent for p in ordered]))
    files = []
    for i, p in enumerate(ordered):
        kind, code_lang = file_kind(p, [e.lower() for e in code_extensions])
        if declared := declared_code[owner[p][0]]:
            kind, code_lang = (kind if kind in ("jsonl", "parquet") else "code"), declared
        files.append(InputFile(p, p.relative_to(root).as_posix(), i, p.stat().st_size, kind, code_lang,
                               owner[p][0]))
    return files


def _expand(pattern: str, key: str) -> list[Path]:
    matched = [Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)]
    found = [f for p in matched for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    broken = [f for f in found if f.is_symlink() and not f.exists()]
    if broken:
        raise DataError(f"{key} entry {pattern!r}: {broken[0]} is a broken symbolic link (to "
                        f"{os.readlink(broken[0])}); restore its target or remove the link")
    found = [f for f in found if f.is_file() and not f.name.startswith(".")]
    if not found:
        raise DataError(f"{key} entry {pattern!r} matches no file; check the path (globs such as "
                        "data/raw/**/*.jsonl.zst are allowed)")
    return [p.resolve() for p in found]


@dataclass(frozen=True)
class InputSlice:
    """The records of `file` whose line starts at a byte offset in [start, end); the whole file when end is None."""
    file: InputFile
    start: int = 0
    end: int | None = None

    @property
    def size(self) -> int:
        return self.file.size if self.end is None else self.end - self.start

    @property
    def index(self) -> tuple[int, int]:
        return self.file.index, self.start


SEEKABLE_SUFFIXES = (".jsonl", ".ndjson")  # uncompressed: a task can start reading in the middle
MIN_SLICE_BYTES = 64 * 1024


def split_inputs(files: list[InputFile], num_tasks: int) -> list[InputSlice]:
    """Whole files, except uncompressed jsonl files larger than a task's share: equal byte ranges."""
    share = max(sum(f.size for f in files) // num_tasks, MIN_SLICE_BYTES)
    slices = []
    for f in files:
        if f.kind != "jsonl" or not f.path.name.lower().endswith(SEEKABLE_SUFFIXES) or f.size <= share:
            slices.append(InputSlice(f))
            continue
        pieces = -(-f.size // share)
        bounds = [f.size * i // pieces for i in range(pieces + 1)]
        slices += [InputSlice(f, a, b) for a, b in zip(bounds, bounds[1:])]
    return slices


def assign_files(files: list, num_tasks: int) -> list[list]:
    """Largest file (or slice) first to the least-loaded task (ties: lowest rank); each task reads in input order."""
    heap = [(0, rank) for rank in range(num_tasks)]
    tasks: list[list] = [[] for _ in range(num_tasks)]
    for f in sorted(files, key=lambda f: (-f.size, f.index)):
        load, rank = heapq.heappop(heap)
        tasks[rank].append(f)
        heapq.heappush(heap, (load + max(f.size, 1), rank))
    return [sorted(t, key=lambda f: f.index) for t in tasks]


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Fields:
    text: str = "text"
    id: str = "id"
    code: str = ""


def read_file(f: InputFile, fields: Fields) -> Iterator[Document | Reject]:
    """Every record of one file, in order; an unreadable record or file becomes a `Reject`."""
    readers = {"jsonl": _read_jsonl, "parquet": _read_parquet, "text": _read_whole, "code": _read_whole,
               "extensionless": _read_extensionless}
    if f.kind not in readers:
        yield Reject("unsupported_format", f.source, 0, f"extension of {f.path.name} is not one of "
                     "jsonl[.gz|.zst], parquet, txt or clean.code_extensions")
        return
    if f.size == 0:
        yield Reject("empty_file", f.source, 0, "the file is empty")
        return
    count = records = 0
    try:
        for item in readers[f.kind](f, fields):
            count += isinstance(item, Document)
            records += 1
            yield item
    except READ_ERRORS as exc:
        yield broken_file(f.source, records, exc)
        return
    if count == 0 and f.kind == "jsonl":
        yield Reject("empty_file", f.source, 0, "no record in the file")


def broken_file(source: str, records: int, exc: BaseException) -> Reject:
    """The file-level reject of a file that could not be read to its end."""
    # An OSError with an errno is the system's (permission, missing, I/O); the others are the data's.
    reason = "unreadable_file" if isinstance(exc, OSError) and exc.errno is not None else "corrupt_file"
    what = "truncated or corrupt" if reason == "corrupt_file" else "unreadable"
    detail = f"{what} after {records:,} records: {type(exc).__name__}: {exc}"
    return Reject(reason, source, 0, detail[:300])


def _open_lines(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # raises EOFError at a cut
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 20)
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a .zst file (one frame or several), raising EOFError where the file ends
    inside a frame. zstandard's stream_reader returns end-of-file there instead: a truncated file read as
    a shorter one, its cut line a `bad_json`."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = self._dctx.decompressobj()
        self._in_frame = False  # bytes of the current frame were fed and its end not seen
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            chunk = self._file.read(1 << 18)  # ~1-3 MB of text out per read
            if not chunk:
                if self._in_frame:
                    raise EOFError("the file ends inside a zstd frame (truncated)")
                return 0
            self._out = memoryview(self._decompress(chunk))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        parts = []
        while chunk:
            self._in_frame = True
            parts.append(self._frame.decompress(chunk))
            if not self._frame.eof:
                break
            chunk, self._frame, self._in_frame = self._frame.unused_data, self._dctx.decompressobj(), False
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def read_slice(s: InputSlice, fields: Fields) -> Iterator[Document | Reject]:
    """`read_file` for a whole file; for a byte range, its records (a range may hold none)."""
    if s.end is None:
        yield from read_file(s.file, fields)
        return
    records = 0
    try:
        for item in _parse_jsonl(s.file, _range_lines(s), fields):
            records += 1
            yield item
    except OSError as exc:
        yield broken_file(s.file.source, records, exc)


def _range_lines(s: InputSlice) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each line that starts in [s.start, s.end)."""
    with open(s.file.path, "rb") as fh:
        line_no = 1
        if s.start > 0:
            fh.seek(s.start - 1)
            fh.readline()  # the end of the line that started before the range: not ours
            first = fh.tell()
            fh.seek(0)
            while fh.tell() < first:  # line numbers count from the start of the file
                line_no += fh.read(min(1 << 24, first - fh.tell())).count(b"\n")
        position = fh.tell()
        while position < s.end:
            raw = fh.readline()
            if not raw:
                return
            yield line_no, raw
            line_no += 1
            position += len(raw)


def _read_jsonl(f: InputFile, fields: Fields) -> Iterator[Document | Reject]:
    with _open_lines(f.path) as fh:
        yield from _parse_jsonl(f, enumerate(fh, start=1), fields)


def _parse_jsonl(f: InputFile, lines: Iterator[tuple[int, bytes]], fields: Fields) -> Iterator[Document | Reject]:
    for line_no, raw in lines:
        if not raw.strip():
            continue  # a blank line is not a record
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Reject("invalid_utf8", f.source, line_no, f"byte {exc.start}: {raw[exc.start:exc.start + 4]!r}")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Reject("bad_json", f.source, line_no, f"{exc.msg} at column {exc.colno}")
            continue
        if _SURROGATE_ESCAPE.search(line):  # rare: the full check only then
            bad = lone_surrogate(record)
            if bad:
                yield Reject("invalid_unicode", f.source, line_no, bad)
                continue
        yield record_to_document(record, f, line_no, fields)


# A JSON escape of a UTF-16 surrogate (\ud800-\udfff). A well-formed pair decodes to one character;
# a lone one stays a surrogate, which cannot be encoded to UTF-8 (language id, the writers...).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def lone_surrogate(value: object, where: str = "") -> str:
    """Where `value` (a decoded JSON record) holds a lone surrogate, described; "" when it holds none."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"lone surrogate U+{ord(value[exc.start]):04X} in {where or 'the record'} (a JSON \\u escape "
                    "of half a UTF-16 pair; not valid Unicode)")
        return ""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return ""
    for k, v in items:
        name = f"{where}[{k!r}]" if where else f"field {k!r}"
        found = lone_surrogate(k, f"the name of {name}") if isinstance(k, str) else ""
        found = found or lone_surrogate(v, name)
        if found:
            return found
    return ""


def _read_parquet(f: InputFile, fields: Fields) -> Iterator[Document | Reject]:
    import pyarrow.parquet as pq  # imported here: pyarrow is slow to import and only parquet needs it

    row = 0
    for batch in pq.ParquetFile(f.path).iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield record_to_document(record, f, row, fields)


def _read_whole(f: InputFile, fields: Fields) -> Iterator[Document | Reject]:
    data = f.path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        yield Reject("invalid_utf8", f.source, line, f"byte {exc.start}: {data[exc.start:exc.start + 4]!r}")
        return
    if not text.strip():
        yield Reject("empty_file", f.source, 0, "the file holds only whitespace")
        return
    yield Document(id=f.source, text=text, source=f.source, line=1, key=f.index << 32 | 1, code_lang=f.code_lang,
                   source_name=f.source_name)


def _read_extensionless(f: InputFile, fields: Fields) -> Iterator[Document | Reject]:
    """A source file when its content is code of a known language (data_prep/code_languages.py: sniff);
    anything else without an extension (binaries, READMEs) is an unsupported format, as before."""
    with open(f.path, "rb") as fh:  # a prefix first: the file may be a large binary
        head = fh.read(SNIFF_BYTES)
    code_lang = "" if b"\0" in head else sniff(head.decode("utf-8", errors="ignore"))
    text = ""
    if code_lang:
        try:
            text = f.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            code_lang = ""
    if not code_lang:
        yield Reject("unsupported_format", f.source, 0, f"{f.path.name} has no extension and is not source code "
                     "of a language of data_prep/code_languages.py; give it an extension")
        return
    yield Document(id=f.source, text=text, source=f.source, line=1, key=f.index << 32 | 1, code_lang=code_lang,
                   source_name=f.source_name)


def record_to_document(record: object, f: InputFile, line: int, fields: Fields) -> Document | Reject:
    if not isinstance(record, dict):
        return Reject("not_an_object", f.source, line, f"a JSON {type(record).__name__}, not an object")
    text = record.get(fields.text)
    if text is None:
        keys = ", ".join(list(record)[:8])
        return Reject("missing_text", f.source, line, f"no field {fields.text!r} (clean.text_field); keys: {keys}")
    if not isinstance(text, str):
        return Reject("non_string_text", f.source, line, f"field {fields.text!r} is a {type(text).__name__}")
    doc_id = record.get(fields.id)
    doc_id = str(doc_id) if doc_id not in (None, "") else f"{f.source}:{line}"
    meta = {k: v for k, v in record.items() if k not in (fields.text, fields.id)}
    code_lang = f.code_lang
    if fields.code and isinstance(record.get(fields.code), str) and record[fields.code]:
        code_lang = record[fields.code]
    return Document(id=doc_id, text=text, source=f.source, line=line, key=f.index << 32 | line,
                    meta=meta, code_lang=code_lang, source_name=f.source_name)
