"""`graine diff RUN_A RUN_B` on real runs: two that differ only in one filter threshold diverge at clean (the
config key named, the first differing file and document, then shards and losses downstream); two that
differ only in task counts do not diverge."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core import lineage
from data_prep.synthetic import write_corpus
from pipeline import runner
from pipeline.cli import main
from tests.support import tiny_run

# 4 steps of 4 samples x 32 tokens on one process, so the test stays short. Training runs as a local job: a
# second DeepSpeed engine in one process (inline) does not work.
TRAIN = ("train.devices_per_node=1", "train.train_tokens=512", "train.decay_tokens=512", "train.warmup_tokens=128",
         "checkpoint.interval=2")
THRESHOLD = "clean.filters={en: {min_words: 60}}"  # the default table says 20 for en


def run(base: Path, name: str, corpus: Path, *extra: str, train: bool = True) -> Path:
    run_dir = base / name
    cfg = tiny_run.config(run_dir, corpus, *TRAIN, *extra)
    runner.run(cfg, ["clean", "tokenizer", "preprocess"], executor="inline")
    if train:
        runner.run(cfg, ["pretrain"], executor="local")
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("diff")
    write_corpus(base / "corpus", seed=1234, docs_per_language=40)
    return {"a": run(base, "a", base / "corpus"),
            "threshold": run(base, "threshold", base / "corpus", THRESHOLD),
            "tasks": run(base, "tasks", base / "corpus", "clean.num_tasks=3", "preprocess.num_tasks=2", train=False)}


def sections(text: str) -> dict[str, str]:
    """The report's lines grouped by stage (a stage's header line starts with its name and a colon)."""
    out, current = {}, ""
    for line in text.splitlines()[1:]:
        if not line.startswith(" ") and not line.startswith("=>"):
            current = line.split(":", 1)[0]
        out[current] = out.get(current, "") + line + "\n"
    return out


def test_one_filter_threshold_diverges_at_clean(runs, capsys):
    assert main(["diff", str(runs["a"]), str(runs["threshold"])]) == 1
    text = capsys.readouterr().out
    parts = sections(text)
    assert "=> the runs diverge at clean: its config differs: clean.filters.en.min_words" in text
    clean = parts["clean"]
    assert "DIFFERENT outputs" in clean and "config clean.filters.en.min_words: (unset) -> 60" in clean
    assert "input raw files: same" in clean
    assert "first differing file: " in clean
    assert "first differing document in part-00000.jsonl.zst: document " in clean
    # Downstream: other inputs, other outputs; the datasets and the losses say where.
    assert "DIFFERENT outputs" in parts["tokenizer"] and "config: same" in parts["tokenizer"]
    assert "input clean: " in parts["tokenizer"] and " vs " in parts["tokenizer"]
    assert "first differing document of dataset " in parts["preprocess"]
    assert "losses: first step whose loss differs: 1 (" in parts["pretrain"]


def test_first_differing_document_is_the_first_one_dropped(runs):
    """The document named in the report is the first en document the higher threshold drops."""
    from data_prep.jsonl import read_jsonl
    from pipeline.diff import first_jsonl_difference

    a = [r["id"] for r in read_jsonl(runs["a"] / "clean" / "part-00000.jsonl.zst")]
    b = [r["id"] for r in read_jsonl(runs["threshold"] / "clean" / "part-00000.jsonl.zst")]
    first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert set(b) < set(a) and a[first] not in b
    detail = first_jsonl_difference(runs["a"] / "clean" / "part-00000.jsonl.zst",
                                    runs["threshold"] / "clean" / "part-00000.jsonl.zst")
    assert detail == f"document {first + 1} (line {first + 1}): id {a[first]!r} vs id {b[first]!r}"


def test_task_counts_do_not_diverge(runs, tmp_path, capsys):
    assert main(["diff", str(runs["a"]), str(runs["a"])]) == 0
    assert "losses: same training losses at all 4 logged steps (bit for bit)" in capsys.readouterr().out
    data_only = tmp_path / "a-data"  # run "tasks" has no training: compare the data stages
    shutil.copytree(runs["a"], data_only, ignore=shutil.ignore_patterns("pretrain", "checkpoints", "logs"))
    assert main(["diff", str(data_only), str(runs["tasks"])]) == 0
    text = capsys.readouterr().out
    assert "=> no divergence: clean, tokenizer, preprocess published with identical outputs" in text
    assert "config clean.num_tasks: 1 -> 3  (a task count: does not change outputs)" in text
    assert "config preprocess.num_tasks: 1 -> 2  (a task count: does not change outputs)" in text


def test_same_config_other_outputs_is_called_non_determinism(runs, tmp_path, capsys):
    """A published file changed behind the record's back (as a non-deterministic kernel would): the
    report says that inputs, config and software are the same."""
    copy = tmp_path / "copy"
    shutil.copytree(runs["a"], copy)
    record = lineage.read_record(copy / "tokenizer")
    record["output_hash"] = "0" * 16
    record["files"]["report.json"]["sha256"] = "0" * 64
    (copy / "tokenizer" / lineage.RECORD).write_text(__import__("json").dumps(record))
    assert main(["diff", str(runs["a"]), str(copy)]) == 1
    text = capsys.readouterr().out
    assert "=> the runs diverge at tokenizer: same inputs, same config and same software" in text
    assert "first differing file: report.json" in text


def test_not_run_directories_exit_2(tmp_path, capsys):
    assert main(["diff", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["diff", str(tmp_path), str(tmp_path)]) == 2
    assert "holds a published stage" in capsys.readouterr().err
