"""Readers: every format, every reject reason with its file and line, byte ranges of big files, task assignment."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from core.errors import DataError
from data_prep.jsonl import JsonlWriter, read_jsonl
from data_prep.readers import (
    Document,
    Fields,
    InputSlice,
    Reject,
    assign_files,
    broken_file,
    list_inputs,
    read_file,
    read_slice,
    split_inputs,
)

RECORDS = [{"id": "a", "text": "first document", "url": "u1"}, {"text": "second, no id"}]


def _lines(records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "plain.jsonl").write_bytes(_lines(RECORDS))
    (tmp_path / "gz.jsonl.gz").write_bytes(gzip.compress(_lines(RECORDS)))
    (tmp_path / "zst.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_lines(RECORDS)))
    pq.write_table(pa.table({"id": ["a", None], "text": ["first document", "second, no id"], "url": ["u1", None]}),
                   tmp_path / "table.parquet")
    (tmp_path / "note.txt").write_text("a plain text document\nover two lines\n")
    (tmp_path / "tool.py").write_text("def f():\n    return 1\n")
    return tmp_path


def read_all(path: Path, root: Path) -> list:
    files = {f.path.name: f for f in list_inputs([str(root / "*")], [".py"])}
    return list(read_file(files[path.name], Fields()))


@pytest.mark.parametrize("name", ["plain.jsonl", "gz.jsonl.gz", "zst.jsonl.zst", "table.parquet"])
def test_record_formats(inputs, name):
    docs = read_all(inputs / name, inputs)
    assert [type(d) for d in docs] == [Document, Document]
    assert docs[0].id == "a" and docs[0].text == "first document" and docs[0].meta.get("url") == "u1"
    assert docs[1].id == f"{name}:2" and docs[1].line == 2  # generated from source and position
    assert docs[0].key >> 32 == docs[1].key >> 32 and docs[0].key < docs[1].key


def test_text_and_code_files(inputs):
    (note,) = read_all(inputs / "note.txt", inputs)
    assert note.text.startswith("a plain text") and note.id == "note.txt" and not note.code_lang
    (code,) = read_all(inputs / "tool.py", inputs)
    assert code.code_lang == "python"


def test_every_reject_reason_has_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "broken\n\n{"text": "caf\xe9"}\n{"body": "x"}\n'
                    b'{"text": 3}\n[1, 2]\n{"text": "fine again"}\n')
    (tmp_path / "empty.jsonl.zst").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("ligne une\nligne deux é\n".encode("latin-1"))
    (tmp_path / "truncated.jsonl.gz").write_bytes(gzip.compress(_lines(RECORDS))[:-12])
    (tmp_path / "data.csv").write_text("a,b\n")
    got = []
    for f in list_inputs([str(tmp_path)], []):
        got += [(f.path.name, r.line, r.reason) for r in read_file(f, Fields()) if isinstance(r, Reject)]
    assert ("bad.jsonl", 2, "bad_json") in got
    assert ("bad.jsonl", 4, "invalid_utf8") in got
    assert ("bad.jsonl", 5, "missing_text") in got
    assert ("bad.jsonl", 6, "non_string_text") in got
    assert ("bad.jsonl", 7, "not_an_object") in got
    assert ("empty.jsonl.zst", 0, "empty_file") in got
    assert ("latin1.txt", 2, "invalid_utf8") in got
    assert ("truncated.jsonl.gz", 0, "corrupt_file") in got
    assert ("data.csv", 0, "unsupported_format") in got
    docs = [d for d in read_file(list_inputs([str(bad)], [])[0], Fields()) if isinstance(d, Document)]
    assert [d.text for d in docs] == ["fine", "fine again"]  # the task goes on after bad records


def test_configurable_fields(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(_lines([{"doc_id": 7, "content": "hello", "language": "rust"}]))
    (doc,) = read_file(list_inputs([str(tmp_path)], [])[0], Fields(text="content", id="doc_id", code="language"))
    assert (doc.id, doc.text, doc.code_lang) == ("7", "hello", "rust")


def test_missing_input_names_the_key(tmp_path):
    with pytest.raises(DataError, match="clean.inputs"):
        list_inputs([str(tmp_path / "nothing*.jsonl")], [])


def test_assign_files_balances_and_covers(inputs):
    files = list_inputs([str(inputs)], [".py"])
    for n in (1, 2, 4, 9):
        tasks = assign_files(files, n)
        assert len(tasks) == n
        assert sorted(f.index for t in tasks for f in t) == list(range(len(files)))
        assert tasks == assign_files(files, n)


def test_writer_is_atomic_and_roundtrips(tmp_path):
    path = tmp_path / "out.jsonl.zst"
    with pytest.raises(RuntimeError), JsonlWriter(path) as w:
        w.write({"a": 1})
        raise RuntimeError("killed")
    assert not path.exists() and not list(tmp_path.iterdir())
    for name in ("out.jsonl.zst", "out.jsonl.gz", "out.jsonl"):
        with JsonlWriter(tmp_path / name) as w:
            w.write({"text": "é 🙂"})
        assert list(read_jsonl(tmp_path / name)) == [{"text": "é 🙂"}]


def test_byte_ranges_read_every_line_once(tmp_path):
    rng = random.Random(0)
    lines = [json.dumps({"id": str(i), "text": "é🙂 " * rng.randint(0, 300)}, ensure_ascii=False).encode()
             for i in range(400)]
    lines[17], lines[230] = b"{not json", b"   "  # a reject and a blank line keep their numbers
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines))  # no final newline
    (f,) = list_inputs([str(path)], [])
    whole = list(read_file(f, Fields()))
    for n in (1, 2, 3, 7, 40):
        slices = split_inputs([f], n)
        assert (len(slices) > 1) == (n > 1) and slices[-1].end in (None, f.size)
        got = [item for s in slices for item in read_slice(s, Fields())]
        assert got == whole, n
    cut = lines[0].index(b"\xc3") + 1  # a range that starts inside a multi-byte character
    first, second = InputSlice(f, 0, cut), InputSlice(f, cut, f.size)
    assert list(read_slice(first, Fields())) + list(read_slice(second, Fields())) == whole


def test_lone_surrogate_is_a_reject_with_its_line(tmp_path):
    """JSON `\\ud800` decodes to a lone surrogate that UTF-8 cannot encode: that record alone is rejected."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"text": "first"}\n{"text": "half a pair \\ud800 here"}\n{"text": "ok", "meta": ["\\uDFFF"]}\n'
                     b'{"text": "a pair \\ud83d\\ude42, a backslash \\\\ud800"}\n{"\\udc00": 1, "text": "key"}\n{"text": "last"}\n')
    items = list(read_file(list_inputs([str(path)], [])[0], Fields()))
    rejects = [(r.line, r.reason) for r in items if isinstance(r, Reject)]
    assert rejects == [(2, "invalid_unicode"), (3, "invalid_unicode"), (5, "invalid_unicode")]
    assert "U+D800" in items[1].detail and "'text'" in items[1].detail
    assert [d.text for d in items if isinstance(d, Document)] == ["first", "a pair \U0001f642, a backslash \\ud800", "last"]
    assert all(isinstance(d, Reject) or d.text.encode() for d in items)


