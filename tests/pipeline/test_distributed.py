"""The training job's launch environment and process group (training.distributed), and the checks
made before a training job is submitted.

The process-group contract on GPUs cannot run here; it is pinned with torch's CUDA checks and
`init_process_group` replaced, so that all-reducing a CPU tensor on an NCCL-only group (the bug that
crashed every multi-GPU run at its first step) cannot come back unnoticed on a CPU-only CI.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.errors import ConfigError, StageError
from core.stage import TaskContext
from pipeline.cli import main
from pipeline.config import load_config
from training import distributed, pretrain
from training.distributed import Launch, expand_hostlist, launch_env, port_for, tasks_on_node

# What srun sets in task 3 of a 2-node step with 2 tasks per node (plus what sbatch sets in the job).
SRUN_TASK = {
    "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
    "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_JOB_NODELIST": "jzxh[012-013]", "SLURM_STEP_NODELIST": "jzxh[012-013]",
}


# ---------------------------------------------------------------------------------- Slurm variables
@pytest.mark.parametrize("text, hosts", [
    ("n2", ["n2"]),
    ("vm,n2", ["vm", "n2"]),
    ("jzxh[001-003]", ["jzxh001", "jzxh002", "jzxh003"]),
    ("jzxh[009-010,012],r1i0n[7-8]", ["jzxh009", "jzxh010", "jzxh012", "r1i0n7", "r1i0n8"]),
    ("a[1-2]-ib[0-1]", ["a1-ib0", "a1-ib1", "a2-ib0", "a2-ib1"]),
])
def test_slurm_host_lists_expand(text, hosts):
    assert expand_hostlist(text) == hosts


def test_unreadable_host_lists_are_refused():
    with pytest.raises(ValueError, match="unbalanced"):
        expand_hostlist("n[1-2")
    with pytest.raises(ValueError, match="cannot read"):
        expand_hostlist("n[a-b]")


def test_tasks_per_node_reads_slurm_repetitions():
    assert [tasks_on_node("2(x3),1", n) for n in range(4)] == [2, 2, 2, 1]
    assert tasks_on_node("4", 0) == 4


def test_plain_srun_task_gets_its_place_and_the_first_node_as_rendezvous():
    launch = launch_env(SRUN_TASK)  # no SUBMITIT_EXECUTOR: a rendered sbatch script's plain srun
    assert launch == Launch(rank=3, local_rank=1, world_size=4, local_world_size=2, node_rank=1,
                            master_addr="jzxh012", master_port=port_for("4242"), source="slurm")
    assert 10000 <= launch.master_port < 30000


def test_submitit_slurm_task_gets_the_same_environment():
    assert launch_env({**SRUN_TASK, "SUBMITIT_EXECUTOR": "slurm"}).env() == launch_env(SRUN_TASK).env()


def test_port_is_stable_across_requeues_and_differs_between_jobs():
    # A requeued job keeps its id (and SLURM_RESTART_COUNT grows): it rendezvouses on the same port.
    again = launch_env({**SRUN_TASK, "SLURM_RESTART_COUNT": "2"})
    assert again.master_port == launch_env(SRUN_TASK).master_port
    assert launch_env({**SRUN_TASK, "SLURM_JOB_ID": "4243"}).master_port != again.master_port


def test_values_set_by_the_user_win():
    # The old rendered scripts exported MASTER_ADDR/MASTER_PORT themselves; that must keep working.
    user = launch_env({**SRUN_TASK, "MASTER_ADDR": "ib-jzxh012", "MASTER_PORT": "29500"})
    assert (user.master_addr, user.master_port, user.rank) == ("ib-jzxh012", 29500, 3)
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234"}
    assert launch_env({**SRUN_TASK, **torchrun}).source == "user"
    assert launch_env(torchrun).world_size == 2


def test_submitit_local_and_a_lone_process():
    local = launch_env({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
                        "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_ID": "777"})
    assert (local.rank, local.world_size, local.master_addr, local.master_port) == (1, 2, "127.0.0.1", port_for("777"))
    alone = launch_env({})
    assert (alone.rank, alone.world_size, alone.source) == (0, 1, "single")


def test_inconsistent_environment_is_a_config_error():
    with pytest.raises(ConfigError, match="RANK=4 is outside 0..3"):
        launch_env({**SRUN_TASK, "RANK": "4"})
    with pytest.raises(ConfigError, match="not readable"):
        launch_env({**SRUN_TASK, "MASTER_PORT": "http"})


# ------------------------------------------------------------------------------- process group (GPU)
class FakeGPUs:
    """torch's CUDA checks answering as a node with 4 GPUs; init_process_group recorded, not run."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, dict]] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: self.calls.append(("set_device", {"device": d})))
        monkeypatch.setattr(dist, "is_initialized", lambda: False)
        monkeypatch.setattr(dist, "init_process_group", lambda **kw: self.calls.append(("init_process_group", kw)))
        monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)


