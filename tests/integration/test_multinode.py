"""Training across the two nodes of the local 2-node Slurm (slurm/local-cluster, NODES=2), by both launch
paths a user has: `graine run --executor slurm` (submitit) and the script `graine sbatch` renders, submitted
with plain `sbatch`. One rank per node, gloo between the host and the network namespace n2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from core.errors import LockError
from pipeline import runner
from pipeline.status import stage_status
from tests.support import env_faults_pythonpath, tiny_run
from tests.support.slurm_jobs import (
    FAILED,
    job_of,
    reference_losses,
    release_requeued,
    run_copy,
    show,
    state,
    wait_complete,
)
from tests.support.train_harness import losses

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
TWO_NODES = ("cluster.profile=local-cluster", "train.num_nodes=2", "train.devices_per_node=1")


def job_logs(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs" / "jobs" / "pretrain").rglob("*.err")))


def test_submitit_job_on_two_nodes_equals_one_node_with_two_tasks(slurm_two_nodes, prepared):
    want = reference_losses(prepared)  # 1 node, 2 processes
    run_dir = run_copy(prepared, "two-nodes")
    cfg = tiny_run.config(run_dir, prepared / "corpus", *TWO_NODES, "cluster.gpu={time: 5}")
    runner.run(cfg, ["pretrain"], executor="slurm")
    job = job_of(run_dir)
    assert "NumNodes=2" in show(job)
    wait_complete(cfg, job, timeout=300)
    logs = job_logs(run_dir)
    assert re.search(r"rank 1 of 2 \(local 0 of 1, node 1\), gloo, rendezvous \S+:\d+ \(slurm\)", logs), logs[-3000:]
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 17)) and got == want  # bitwise: same ranks, other placement


def render(run_dir: Path, corpus: Path, stage: str, *extra: str) -> Path:
    """The config as a file beside the run, and the script `graine sbatch` prints for it."""
    cfg = tiny_run.config(run_dir, corpus)
    (run_dir.parent / f"{run_dir.name}.yaml").write_text(cfg.to_yaml())
    out = subprocess.run([str(REPO / ".venv" / "bin" / "graine"), "sbatch", stage, "-c", f"{run_dir.name}.yaml",
                          *extra], cwd=run_dir.parent, capture_output=True, text=True, check=True).stdout
    script = run_dir.parent / f"{run_dir.name}-{stage}.sbatch"
    script.write_text(out)
    return script


def sbatch(script: Path, **env: str) -> str:
    """Submit as a user does (sbatch passes the environment to the job). graine need not be on the PATH:
    the script calls it through the interpreter that rendered it."""
    environ = {**os.environ, "PATH": ":".join(p for p in os.environ["PATH"].split(":") if ".venv" not in p), **env}
    return subprocess.run(["sbatch", "--parsable", script.name], cwd=script.parent, env=environ, capture_output=True,
                          text=True, check=True).stdout.strip().split(";")[0]


def wait_job(job: str, out: Path, timeout: float) -> int:
    """Until the job completes (releasing requeues); returns the restarts seen."""
    deadline, restarts = time.time() + timeout, 0
    while (current := state(job)) not in ("COMPLETED", "GONE"):
        info = show(job)
        restarts = release_requeued(job, info, restarts)
        if re.search(FAILED, info) or time.time() > deadline:
            subprocess.run(["scancel", job], check=False)
            log = out.read_text(errors="replace")[-4000:] if out.exists() else "(no log)"
            pytest.fail(f"job {job} ended {current}, not COMPLETED:\n{info}\n{log}")
        time.sleep(2)
    return restarts


def test_rendered_script_on_two_nodes_saves_requeues_itself_and_finishes_bitwise(slurm_two_nodes, prepared):
    steps = 60
    extra = (f"train.train_tokens={steps * 4 * 32}", "checkpoint.interval=10", f"train.decay_tokens={steps * 4 * 32}")
    want = reference_losses(prepared, *extra)
    run_dir = run_copy(prepared, "rendered")
    # 60 steps x 1.5 s of pause = 90 s of work, and a 2-minute walltime with USR1 60 s before it:
    # one job cannot finish, whenever Slurm sends the signal.
    script = render(run_dir, prepared / "corpus", "pretrain", *extra, *TWO_NODES, "cluster.gpu={time: 2}")
    text = script.read_text()
    assert "#SBATCH --nodes=2" in text
    assert 'srun --kill-on-bad-exit=1 --wait=60 "$GRAINE_PY" -m pipeline.cli task pretrain train' in text
    assert "MASTER_ADDR=" not in text.replace("# ", "")  # derived inside each task, from Slurm
    # The pause comes from the test shim (tests/support/env_faults), first on the job's PYTHONPATH.
    job = sbatch(script, GRAINE_TEST_STEP_DELAY="1.5", PYTHONPATH=env_faults_pythonpath())
    out = run_dir.parent / f"graine-pretrain-{job}.out"
    restarts = wait_job(job, out, timeout=600)
    log = out.read_text(errors="replace")
    assert restarts >= 1 and "USR1: walltime close" in log, log[-3000:]
    assert "saving and exiting for requeue" in log and "resumed from" in log
    result = json.loads((run_dir / "pretrain" / "result.json").read_text())
    assert result["result"] == "done" and result["step"] == steps
    got = losses(run_dir)
    assert sorted(got) == list(range(1, steps + 1)) and got == want  # every step, bitwise, across the requeue


def test_rendered_clean_script_runs(slurm_two_nodes, prepared, tmp_path):
    run_dir = tmp_path / "clean-run"
    run_dir.mkdir()
    # 3 tasks, but a node of the local cluster gives 2: the allocation asks for 2 and runs 3 job steps in it.
    script = render(run_dir, prepared / "corpus", "clean", "cluster.profile=local-cluster", "clean.num_tasks=3")
    text = script.read_text()
    assert "#SBATCH --ntasks=2" in text and "run_step filter 3" in text and "srun --ntasks=1 --exact" in text
    job = sbatch(script)
    wait_job(job, run_dir.parent / f"graine-clean-{job}.out", timeout=300)
    record = json.loads((run_dir / "clean" / "_COMPLETE.json").read_text())
    assert record["num_tasks"]["filter"] == 3
    # The same documents kept and rejected for the same reasons as the inline run of one task.
    stats = json.loads((run_dir / "clean" / "stats.json").read_text())
    reference = json.loads((prepared / "data" / "clean" / "stats.json").read_text())
    assert stats == reference


def rank_on(job: str, node: str) -> tuple[int, list[int]]:
    """(rank, its processes) of the job's task on `node` (both "nodes" share one PID namespace)."""
    found: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
            cmdline = (proc / "cmdline").read_text()
        except (OSError, ValueError):
            continue
        program = Path(cmdline.split("\0")[0]).name
        # The task's own interpreter, not srun or the batch shell (whose command lines name python too).
        if env.get("SLURM_JOB_ID") == job and env.get("SLURMD_NODENAME") == node and program.startswith("python") \
                and env.get("SLURM_STEP_ID", "").isdigit():
            found.setdefault(int(env["SLURM_PROCID"]), []).append(int(proc.name))
    assert len(found) == 1, f"expected one rank of job {job} on {node}, found {found}"
    return next(iter(found.items()))


