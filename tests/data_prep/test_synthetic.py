"""The synthetic corpus: deterministic, every format, languages a language identifier recognises, labels."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from data_prep.jsonl import read_jsonl
from data_prep.langid import LanguageIdentifier
from data_prep.readers import Document, Fields, list_inputs, read_file
from data_prep.synthetic import KEPT_LANGUAGES, main, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_corpus(out, seed=0, docs_per_language=30)
    return out


def test_deterministic(corpus, tmp_path):
    write_corpus(tmp_path, seed=0, docs_per_language=30)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all((corpus / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)


def test_formats_and_size(corpus):
    names = [p.name for p in (corpus / "raw").rglob("*") if p.is_file()]
    for suffix in (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".txt", ".py", ".js"):
        assert any(n.endswith(suffix) for n in names), suffix
    size = sum(p.stat().st_size for p in (corpus / "raw").rglob("*") if p.is_file())
    assert 100_000 < size < 5_000_000


def test_documents_are_their_language(corpus):
    ident = LanguageIdentifier()
    labels = {label["id"]: label for label in read_jsonl(corpus / "labels.jsonl") if label["kind"] == "clean"}
    hits = Counter()
    docs = [d for f in list_inputs([str(corpus / "raw" / "**" / "*")], [".py", ".js"])
            for d in read_file(f, Fields()) if isinstance(d, Document) and d.id in labels]
    for d in docs:
        hits[ident(d.text)[0] == labels[d.id]["lang"]] += 1
    assert hits[True] >= 0.99 * len(docs) and {labels[d.id]["lang"] for d in docs} == set(KEPT_LANGUAGES)


def test_tokenizer_relevant_characters_present(corpus):
    text = "".join(d.text for f in list_inputs([str(corpus / "raw" / "**" / "*")], [".py", ".js"])
                   for d in read_file(f, Fields()) if isinstance(d, Document))
    assert re.search("[\U0001f300-\U0001faff]", text)  # emoji
    assert re.search(r"\d{4}", text)  # digits
    assert re.search("\n {8}", text)  # whitespace runs (code indentation)
    assert re.search("[\u10d0-\u10ff\u0530-\u058f\u0b80-\u0bff]", text)  # rarer scripts
    for script in ("[\u0400-\u04ff]", "[\u0600-\u06ff]", "[\u4e00-\u9fff]", "[\u0900-\u097f]"):
        assert re.search(script, text)


def test_labels_cover_every_plant(corpus):
    kinds = Counter(label["kind"] for label in read_jsonl(corpus / "labels.jsonl"))
    for kind in ("clean", "exact_dup", "near_dup", "short", "repetitive", "flagged", "garbage",
                 "wrong_lang", "code", "code_minified", "malformed"):
        assert kinds[kind] > 0, kind
    labels = list(read_jsonl(corpus / "labels.jsonl"))
    assert any(label.get("pii") for label in labels) and any(label.get("mojibake") for label in labels)


def test_cli(tmp_path, capsys):
    assert main([str(tmp_path), "--docs-per-language", "5"]) == 0
    assert "clean.inputs" in capsys.readouterr().out and (tmp_path / "labels.jsonl").is_file()
