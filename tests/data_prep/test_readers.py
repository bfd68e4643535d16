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

from data_prep.jsonl import JsonlWriter, read_jsonl
from data_prep.readers import (
    Document,
    Fields,
    InputSlice,
    Reject,
    assign_files,
    list_inputs,
    read_file,
    read_slice,
    split_inputs,
)
from pipeline.errors import DataError

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
    assert ("truncated.jsonl.gz", 0, "unreadable_file") in got
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
