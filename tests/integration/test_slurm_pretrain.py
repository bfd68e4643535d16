"""The real `pretrain` stage on the local Slurm: 2 tasks on one node, and a 2-minute time limit that it
outlasts, so it reaches its target step only through requeues (submitit's checkpoint mechanism, from
the USR2 Slurm sends before the limit). Losses equal an uninterrupted local run's, step for step."""

from __future__ import annotations

import json

import pytest

from pipeline import runner
from tests.support import env_faults_pythonpath, tiny_run
from tests.support.slurm_jobs import job_of, reference_losses, run_copy, show, wait_complete
from tests.support.train_harness import losses

pytestmark = pytest.mark.slurm


def test_two_tasks_on_one_node(slurm_cluster, prepared):
    want = reference_losses(prepared)
    run_dir = run_copy(prepared, "two-tasks")
    cfg = tiny_run.config(run_dir, prepared / "corpus", "cluster.profile=local-cluster", "cluster.gpu={time: 5}")
    assert cfg.train.devices_per_node == 2
    runner.run(cfg, ["pretrain"], executor="slurm")
    job = job_of(run_dir)
    assert "NumTasks=2" in show(job) or "NumCPUs=2" in show(job)
    wait_complete(cfg, job, timeout=240)
    state = json.loads((run_dir / "checkpoints" / "global_step16" / "graine_state.json").read_text())
    assert state["world_size"] == 2 and len(list((run_dir / "checkpoints" / "global_step16" / "rng").iterdir())) == 2
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 17)) and got == want  # bitwise: same ranks, same order
    # The release of its last checkpoint, as a CPU job of the same cluster.
    runner.run(cfg, ["export"], executor="slurm", wait=True)
    record = json.loads((run_dir / "export" / "global_step16" / "graine_export.json").read_text())
    assert record["step"] == 16 and (run_dir / "export" / "global_step16" / "model.safetensors").is_file()
    assert json.loads((run_dir / "export" / "_COMPLETE.json").read_text())["jobs"]["executor"] == "slurm"
    # Its evaluation, as one job of the gpu partition (1 node, 1 task; no GPU on this cluster).
    runner.run(cfg, ["evaluate"], executor="slurm", wait=True)
    (eval_job,) = json.loads((run_dir / "eval" / "_COMPLETE.json").read_text())["jobs"]["jobs"]["evaluate"].values()
    assert "NumNodes=1" in show(eval_job) and "NumTasks=1" in show(eval_job), show(eval_job)
    perplexity = json.loads((run_dir / "eval" / "global_step16" / "perplexity.json").read_text())
    assert perplexity["datasets"] and all(d["perplexity"] > 1 for d in perplexity["datasets"].values())


@pytest.mark.slow
def test_two_minute_limit_reaches_the_target_through_requeues(slurm_cluster, prepared, monkeypatch):
    steps = 100
    extra = (f"train.train_tokens={steps * 4 * 32}", "checkpoint.interval=10", "train.decay_tokens=12800")
    want = reference_losses(prepared, *extra)
    assert sorted(want) == list(range(1, steps + 1))

    run_dir = run_copy(prepared, "requeued")
    cfg = tiny_run.config(run_dir, prepared / "corpus", *extra, "cluster.profile=local-cluster",
                          "cluster.gpu={time: 2}", "checkpoint.max_num_timeout=5")
    # 100 steps x 1.25 s of pause = 125 s of work: one 2-minute job cannot finish it, whenever the signal
    # comes. (Measured: Slurm sends USR2@60 some 25-35 s into each job, so it takes about 4 jobs, ~4 min.)
    # The pause comes from the test shim (tests/support/env_faults), first on the jobs' PYTHONPATH; submitit
    # passes this environment to the jobs.
    monkeypatch.setenv("GRAINE_TEST_STEP_DELAY", "1.25")
    monkeypatch.setenv("PYTHONPATH", env_faults_pythonpath())
    runner.run(cfg, ["pretrain"], executor="slurm")
    job = job_of(run_dir)
    assert "TimeLimit=00:02:00" in show(job)
    restarts = wait_complete(cfg, job, timeout=600)
    assert restarts >= 1, "the job finished without a requeue: the test did not exercise the time limit"

    result = json.loads((run_dir / "pretrain" / "result.json").read_text())
    assert result["result"] == "done" and result["step"] == steps
    logs = "".join(p.read_text() for p in (run_dir / "logs" / "jobs" / "pretrain").rglob("*.err"))
    assert "requeuing through submitit" in logs and "resumed from" in logs
    got = losses(run_dir)
    assert sorted(got) == list(range(1, steps + 1))
    assert got == want  # every step, bitwise, across the requeues
