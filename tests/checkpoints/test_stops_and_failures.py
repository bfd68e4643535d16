"""Clean stops (signal, time budget, kill switch) and failed saves, with real ranks and DeepSpeed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from checkpoints import manifest
from checkpoints.layout import read_latest
from tests.support.train_harness import launch, losses, start, worker_pids


def wait_for_step(run_dir: Path, proc, step: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while max(losses(run_dir), default=0) < step:
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() < deadline, f"the run did not reach step {step} in time"
        time.sleep(0.05)


def finish(proc) -> tuple[str, str]:
    output, _ = proc.communicate(timeout=90)
    return output, proc.returncode


def result_of(run_dir: Path) -> str:
    from tests.support.train_harness import read_result

    return read_result(run_dir)


def test_signal_on_one_rank_saves_and_returns_preempted(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, ["train.zero_stage=1"], faults={"step_delay": 0.2})
    wait_for_step(run_dir, proc, 5)
    os.kill(worker_pids(proc)[0], signal.SIGUSR1)  # one rank only: the others learn it by all-reduce
    output, code = finish(proc)
    assert code == 0, output[-4000:]
    assert result_of(run_dir) == "preempted"
    stopped_at = max(losses(run_dir))
    assert 5 <= stopped_at < 16
    assert read_latest(run_dir / "checkpoints") == f"global_step{stopped_at}"
    assert manifest.verify(run_dir / "checkpoints" / f"global_step{stopped_at}") is None
    result, output = launch(run_dir, ["train.zero_stage=1"])  # the requeued job
    assert result == "done", output[-4000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'global_step{stopped_at}'}" in output


def test_kill_switch_then_time_budget(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, ["train.zero_stage=1"], faults={"step_delay": 0.2})
    wait_for_step(run_dir, proc, 3)
    (run_dir / "KILL").touch()
    output, code = finish(proc)
    assert code == 0, output[-4000:]
    assert result_of(run_dir) == "stopped"
    stopped_at = max(losses(run_dir))
    assert read_latest(run_dir / "checkpoints") == f"global_step{stopped_at}"
    assert "kill switch" in output

    (run_dir / "KILL").unlink()
    # The budget counts from the start of the job (as BLOOM's --exit-duration-in-mins), so 6 ms are
    # spent before the first step: it resumes, stops at once, and asks to be requeued.
    result, output = launch(run_dir, ["train.zero_stage=1", "train.exit_duration_min=0.0001"])
    assert result == "time_budget", output[-4000:]
    assert "train.exit_duration_min=0.0001 reached" in output
    assert max(losses(run_dir)) == stopped_at and read_latest(run_dir / "checkpoints") == f"global_step{stopped_at}"


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # Rank 1 runs out of space while hashing the files of step 8, after DeepSpeed wrote its part.
    result, output = launch(run_dir, ["train.zero_stage=2"], faults={"save_fail": "1:hash:8"})
    assert result.startswith("error: CheckpointError"), output[-4000:]
    assert "saving checkpoint global_step8" in result and "rank 1: OSError" in result
    assert "No space left on device" in result
    assert "the previous checkpoint global_step4 is still valid" in result
    ckpt = run_dir / "checkpoints"
    assert read_latest(ckpt) == "global_step4"
    assert manifest.verify(ckpt / "global_step4") is None
    assert not (ckpt / "global_step8").exists() and not list(ckpt.glob(".tmp-*"))


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_keeps_the_previous_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints"
    # One checkpoint of this model is ~0.35 MB: the first fits, the second fills the disk part-way.
    if not mount_tmpfs(ckpt, "600k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        result, output = launch(run_dir, ["train.zero_stage=1", "checkpoint.keep_last=1"])
        assert result.startswith("error: CheckpointError"), output[-4000:]
        assert "No space left on device" in result
        assert read_latest(ckpt) == "global_step4"
        assert manifest.verify(ckpt / "global_step4") is None
        assert not list(ckpt.glob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(ckpt)], check=False)
