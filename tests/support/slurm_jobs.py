"""Helpers of the real-Slurm training tests: run directories, job states, waiting with requeues released."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipeline import runner
from pipeline.status import stage_status
from tests.support import tiny_run
from tests.support.train_harness import losses


def run_copy(prepared: Path, name: str) -> Path:
    """A run directory with the prepared data stages (same shards: same sample order)."""
    shutil.copytree(prepared / "data", prepared / name)
    return prepared / name


def job_of(run_dir: Path) -> str:
    jobs = json.loads((run_dir / ".work" / "pretrain" / "jobs.json").read_text())["jobs"]
    (job,) = jobs["train"].values()
    return job


def show(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout


def state(job: str) -> str:
    m = re.search(r"JobState=(\w+)", show(job))
    return m.group(1) if m else "GONE"


FAILED = r"JobState=(FAILED|CANCELLED|NODE_FAIL|OUT_OF_MEMORY|TIMEOUT|BOOT_FAIL|DEADLINE)"


# When each (job, restart) was first seen pending: a requeued job is let start only some seconds after
# its previous run ended. Started at once, slurmctld can place it while the nodes still hold the revoked
# credential of that run, and kills it ("Killing non-startable batch job: Job credential revoked").
_pending_since: dict[tuple[str, int], float] = {}
REQUEUE_SETTLE_S = 5.0


def release_requeued(job: str, info: str, restarts: int) -> int:
    """Slurm holds a requeued job back (BeginTime) for a while; start it soon. Returns the restarts seen."""
    if m := re.search(r"Restarts=(\d+)", info):
        restarts = max(restarts, int(m.group(1)))
    if "JobState=PENDING" in info and restarts:
        since = _pending_since.setdefault((job, restarts), time.time())
        if time.time() - since >= REQUEUE_SETTLE_S:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
    return restarts


def wait_complete(cfg, job: str, timeout: float, release: bool = True) -> int:
    """Wait for the stage's publication; requeued jobs are let start at once. Returns the restarts seen."""
    deadline, restarts = time.time() + timeout, 0
    while stage_status(cfg, "pretrain").state != "complete":
        info = show(job)
        restarts = release_requeued(job, info, restarts) if release else restarts
        if re.search(FAILED, info) or time.time() > deadline:
            subprocess.run(["scancel", job], check=False)
            logs = sorted(Path(cfg.run_dir, "logs", "jobs", "pretrain").rglob("*.err"))
            tail = logs[-1].read_text()[-3000:] if logs else "(no log)"
            pytest.fail(f"pretrain job {job} did not complete:\n{info}\n{tail}")
        time.sleep(2)
    return restarts


def reference_losses(prepared: Path, *extra: str) -> dict[int, float]:
    """Losses of a local 1-node, 2-process run of tiny_run's config with `extra` overrides."""
    run_dir = run_copy(prepared, f"ref-{len(list(prepared.glob('ref-*')))}")
    runner.run(tiny_run.config(run_dir, prepared / "corpus", *extra), ["pretrain"], executor="local")
    return losses(run_dir)