def test_gpu_group_has_a_cpu_backend_beside_nccl_and_binds_the_local_gpu(monkeypatch):
    gpus = FakeGPUs(monkeypatch)
    launch = launch_env(SRUN_TASK)
    for key, value in launch.env().items():
        monkeypatch.setenv(key, value)
    device = distributed.init_process_group(launch, timeout_min=12)
    assert device == torch.device("cuda", 1)
    (_, kwargs), = [c for c in gpus.calls if c[0] == "init_process_group"]
    assert kwargs["backend"] == "cpu:gloo,cuda:nccl"  # CPU tensors (flags, objects) have a backend
    assert kwargs["device_id"] == torch.device("cuda", 1)  # the local rank's GPU
    assert (kwargs["rank"], kwargs["world_size"], kwargs["timeout"]) == (3, 4, timedelta(minutes=12))
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"  # a dead peer aborts instead of hanging
    assert gpus.calls[0] == ("set_device", {"device": torch.device("cuda", 1)})


def test_a_task_that_cannot_see_its_gpu_is_told_why(monkeypatch):
    FakeGPUs(monkeypatch)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="local rank 1 but this task sees 1 GPU"):
        distributed.init_process_group(launch_env(SRUN_TASK), timeout_min=1)


def test_cpu_group_is_gloo(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    assert distributed.init_process_group(launch_env(SRUN_TASK), timeout_min=5) == torch.device("cpu")
    assert calls[0]["backend"] == "gloo" and "device_id" not in calls[0]


def test_pretrain_creates_the_group_before_data_and_deepspeed(monkeypatch, tmp_path):
    """train_step: the two-backend group exists before the sample index is built and before
    deepspeed.initialize (which then adopts it instead of creating an NCCL-only one)."""
    gpus = FakeGPUs(monkeypatch)
    for key, value in launch_env(SRUN_TASK).env().items():
        monkeypatch.setenv(key, value)

    def build_data(ctx):
        gpus.calls.append(("build_data", {}))
        raise RuntimeError("stop here")

    monkeypatch.setattr(pretrain, "build_data", build_data)
    monkeypatch.setattr("deepspeed.initialize", lambda **kw: pytest.fail("DeepSpeed before the group"), raising=False)
    cfg = load_config(None, [f"run_dir={tmp_path}", "train.dist_timeout_min=7"])
    ctx = TaskContext(cfg, "pretrain", "train", 3, 4, out_dir=tmp_path / "pretrain", work_dir=tmp_path / "w")
    with pytest.raises(RuntimeError, match="stop here"):
        pretrain.train_step(ctx)
    names = [c[0] for c in gpus.calls]
    assert names.index("init_process_group") < names.index("build_data")
    kwargs = dict(gpus.calls)["init_process_group"]
    assert kwargs["backend"] == "cpu:gloo,cuda:nccl" and kwargs["timeout"] == timedelta(minutes=7)


# ---------------------------------------------------------------------- rank 0 builds, others map
def _zero_first_worker(rank: int, world: int, store_dir: str, fail: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_dir}/store", rank=rank, world_size=world)
    out = Path(store_dir)
    try:
        with distributed.rank_zero_first("building a cache"):
            if rank == 0:
                if fail:
                    raise OSError("disk full")
                np.save(out / "cache.npy", np.arange(5))
            seen = np.load(out / "cache.npy", mmap_mode="r")
            (out / f"rank{rank}").write_text(str(int(seen.sum())))
    except StageError as exc:
        (out / f"rank{rank}").write_text(f"error: {exc}")
    except OSError:
        (out / f"rank{rank}").write_text("raised")
    dist.destroy_process_group()


@pytest.mark.parametrize("fail", [False, True])
def test_rank_zero_builds_first_and_its_failure_reaches_every_rank(tmp_path, fail):
    mp.start_processes(_zero_first_worker, args=(3, str(tmp_path), fail), nprocs=3, start_method="spawn")
    results = [(tmp_path / f"rank{r}").read_text() for r in range(3)]
    if fail:
        assert results[0] == "raised"
        assert all(r == "error: rank 0 failed while building a cache: OSError: disk full" for r in results[1:])
    else:
        assert results == ["10", "10", "10"]


# ------------------------------------------------------------------------- before submission (exit 2)
@pytest.mark.parametrize("overrides, message", [
    # 2 nodes x 1 task x micro-batch 2 = 4 does not divide a global batch of 6
    (["train.num_nodes=2", "train.micro_batch_size=2", "train.global_batch_size=6"], "global batch of 6"),
    (["train.rampup.start=2", "train.rampup.increment=2", "train.rampup.samples=64", "train.micro_batch_size=2",
      "train.num_nodes=2"], "train.rampup.start/increment"),
    (["train.precision=fp16"], "fp16 needs a GPU"),
])
def test_slurm_dry_run_refuses_what_would_fail_in_the_job(tmp_path, capsys, overrides, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ncluster:\n  profile: local-cluster\n")
    code = main(["run", "pretrain", "-c", str(cfg), "--executor", "slurm", "--dry-run", *overrides])
    assert code == 2, capsys.readouterr()
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_gpu_profile_shape_is_what_is_checked(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ncluster:\n  profile: jean-zay-h100\n  account: abc@h100\n")
    base = ["run", "pretrain", "-c", str(cfg), "--executor", "slurm", "--dry-run"]
    # 4 GPUs per node x 2 nodes x micro-batch 4 = 32 ranks' worth; a global batch of 48 does not split
    assert main([*base, "train.num_nodes=2", "train.global_batch_size=48"]) == 2
    assert "on 8 ranks" in capsys.readouterr().err
    assert main([*base, "train.num_nodes=2", "train.global_batch_size=64"]) == 0
    capsys.readouterr()
    assert main([*base, "train.optimizer=cpu_adam", "train.zero_stage=0", "train.global_batch_size=16"]) == 2
    assert "train.zero_stage >= 1" in capsys.readouterr().err
    assert main(["sbatch", "pretrain", "-c", str(cfg), "train.precision=fp16", "train.global_batch_size=16"]) == 0
    assert main(["sbatch", "pretrain", "-c", str(cfg), "train.global_batch_size=6"]) == 2


# ------------------------------------------------------------------------------ CPUs of a task's job
def test_thread_pools_follow_the_job_not_the_machine(tmp_path, monkeypatch):
    """Slurm's --cpus-per-task reaches the task (SRUN_CPUS_PER_TASK for srun >= 22.05, OMP_NUM_THREADS),
    and local tasks running side by side each get their share of this machine."""
    from data_prep.tokenizer import job_cpus
    from pipeline.executors import LocalExecutor
    from pipeline.slurm import job_for

    cfg = load_config(None, ["cluster.profile=jean-zay-h100", "cluster.account=abc@h100"])
    setup = job_for(cfg, "cpu", 4).params["setup"]
    assert '[ -z "${SLURM_CPUS_PER_TASK:-}" ] || export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"' in setup
    assert any(line.startswith('export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"') for line in setup)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    monkeypatch.setenv("GRAINE_TASK_CPUS", "3")
    assert job_cpus() == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "10")
    assert job_cpus() == 10  # Slurm's allocation wins
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.delenv("GRAINE_TASK_CPUS")

    def report(rank):
        return job_cpus()

    ex = LocalExecutor(load_config(None, [f"run_dir={tmp_path}"]), tmp_path / "logs", parallel=2)
    got = ex.wait(ex.submit_tasks(report, [0, 1], "cpu", []))
    assert got == [max(1, len(os.sched_getaffinity(0)) // 2)] * 2
    assert "GRAINE_TASK_CPUS" not in os.environ  # the driver's own environment is left as it was
