"""The disk a checkpoint takes and whether the next saves fit: `graine status` and `checkpoint list`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import runner
from pipeline.checkpoint_cli import bytes_per_parameter, checkpoint_rows, disk_report, future_saves_peak
from pipeline.status import format_status
from tests.support import tiny_run

# Files of a checkpoint that do not grow with the model: per rank its RNG states (~14 KB), the pickles'
# own structure, graine_state.json, config.yaml and the manifest.
FIXED_BYTES_PER_RANK = 48_000


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("disk")
    tiny_run.prepare(tmp / "run", tmp / "corpus")
    return tmp


@pytest.mark.parametrize("extra", [("train.zero_stage=1",), ("train.zero_stage=3", "train.precision=bf16")])
def test_the_estimate_before_training_matches_the_checkpoint_written(prepared, tmp_path, extra):
    run = tmp_path / "run"
    shutil.copytree(prepared / "run", run)
    cfg = tiny_run.config(run, prepared / "corpus", "train.devices_per_node=1", *extra)
    before = disk_report(cfg)
    assert "estimated: 45,600 parameters x" in before, before
    estimate = 45_600 * bytes_per_parameter(cfg.train.precision, cfg.train.zero_stage)
    runner.run(cfg, ["pretrain"], executor="local")  # a process per run: a fresh process group
    rows = checkpoint_rows(cfg)
    measured = rows[-1]["bytes"]
    assert estimate <= measured <= estimate + FIXED_BYTES_PER_RANK, (estimate, measured)
    after = format_status(cfg)
    assert f"(measured on step {rows[-1]['step']})" in after and "they fit" in after, after


def test_a_full_filesystem_is_warned_about(prepared, monkeypatch):
    cfg = tiny_run.config(prepared / "run", prepared / "corpus", "checkpoint.keep_last=3")
    usage = shutil.disk_usage(prepared)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100_000))  # 100 KB left
    report = disk_report(cfg, rows=[])
    assert "WARNING: the next 3 saves (checkpoint.keep_last=3, keep_every=0) need up to" in report, report
    assert "lower checkpoint.keep_last" in report


def test_future_saves_follow_the_retention_rule(prepared):
    # keep_last=2 with two checkpoints kept: each save adds one, then the oldest goes: one size at the peak.
    cfg = tiny_run.config(prepared / "run", prepared / "corpus", "checkpoint.keep_last=2", "checkpoint.interval=4")
    assert future_saves_peak([4, 8], 10, cfg) == (2, 10)
    # No checkpoint yet: the first two saves both stay.
    assert future_saves_peak([], 10, cfg) == (2, 20)
    # A release every 12 steps: saving 12 and 16 still prunes 4 then 8.
    cfg = tiny_run.config(prepared / "run", prepared / "corpus", "checkpoint.keep_last=2", "checkpoint.interval=4",
                          "checkpoint.keep_every=12")
    assert future_saves_peak([4, 8], 10, cfg) == (2, 10)
    # Every save a release (keep_every = interval): nothing is ever deleted, both saves add up.
    cfg = tiny_run.config(prepared / "run", prepared / "corpus", "checkpoint.keep_last=2", "checkpoint.interval=4",
                          "checkpoint.keep_every=4")
    assert future_saves_peak([4, 8], 10, cfg) == (2, 20)
