"""Real jobs on the local single-node Slurm, submitted by submitit with the resources job_for() gives."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from pipeline import slurm
from pipeline.config import load_config

pytestmark = pytest.mark.slurm
TIMEOUT_S = 60
# pytest imports this file as a top-level module the job cannot import: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def local_executor(folder: Path, kind: str = "cpu", num_tasks: int = 1) -> submitit.SlurmExecutor:
    job = slurm.job_for(load_config(None, ["cluster.profile=local-cluster"]), kind, num_tasks=num_tasks)
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(job_name="graine-test", **{**job.params, "time": 2})
    return executor


def result(job: submitit.Job, timeout: float = TIMEOUT_S):
    """The job's result, or a failure naming its state and log instead of waiting forever."""
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", str(job.job_id)], check=False)
            state = subprocess.run(["scontrol", "show", "job", str(job.job_id)], capture_output=True, text=True)
            pytest.fail(f"job {job.job_id} not done after {timeout} s:\n{state.stdout}\nlog: {job.paths.stdout}")
        time.sleep(1)
    return job.result()


def where_am_i(x: int) -> dict:
    return {"double": 2 * x, "job": os.environ.get("SLURM_JOB_ID"), "offline": os.environ.get("HF_HUB_OFFLINE")}


def write_part(folder: str, i: int) -> int:
    Path(folder, f"part-{i}").write_text(str(i * i))
    return i


def sum_parts(folder: str) -> int:
    parts = sorted(Path(folder).glob("part-*"))
    assert len(parts) == 3, f"dependent job started before the array finished: {parts}"
    return sum(int(p.read_text()) for p in parts)


def test_submitit_job_runs_with_profile_parameters(slurm_cluster, tmp_path):
    job = local_executor(tmp_path / "logs").submit(where_am_i, 21)
    out = result(job)
    assert out["double"] == 42
    assert out["job"] == str(job.job_id)
    assert out["offline"] == "1"  # the profile's environment reached the job through setup


def test_array_then_afterok_dependency(slurm_cluster, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    executor = local_executor(tmp_path / "logs", num_tasks=3)
    array = executor.map_array(write_part, [str(parts)] * 3, [1, 2, 3])
    array_id = array[0].job_id.split("_")[0]
    # afterok on the array id waits for every element.
    executor.update_parameters(dependency=f"afterok:{array_id}")
    total = executor.submit(sum_parts, str(parts))
    try:
        assert [result(j) for j in array] == [1, 2, 3]
        assert result(total) == 1 + 4 + 9
    finally:
        # A failed parent leaves the child pending forever (DependencyNeverSatisfied): never leave it queued.
        subprocess.run(["scancel", array_id, str(total.job_id)], check=False)
