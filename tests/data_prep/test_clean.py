"""The clean stage end to end on the synthetic corpus: ground truth, task-count independence, stats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.clean import STAGE, run_locally, summary
from data_prep.jsonl import read_jsonl
from data_prep.synthetic import KEPT_LANGUAGES, build_corpus, write_corpus
from pipeline.config import CleanConfig, RunConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, seed=3, docs_per_language=40)
    return out


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
    assert len(list(runs["three"].glob("part-*.jsonl.zst"))) == 3


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
    assert stats == {**json.loads((runs["one"] / "stats.json").read_text()), "num_tasks": 3}
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
