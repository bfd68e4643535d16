"""Reproducibility end to end: the same corpus and config through clean -> tokenizer -> preprocess -> a short
pretrain, with other task counts and executors, publishes the same output hashes at every stage and trains
with bit-identical losses.

Legs (clean.num_tasks, preprocess.num_tasks, executor):
- (1, 1) inline for the data stages. The inline executor runs one process, so its training runs as a local
  job of 2 ranks: every leg trains on 2 ranks (train.devices_per_node=2), and only runs with the same number
  of ranks can be compared bit for bit (the gradient all-reduce sums in another order otherwise);
- (3, 2) on the local executor (processes here);
- (2, 3) on the local Slurm cluster (arrays, the training job as 2 tasks), waited for.

`graine diff` is the check a user runs: it exits 0 between any two legs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core import lineage
from pipeline import runner
from pipeline.cli import main
from pipeline.diff import train_losses
from tests.support import tiny_run

pytestmark = pytest.mark.slow
STAGES = ["clean", "tokenizer", "preprocess", "pretrain"]
FOLDERS = {"clean": "clean", "tokenizer": "tokenizer", "preprocess": "shards", "pretrain": "pretrain"}
STEPS = 16  # tiny_run: 16 steps of 4 samples x 32 tokens, 2 ranks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from data_prep import synthetic

    out = tmp_path_factory.mktemp("repro") / "corpus"
    synthetic.main([str(out), "--docs-per-language", "40"])
    return out


def config(run_dir: Path, corpus: Path, clean_tasks: int, preprocess_tasks: int, *extra: str):
    cfg = tiny_run.config(run_dir, corpus, f"clean.num_tasks={clean_tasks}",
                          f"preprocess.num_tasks={preprocess_tasks}", *extra)
    assert cfg.train.num_nodes * cfg.train.devices_per_node == 2
    return cfg


def outcome(run_dir: Path) -> dict:
    """What must not depend on task counts or executors: each stage's inputs and outputs, and the losses."""
    records = {s: lineage.read_record(run_dir / FOLDERS[s]) for s in STAGES}
    assert all(records.values()), {s: r is None for s, r in records.items()}
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return {"output_hash": {s: r["output_hash"] for s, r in records.items()},
            "inputs": {s: r["inputs"] for s, r in records.items()},
            "losses": losses}


@pytest.fixture(scope="module")
def inline_leg(corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("repro-inline") / "run"
    cfg = config(run_dir, corpus, 1, 1)
    runner.run(cfg, STAGES[:-1], executor="inline")
    runner.run(cfg, ["pretrain"], executor="local")  # 2 ranks: inline runs one process
    return run_dir


def check_same(reference: Path, other: Path, capsys) -> None:
    want, got = outcome(reference), outcome(other)
    assert got["output_hash"] == want["output_hash"]
    assert got["inputs"] == want["inputs"]
    assert got["losses"] == want["losses"]  # bit for bit: floats compared exactly
    # The user's check, as the README gives it.
    assert main(["diff", str(reference), str(other)]) == 0
    text = capsys.readouterr().out
    assert "=> no divergence: clean, tokenizer, preprocess, pretrain published with identical outputs" in text
    assert f"same training losses at all {STEPS} logged steps (bit for bit)" in text


def test_task_counts_and_local_executor(corpus, inline_leg, tmp_path, capsys):
    run_dir = tmp_path / "run"
    runner.run(config(run_dir, corpus, 3, 2), STAGES, executor="local")
    assert lineage.read_record(run_dir / "clean")["num_tasks"]["filter"] == 3
    check_same(inline_leg, run_dir, capsys)


@pytest.mark.slurm
def test_local_slurm(slurm_cluster, corpus, inline_leg, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = config(run_dir, corpus, 2, 3, "cluster.profile=local-cluster", "cluster.gpu={time: 5}")
    runner.run(cfg, STAGES, executor="slurm", wait=True)
    record = lineage.read_record(run_dir / "clean")
    assert record["jobs"]["executor"] == "slurm" and record["num_tasks"]["filter"] == 2
    check_same(inline_leg, run_dir, capsys)
