"""Stages through the real single-node Slurm: arrays, afterok chains, preemption and requeue."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from core.stage import Stage, Step
from pipeline import registry, runner
from pipeline.config import load_config
from pipeline.status import stage_status
from tests.support import toy_stages, wait_for
from tests.support.slurm_jobs import release_requeued

pytestmark = pytest.mark.slurm


def count_up(ctx):
    """A resumable 'training' step: saves its progress every tick, stops cleanly on a signal."""
    state = ctx.out_dir / "progress.txt"
    done = int(state.read_text()) if state.exists() else 0
    with open(ctx.out_dir / "starts.txt", "a") as f:
        f.write(f"{os.environ.get('SLURM_RESTART_COUNT', '0')} {done}\n")
    stop = []
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    while done < int(os.environ.get("TOY_STEPS", "30")):
        time.sleep(0.5)
        done += 1
        tmp = state.with_suffix(".tmp")
        tmp.write_text(str(done))
        os.replace(tmp, state)
        if stop:
            return "preempted"
    return "done"


COUNT = Stage(name="toy-count", needs=(), sections=("train",), steps=(Step("count", count_up, kind="gpu"),),
              publish=False)


@pytest.fixture
def toys(slurm_cluster, monkeypatch):
    toy_stages.register()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # jobs cannot import tests/
    registry.register(COUNT)
    for key in ("TOY_EXEC_LOG", "TOY_DELAY", "TOY_FAIL_RANK"):
        monkeypatch.delenv(key, raising=False)
    yield
    for name in ("toy-parts", "toy-sum", "toy-count"):
        registry.unregister(name)


def slurm_cfg(run_dir, *overrides):
    return load_config(None, [f"run_dir={run_dir}", "cluster.profile=local-cluster", "clean.num_tasks=3",
                              "train.devices_per_node=1", *overrides])


def jobs_of(run_dir, stage):
    return json.loads((Path(run_dir) / ".work" / stage / "jobs.json").read_text())["jobs"]


def test_stage_runs_as_a_slurm_array(toys, tmp_path):
    cfg = slurm_cfg(tmp_path / "run")
    runner.run(cfg, ["toy-parts"], executor="slurm", wait=True)
    assert len((tmp_path / "run" / "toy-parts" / "all.txt").read_text().splitlines()) == 300
    record = json.loads((tmp_path / "run" / "toy-parts" / "_COMPLETE.json").read_text())
    write = record["jobs"]["jobs"]["write"]
    assert record["jobs"]["executor"] == "slurm"
    assert len({j.split("_")[0] for j in write.values()}) == 1 and len(write) == 3  # one array of three
    ref = tmp_path / "ref"
    runner.run(slurm_cfg(ref), ["toy-parts"], executor="inline")
    assert (ref / "toy-parts" / "all.txt").read_bytes() == (tmp_path / "run" / "toy-parts" / "all.txt").read_bytes()


def test_chain_is_queued_at_once_with_afterok(toys, tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_DELAY", "2")
    run = tmp_path / "run"
    cfg = slurm_cfg(run)
    runner.run(cfg, ["toy-parts", "toy-sum"], executor="slurm")  # returns once queued
    write = jobs_of(run, "toy-parts")["write"]
    assert {j.rsplit("_", 1)[1] for j in write.values()} == {"0", "1", "2"}  # one array, three elements
    publish_parts = jobs_of(run, "toy-parts")["publish"]["0"]
    (sum_job,) = jobs_of(run, "toy-sum")["sum"].values()
    info = subprocess.run(["scontrol", "show", "job", sum_job], capture_output=True, text=True).stdout
    assert f"afterok:{publish_parts}" in info
    assert (run / ".graine.lock").exists()  # held by the chain while it runs
    wait_for(lambda: stage_status(cfg, "toy-sum").state == "complete", 180, "the chain to finish")
    assert (run / "toy-sum" / "count.txt").read_text().split()[0] == "300"
    wait_for(lambda: not (run / ".graine.lock").exists(), 30, "the chain's last job to release the lock")


def test_preempted_job_requeues_through_submitit_and_resumes(toys, tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_STEPS", "30")
    run = tmp_path / "run"
    cfg = slurm_cfg(run)
    runner.run(cfg, ["toy-count"], executor="slurm")
    (job,) = jobs_of(run, "toy-count")["count"].values()
    progress = run / "toy-count" / "progress.txt"
    wait_for(lambda: progress.exists() and int(progress.read_text()) >= 3, 120, "the job to make progress")
    # What Slurm sends before a time limit (--signal USR2@delay) and on preemption.
    subprocess.run(["scancel", "--signal=USR2", job], check=True)

    def restarts() -> int:
        # Slurm holds a requeued job back for a while; release_requeued lets it start soon.
        out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        return release_requeued(job, out, 0)
    wait_for(lambda: restarts() >= 1, 120, "submitit to requeue the job")
    wait_for(lambda: restarts() >= 0 and stage_status(cfg, "toy-count").state == "complete", 300,
             "the requeued job to finish")
    starts = [line.split() for line in (run / "toy-count" / "starts.txt").read_text().splitlines()]
    assert starts[0] == ["0", "0"]
    assert starts[1][0] == "1" and int(starts[1][1]) >= 3  # the second start resumed, not restarted
    assert int(progress.read_text()) == 30


def test_status_of_a_running_slurm_array_counts_its_elements_and_their_rates(slurm_cluster, tmp_path, monkeypatch):
    """A real Slurm array of 6 tasks on at most 4 CPUs: once task 0 is done and the others wait at 200 docs,
    `graine status` counts it done, the RUNNING elements running (their squeue state) and the rest pending,
    with the running tasks' summed rate; then the array finishes and the stage is complete."""
    from core.progress import INTERVAL_ENV, read_progress
    from pipeline.task import StagePaths
    from tests.support import progress_stage

    go = tmp_path / "go"
    monkeypatch.setenv("TOY_PROGRESS_GO", str(go))  # submitit hands the submitting environment to the jobs
    monkeypatch.setenv(INTERVAL_ENV, "0.1")
    progress_stage.register()
    run = tmp_path / "run"
    cfg = slurm_cfg(run, "clean.num_tasks=6")
    paths = StagePaths(run, "toy-progress")
    try:
        runner.run(cfg, ["toy-progress"], executor="slurm")

        def one_done_and_the_running_waiting() -> bool:
            if not paths.marker("count", 0).exists():
                return False
            files = [read_progress(p) for p in paths.progress_dir("count").glob("*.json")]
            waiting = [f for f in files if f and not f.get("finished") and f["done"] >= 150]
            return len(waiting) >= 1 and stage_status(cfg, "toy-progress").state == "running"

        wait_for(one_done_and_the_running_waiting, 180, "task 0 to finish and the running tasks to wait at 200")
        st = stage_status(cfg, "toy-progress")
        got = re.match(r"count: 1/6 tasks done, (\d) running.*?, (\d) pending; [\d,.]+ docs/s, [\d.]+ MB/s, "
                       r"ETA \w+; jobs ", st.detail)
        assert got, st.detail
        running, pending = map(int, got.groups())
        assert running + pending == 5 and running >= 1 and pending >= 1, st.detail  # 2 CPUs a node
        assert "running" in st.detail.split("jobs ", 1)[1] and "pending" in st.detail.split("jobs ", 1)[1], st.detail
    finally:
        go.write_text("")  # whatever failed, the tasks finish on their own
        try:
            wait_for(lambda: stage_status(cfg, "toy-progress").state == "complete", 240, "the array to finish")
        finally:
            progress_stage.unregister()
    assert (run / "toy-progress" / "count.txt").read_text() == "6000\n"
