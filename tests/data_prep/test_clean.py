"""The clean stage end to end on the synthetic corpus: ground truth, task-count independence, stats."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import zstandard

from core.errors import ConfigError, DataError
from data_prep.clean import STAGE, CleanConfig, DocumentCleaner, run_locally, summary
from data_prep.clean_stats import new_stats
from data_prep.jsonl import read_jsonl
from data_prep.langid import model_labels
from data_prep.readers import Document, Fields, list_inputs, read_file
from data_prep.synthetic import KEPT_LANGUAGES, TextGenerator, build_corpus
from pipeline.cli import main
from pipeline.config import RunConfig


def clean(corpus: Path, out: Path, num_tasks: int) -> Path:
    cfg = RunConfig(run_dir=str(out))
    cfg.clean = CleanConfig(inputs=[str(corpus / "raw" / "**" / "*")], num_tasks=num_tasks,
                            languages=list(KEPT_LANGUAGES))
    run_locally(cfg, out / "clean", out / "work")
    return out / "clean"


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {name: clean(corpus, base / name, n) for name, n in (("one", 1), ("three", 3), ("three_again", 3))}


def kept(out: Path) -> dict[str, dict]:
    return {r["id"]: r for p in sorted(out.glob("part-*.jsonl.zst")) for r in read_jsonl(p)}


def excluded(out: Path) -> dict[str, dict]:
    return {r["id"]: r for p in sorted((out / "excluded").glob("*.jsonl.zst")) for r in read_jsonl(p)}


def labels(corpus: Path, kind: str) -> list[dict]:
    return [label for label in read_jsonl(corpus / "labels.jsonl") if label["kind"] == kind]


def test_same_ids_whatever_the_task_count(runs):
    assert set(kept(runs["one"])) == set(kept(runs["three"]))
    # Parts are cut by size from the documents in key order, not one per task (tests/data_prep/test_canonical_order.py)
    assert sorted(p.name for p in runs["three"].glob("part-*")) == sorted(p.name for p in runs["one"].glob("part-*"))


def test_same_task_count_gives_identical_bytes(runs):
    a, b = runs["three"], runs["three_again"]
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_ground_truth(corpus, runs):
    out = runs["three"]
    docs, dropped = kept(out), excluded(out)
    clean_docs = labels(corpus, "clean")
    wrongly_dropped = [d["id"] for d in clean_docs if d["id"] not in docs]
    assert len(wrongly_dropped) <= 0.01 * len(clean_docs), wrongly_dropped
    exact = labels(corpus, "exact_dup")
    assert exact and all(dropped[d["id"]]["reason"] == "exact_duplicate" for d in exact)
    near = labels(corpus, "near_dup")
    caught = [d for d in near if d["id"] in dropped and dropped[d["id"]]["reason"].endswith("_duplicate")]
    assert len(caught) >= 0.95 * len(near)
    planted = {d["id"] for d in exact + near}
    removed_as_dup = [i for i, r in dropped.items() if r["reason"].endswith("_duplicate")]
    assert sum(i in planted for i in removed_as_dup) >= 0.99 * len(removed_as_dup)
    wrong = labels(corpus, "wrong_lang")
    assert sum(d["id"] not in docs for d in wrong) >= 0.95 * len(wrong)
    for kind in ("short", "repetitive", "flagged", "garbage", "code_minified"):
        assert all(d["id"] in dropped for d in labels(corpus, kind)), kind


def test_kept_duplicate_is_first_in_input_order(corpus, runs):
    docs, dropped = kept(runs["three"]), excluded(runs["three"])
    for d in labels(corpus, "exact_dup") + labels(corpus, "near_dup"):
        original = docs[d["dup_of"]]  # the original lives under web/, which sorts before web_mirror/
        assert dropped[d["id"]]["duplicate_of"] == f"{original['source']}:{_line(corpus, d['dup_of'], original)}"


def _line(corpus: Path, doc_id: str, record: dict) -> int:
    path = corpus / "raw" / record["source"]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path).column("id").to_pylist().index(doc_id) + 1
    return next(i for i, r in enumerate(read_jsonl(path), start=1) if r["id"] == doc_id)


def test_pii_boilerplate_and_mojibake(corpus, runs):
    docs = kept(runs["three"])
    for d in labels(corpus, "clean"):
        text = docs[d["id"]]["text"]
        for value in d.get("pii", []):
            assert value not in text, d["id"]
        for line in d.get("boilerplate", []):
            assert line not in text, d["id"]
        if d.get("mojibake"):
            assert "Ã" not in text and d["original"].split()[3] in text


def test_rejects_name_file_and_line(corpus, runs):
    rejects = {(r["file"], r["line"], r["reason"]) for r in read_jsonl(runs["three"] / "rejects.jsonl")}
    for label in labels(corpus, "malformed"):
        assert (label["file"], label["line"], label["reason"]) in rejects


def test_stats_add_up(runs):
    stats = json.loads((runs["three"] / "stats.json").read_text())
    for lang, entry in stats["languages"].items():
        assert entry["docs_in"] == entry["docs_out"] + sum(entry["dropped"].values()), lang
    assert stats["totals"]["docs_out"] == len(kept(runs["three"]))
    assert stats["totals"]["docs_in"] - stats["totals"]["docs_out"] == len(excluded(runs["three"]))
    assert stats["totals"]["rejected"] == sum(1 for _ in read_jsonl(runs["three"] / "rejects.jsonl"))
    assert stats == json.loads((runs["one"] / "stats.json").read_text()) and "num_tasks" not in stats
    assert "documents kept" in summary(runs["three"])


def test_stage_shape():
    names = [s.name for s in STAGE.steps]
    assert names == ["filter", "dedup", "clusters", "write", "stats"]
    cfg = RunConfig()
    cfg.clean.num_tasks = 5
    assert [s.num_tasks(cfg) for s in STAGE.steps] == [5, 5, 1, 5, 1]


def test_one_big_file_spreads_over_tasks(tmp_path):
    """A single uncompressed jsonl file is cut into byte ranges: 4 tasks share it and keep the same ids as 1."""
    planted = build_corpus(seed=5, docs_per_language=15)
    records = [r for name, rs in sorted(planted.files.items()) if ".jsonl" in name for r in rs]
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    lines.insert(len(lines) // 2, b"{broken")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "all.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    one, four = clean(tmp_path, tmp_path / "one", 1), clean(tmp_path, tmp_path / "four", 4)
    assert set(kept(one)) == set(kept(four)) and len(kept(one)) > 0.5 * len(records)
    assert all(len(np.load(tmp_path / "four" / "work" / "filter" / f"{r:05d}" / "keys.npy")) for r in range(4))
    assert list(read_jsonl(one / "rejects.jsonl")) == list(read_jsonl(four / "rejects.jsonl"))
    stats = [json.loads((out / "stats.json").read_text()) for out in (one, four)]
    assert stats[0]["totals"] == stats[1]["totals"] and stats[0]["files"] == stats[1]["files"] == 1


# ------------------------------------------------------------------------- unreadable inputs, no output
def _docs(lang: str, n: int, first: int = 0) -> list[dict]:
    return [{"id": f"{lang}-{i}", "text": TextGenerator(random.Random(i), lang).document(150)}
            for i in range(first, first + n)]


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _config(raw: Path, out: Path, **clean) -> RunConfig:
    cfg = RunConfig(run_dir=str(out))
    cfg.clean = CleanConfig(inputs=[str(raw / "*")], num_tasks=1, **clean)
    return cfg


def test_lone_surrogate_is_a_reject_and_the_file_goes_on(tmp_path):
    (tmp_path / "raw").mkdir()
    lines = _jsonl(_docs("en", 6)).splitlines(keepends=True)
    bad = {"id": "bad", "text": TextGenerator(random.Random(9), "en").document(150) + " \ud800 end"}
    lines.insert(2, json.dumps(bad).encode() + b"\n")  # ensure_ascii: the lone surrogate is written `\\ud800`
    (tmp_path / "raw" / "web.jsonl").write_bytes(b"".join(lines))
    run_locally(_config(tmp_path / "raw", tmp_path), tmp_path / "clean", tmp_path / "work")
    rejects = list(read_jsonl(tmp_path / "clean" / "rejects.jsonl"))
    assert [(r["file"], r["line"], r["reason"]) for r in rejects] == [("web.jsonl", 3, "invalid_unicode")]
    assert "U+D800" in rejects[0]["detail"]
    assert set(kept(tmp_path / "clean")) == {f"en-{i}" for i in range(6)}
    stats = json.loads((tmp_path / "clean" / "stats.json").read_text())
    assert stats["rejected"] == {"invalid_unicode": 1} and "invalid_unicode 1" in summary(tmp_path / "clean")


def _truncated_inputs(raw: Path) -> int:
    """A whole file and a .jsonl.zst cut in its middle; returns how many records the cut one holds before the cut."""
    raw.mkdir()
    (raw / "a.jsonl").write_bytes(_jsonl(_docs("en", 5)))
    data = zstandard.ZstdCompressor().compress(_jsonl(_docs("en", 400, first=100)))  # zstd blocks: 128 kB
    (raw / "b.jsonl.zst").write_bytes(data[: len(data) // 2])
    return sum(isinstance(d, Document) for f in list_inputs([str(raw / "b.jsonl.zst")], [])
               for d in read_file(f, Fields()))


def test_truncated_input_fails_the_stage_naming_the_file(tmp_path):
    before = _truncated_inputs(tmp_path / "raw")
    with pytest.raises(DataError, match=rf"b\.jsonl\.zst is truncated or corrupt after {before} records.*"
                                        r"clean\.on_corrupt_file=skip"):
        run_locally(_config(tmp_path / "raw", tmp_path), tmp_path / "clean", tmp_path / "work")


def test_truncated_input_skipped_keeps_what_was_read(tmp_path):
    before = _truncated_inputs(tmp_path / "raw")
    assert 0 < before < 400
    run_locally(_config(tmp_path / "raw", tmp_path, on_corrupt_file="skip"), tmp_path / "clean", tmp_path / "work")
    (reject,) = read_jsonl(tmp_path / "clean" / "rejects.jsonl")
    assert (reject["file"], reject["line"], reject["reason"]) == ("b.jsonl.zst", 0, "corrupt_file")
    assert reject["detail"].startswith(f"truncated or corrupt after {before} records")
    assert set(kept(tmp_path / "clean")) == {f"en-{i}" for i in range(5)} | {f"en-{i}" for i in range(100, 100 + before)}
    assert json.loads((tmp_path / "clean" / "stats.json").read_text())["rejected"] == {"corrupt_file": 1}


def test_nothing_kept_fails_with_the_drop_reasons(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "web.jsonl").write_bytes(_jsonl(_docs("en", 8)) + b"{broken\n")
    with pytest.raises(DataError) as failure:
        run_locally(_config(tmp_path / "raw", tmp_path, languages=["fr"]), tmp_path / "clean", tmp_path / "work")
    message = str(failure.value)
    first = message.splitlines()[0]  # what a failed task's report shows
    assert first.startswith("clean kept 0 of 8 documents (dropped: language_not_kept 8; unreadable: bad_json 1)")
    assert "languages found: en 8" in first and "clean.languages" in first
    assert "docs in" in message and "top drop reasons" in message  # the summary table follows


def test_cli_reports_a_corrupt_input_without_traceback(tmp_path, capsys):
    _truncated_inputs(tmp_path / "raw")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nclean:\n  inputs: ['{tmp_path / 'raw'}/*']\n  num_tasks: 1\n")
    assert main(["run", "clean", "-c", str(cfg), "--executor", "inline"]) == 1
    err = capsys.readouterr().err
    assert "graine: error:" in err and "b.jsonl.zst is truncated or corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "clean").exists()


@pytest.mark.parametrize("codes, bad", [(["en", "xx"], "xx"), (["EN"], "EN"), (["zh-CN"], "zh-CN")])
def test_unknown_language_code_is_refused(tmp_path, codes, bad):
    cfg = RunConfig(run_dir=str(tmp_path))
    cfg.clean.languages = codes
    with pytest.raises(ConfigError, match=rf"clean\.languages holds '{bad}'.*e\.g\. en, fr"):
        STAGE.check(cfg, 1, False)
    with pytest.raises(ConfigError, match="clean.languages"):
        DocumentCleaner(cfg.clean, new_stats())  # and again when a filter task starts


def test_known_and_pseudo_language_codes_pass(tmp_path):
    cfg = RunConfig(run_dir=str(tmp_path))
    cfg.clean.languages = [*KEPT_LANGUAGES, "ja", "yue", "ceb", "code", "other"]
    STAGE.check(cfg, 1, False)
    assert {"en", "zh", "yue", "wuu"} <= model_labels() and len(model_labels()) == 176