def _numbered(n: int) -> bytes:
    return b"".join(json.dumps({"id": str(i), "text": f"record {i} " + "word " * 40}).encode() + b"\n" for i in range(n))


def _cut_zst(data: bytes) -> bytes:
    z = zstandard.ZstdCompressor().compress(data)
    return z[: len(z) // 2]


def _corrupt_parquet(path: Path) -> bytes:
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(20_000)]}), path, row_group_size=5000)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = bytes(200)
    return bytes(data)


@pytest.mark.parametrize("name, make", [
    ("cut.jsonl.zst", lambda tmp: _cut_zst(_numbered(2000))),
    ("cut.jsonl.gz", lambda tmp: gzip.compress(_numbered(2000))[:-3000]),
    ("tiny.jsonl.zst", lambda tmp: zstandard.ZstdCompressor().compress(_numbered(10))[:8]),
    ("garbage.jsonl.zst", lambda tmp: b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 4),
    ("cut.parquet", lambda tmp: _corrupt_parquet(tmp / "whole.parquet")[:-100]),
    ("corrupt.parquet", lambda tmp: _corrupt_parquet(tmp / "whole.parquet")),
])
def test_truncated_or_corrupt_file_is_one_file_level_reject(tmp_path, name, make):
    """Records up to the damage, then `corrupt_file` at line 0 with their count: not a bad_json, not empty_file."""
    data = make(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(data)
    items = list(read_file(list_inputs([str(tmp_path / "in")], [])[0], Fields()))
    docs = [d for d in items if isinstance(d, Document)]
    assert [(r.line, r.reason) for r in items if isinstance(r, Reject)] == [(0, "corrupt_file")], items[-3:]
    assert items[-1].detail.startswith(f"truncated or corrupt after {len(docs):,} records: ")
    assert [d.line for d in docs] == list(range(1, len(docs) + 1))
    if name.startswith("cut.jsonl"):
        assert 100 < len(docs) < 2000


def test_multi_frame_zst_is_read_whole(tmp_path):
    whole = _numbered(300)  # frames cut mid-line: a frame's end is not a record's
    frames = b"".join(zstandard.ZstdCompressor().compress(whole[i:i + 4000]) for i in range(0, len(whole), 4000))
    (tmp_path / "frames.jsonl.zst").write_bytes(frames)
    (tmp_path / "empty_frame.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b""))
    files = {f.path.name: f for f in list_inputs([str(tmp_path)], [])}
    items = list(read_file(files["frames.jsonl.zst"], Fields()))
    assert [d.id for d in items] == [str(i) for i in range(300)]
    assert [(r.reason, r.line) for r in read_file(files["empty_frame.jsonl.zst"], Fields())] == [("empty_file", 0)]


def test_system_errors_are_unreadable_not_corrupt():
    assert broken_file("a.jsonl", 3, PermissionError(13, "Permission denied")).reason == "unreadable_file"
    assert broken_file("a.jsonl.gz", 3, EOFError("cut")).reason == "corrupt_file"
    assert broken_file("a.jsonl.gz", 3, gzip.BadGzipFile("bad")).reason == "corrupt_file"


def test_broken_symlinks_among_inputs_are_named(tmp_path):
    from core.errors import DataError
    from data_prep.readers import list_inputs

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "raw" / "b.jsonl").symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(DataError, match=r"b\.jsonl is a broken symbolic link \(to .*gone\.jsonl\)"):
        list_inputs([str(tmp_path / "raw")], [])