def test_a_rank_killed_on_the_second_node_ends_the_job_then_a_rerun_resumes(slurm_two_nodes, prepared, monkeypatch):
    want = reference_losses(prepared)
    run_dir = run_copy(prepared, "killed")
    cfg = tiny_run.config(run_dir, prepared / "corpus", *TWO_NODES, "cluster.gpu={time: 10}")
    monkeypatch.setenv("GRAINE_TEST_STEP_DELAY", "1.0")  # applied by the shim first on the jobs' PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", env_faults_pythonpath())
    runner.run(cfg, ["pretrain"], executor="slurm")
    job = job_of(run_dir)
    deadline = time.time() + 180
    while not (run_dir / "checkpoints" / "latest").exists():  # a checkpoint to resume from
        assert time.time() < deadline and state(job) in ("PENDING", "RUNNING", "CONFIGURING"), show(job)
        time.sleep(1)
    rank, victims = rank_on(job, "n2")
    killed = time.time()
    for pid in victims:
        os.kill(pid, 9)
    while state(job) in ("RUNNING", "COMPLETING", "CONFIGURING"):
        assert time.time() - killed < 120, f"the job outlived its killed rank by 2 minutes:\n{show(job)}"
        time.sleep(1)
    assert state(job) == "FAILED", show(job)
    assert re.search(rf"n2: task {rank}: Killed", job_logs(run_dir)), job_logs(run_dir)[-3000:]
    assert stage_status(cfg, "pretrain").state == "failed"

    monkeypatch.delenv("GRAINE_TEST_STEP_DELAY")
    # The chain's publish job holds the run directory until Slurm cancels it (its dependency failed),
    # at its next scheduling pass; the same command is refused until then, naming the jobs.
    while True:
        try:
            runner.run(cfg, ["pretrain"], executor="slurm")
            break
        except LockError as exc:
            assert time.time() - killed < 240, f"the failed chain kept the run directory locked: {exc}"
            time.sleep(5)
    wait_complete(cfg, job_of(run_dir), timeout=300)
    assert "resumed from" in job_logs(run_dir)
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 17)) and got == want
