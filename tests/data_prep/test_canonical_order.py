"""The canonical order: clean publishes its documents in key order (input path, then position), cut into files
by cumulative size, so that clean/ and every stage after it are byte-identical whatever the task counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import lineage
from data_prep import clean as clean_stage
from data_prep.clean import CleanConfig
from data_prep.jsonl import read_jsonl
from data_prep.readers import Document, Fields, list_inputs, read_file
from data_prep.synthetic import KEPT_LANGUAGES, build_corpus, write_corpus
from pipeline import runner
from pipeline.config import RunConfig
from tests.support import tiny_run

PART_BYTES = 20_000  # the synthetic corpus's ~0.6 MB of kept text: some thirty parts


def run_clean(raw_glob: str, out: Path, num_tasks: int) -> Path:
    cfg = RunConfig(run_dir=str(out))
    cfg.clean = CleanConfig(inputs=[raw_glob], num_tasks=num_tasks, languages=list(KEPT_LANGUAGES))
    clean_stage.run_locally(cfg, out / "clean", out / "work")
    return out / "clean"


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_parts():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clean_stage, "PART_BYTES", PART_BYTES)
        yield


@pytest.fixture(scope="module")
def runs(corpus, small_parts, tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {n: run_clean(str(corpus / "raw" / "**" / "*"), base / f"tasks-{n}", n) for n in (1, 2, 3, 5)}


def test_outputs_identical_whatever_the_task_count(runs):
    reference = files(runs[1])
    assert len([n for n in reference if n.startswith("part-")]) > 5
    assert any(n.startswith("excluded/duplicates-") for n in reference)
    assert any(n.startswith("excluded/filtered-") for n in reference)
    for n, out in runs.items():
        got = files(out)
        assert sorted(got) == sorted(reference), n
        assert [name for name in reference if got[name] != reference[name]] == [], n


def test_stats_and_summary_hold_no_task_count(runs):
    stats = json.loads((runs[3] / "stats.json").read_text())
    assert "num_tasks" not in stats and "tasks" not in (runs[3] / "summary.txt").read_text()


def keys_of(corpus: Path) -> dict[str, int]:
    out = {}
    for f in list_inputs([str(corpus / "raw" / "**" / "*")], CleanConfig().code_extensions):
        for item in read_file(f, Fields()):
            if isinstance(item, Document):
                out.setdefault(item.id, item.key)
    return out


@pytest.mark.parametrize("family", ["part-", "excluded/duplicates-", "excluded/filtered-"])
def test_every_family_is_in_key_order(corpus, runs, family):
    keys = keys_of(corpus)
    out = runs[3]
    records = [r for name in sorted(files(out)) if name.startswith(family) for r in read_jsonl(out / name)]
    order = [keys[r["id"]] for r in records]
    assert len(order) > 10 and order == sorted(order) and len(set(order)) == len(order)


def test_parts_are_cut_by_cumulative_size(runs):
    out = runs[2]
    parts = sorted(p for p in out.glob("part-*.jsonl.zst"))
    offset, expected = 0, []
    for k, part in enumerate(parts):
        assert part.name == f"part-{k:05d}.jsonl.zst"
        for record in read_jsonl(part):
            expected.append((offset // PART_BYTES, k))
            offset += len(record["text"].encode("utf-8"))
    # The document whose text starts at cumulative offset o is in piece o // PART_BYTES (empty pieces skipped).
    pieces = sorted({p for p, _ in expected})
    assert [pieces.index(p) for p, _ in expected] == [k for _, k in expected]


def test_filter_tasks_read_contiguous_runs_of_the_inputs(corpus):
    cfg = CleanConfig(inputs=[str(corpus / "raw" / "**" / "*")])
    for n in (1, 2, 3, 7):
        tasks = clean_stage.filter_slices(cfg, n)
        flat = [s.index for t in tasks for s in t]
        assert flat == sorted(flat) and len(tasks) == n
        sizes = [sum(s.size for s in t) for t in tasks]
        biggest = max(s.size for t in tasks for s in t)
        assert max(sizes) <= sum(sizes) / n + biggest


def test_file_split_in_byte_ranges_gives_the_same_outputs_and_rejects(tmp_path, small_parts):
    """A big uncompressed jsonl is cut into byte ranges only with several tasks: the documents, their order,
    and a file with no usable record ('empty_file', as a task reading it whole says) stay the same."""
    planted = build_corpus(seed=5, docs_per_language=15)
    records = [r for name, rs in sorted(planted.files.items()) if ".jsonl" in name for r in rs]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a-all.jsonl").write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records))
    wrong_field = [{"id": r["id"], "body": r["text"]} for r in records]  # no `text`: every record is a reject
    (raw / "b-wrong-field.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in wrong_field))
    one, four = run_clean(str(raw / "*"), tmp_path / "one", 1), run_clean(str(raw / "*"), tmp_path / "four", 4)
    assert clean_stage.filter_slices(CleanConfig(inputs=[str(raw / "*")]), 4)[3][0].start > 0  # really split
    rejects = list(read_jsonl(one / "rejects.jsonl"))
    assert {"file": "b-wrong-field.jsonl", "line": 0, "reason": "empty_file", "detail": "no record in the file"} in rejects
    reference = files(one)
    assert files(four) == reference


def test_data_stages_publish_the_same_hashes_whatever_the_task_counts(tmp_path):
    """clean -> tokenizer -> preprocess, inline, with (clean, preprocess) tasks (1, 1) and (3, 2): the same
    output hashes (the completion records differ only in per-run facts such as the task counts)."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus, seed=1234, docs_per_language=40)
    records = {}
    for tasks in ((1, 1), (3, 2)):
        run_dir = tmp_path / f"run-{tasks[0]}-{tasks[1]}"
        cfg = tiny_run.config(run_dir, corpus, f"clean.num_tasks={tasks[0]}", f"preprocess.num_tasks={tasks[1]}")
        runner.run(cfg, ["clean", "tokenizer", "preprocess"], executor="inline")
        records[tasks] = {s: lineage.read_record(run_dir / f) for s, f in
                          (("clean", "clean"), ("tokenizer", "tokenizer"), ("preprocess", "shards"))}
    a, b = records[(1, 1)], records[(3, 2)]
    for stage in a:
        assert a[stage]["output_hash"] == b[stage]["output_hash"], stage
        assert a[stage]["inputs"] == b[stage]["inputs"], stage
    assert a["clean"]["num_tasks"]["filter"] == 1 and b["clean"]["num_tasks"]["filter"] == 3
    assert "3 tasks" in clean_stage.summary(tmp_path / "run-3-2" / "clean")


def test_gzip_parts_are_canonical_too(corpus, tmp_path, small_parts):
    from data_prep.shards import read_documents

    outs = []
    for n in (1, 2):
        cfg = RunConfig(run_dir=str(tmp_path / f"gz-{n}"))
        cfg.clean = CleanConfig(inputs=[str(corpus / "raw" / "**" / "*")], num_tasks=n, compression="gz",
                                languages=list(KEPT_LANGUAGES))
        clean_stage.run_locally(cfg, tmp_path / f"gz-{n}" / "clean", tmp_path / f"gz-{n}" / "work")
        outs.append(tmp_path / f"gz-{n}" / "clean")
    assert files(outs[0]) == files(outs[1]) and len(list(outs[0].glob("part-*.jsonl.gz"))) > 5
    stats = json.loads((outs[1] / "stats.json").read_text())
    assert sum(1 for _ in read_documents(outs[1])) == stats["totals"]["docs_out"]
