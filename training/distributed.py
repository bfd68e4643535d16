"""The training job's processes: who they are (from Slurm itself) and the process group they share.

One launch environment for every path: under submitit's Slurm executor and under a plain `srun` in a
rendered sbatch script alike, RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR and
MASTER_PORT are derived from the SLURM_* variables of the job step; under submitit's local executor from
its SUBMITIT_LOCAL_* variables; otherwise the process is a world of one. A value the user exported
already wins. MASTER_PORT comes from the job id, so every rank agrees on it without talking and a
requeued job (same id) rendezvouses on the same port.

graine owns the process group: it is created before DeepSpeed sees it, with a CPU backend (gloo) beside
NCCL on GPUs, so that the small CPU reductions of the training loop and of the checkpointer work on any
device, with `device_id` bound to the local GPU, a timeout from `train.dist_timeout_min`, and NCCL's
asynchronous error handling on, so a dead peer ends the job instead of hanging it until the timeout.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from core.errors import ConfigError, StageError

log = logging.getLogger("graine.distributed")

ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
# Below Linux's default ephemeral range (32768-60999), which outgoing connections take their ports from.
PORT_BASE, PORT_SPAN = 10000, 20000
SOURCE_KEY = "GRAINE_LAUNCH_SOURCE"  # where export_launch_env found the values it exported


@dataclass(frozen=True)
class Launch:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    source: str  # "user", "slurm", "submitit-local" or "single"

    def env(self) -> dict[str, str]:
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world_size),
                "LOCAL_WORLD_SIZE": str(self.local_world_size), "NODE_RANK": str(self.node_rank),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


# ------------------------------------------------------------------------------------- Slurm hostlists
def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list as names: 'jzxh[001-002,010],n2' -> jzxh001, jzxh002, jzxh010, n2."""
    hosts: list[str] = []
    for item in _split_top_level(text.strip()):
        parts = re.split(r"(\[[^\]]*\])", item)
        choices = []
        for part in parts:
            if part.startswith("["):
                choices.append(_expand_range(part[1:-1], text))
            elif part:
                choices.append([part])
        hosts += ["".join(p) for p in itertools.product(*choices)]
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    if depth != 0:
        raise ValueError(f"unbalanced brackets in Slurm host list {text!r}")
    return [i for i in items + [current] if i]


def _expand_range(spec: str, whole: str) -> list[str]:
    out = []
    for piece in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", piece)
        if not m:
            raise ValueError(f"cannot read {piece!r} in Slurm host list {whole!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        width = len(lo)
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


def tasks_on_node(tasks_per_node: str, node: int) -> int:
    """SLURM_STEP_TASKS_PER_NODE ('2(x3),1') for one node index: the tasks that node runs."""
    counts: list[int] = []
    for item in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not m:
            raise ValueError(f"cannot read SLURM_STEP_TASKS_PER_NODE={tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node]


def port_for(job_id: str) -> int:
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


# --------------------------------------------------------------------------------- launch environment
def launch_env(environ: dict[str, str] | None = None) -> Launch:
    """This process's rank and rendezvous, from Slurm, submitit's local executor, or a world of one.

    Any of ENV_KEYS already in the environment wins over the derived value.
    """
    env = dict(os.environ if environ is None else environ)
    if env.get("SUBMITIT_EXECUTOR") == "local" and "SUBMITIT_LOCAL_GLOBALID" in env:
        derived, source = _from_submitit_local(env), "submitit-local"
    elif "SLURM_PROCID" in env and "SLURM_JOB_ID" in env and ("SLURM_STEP_ID" in env or "SLURM_NTASKS" in env):
        derived, source = _from_slurm(env), "slurm"
    else:
        derived = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "NODE_RANK": "0",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()) if "MASTER_PORT" not in env else ""}
        source = "single"
    if all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):
        source = env.get(SOURCE_KEY) or "user"  # exported by export_launch_env, or set by the user
    merged = {k: env.get(k) or derived.get(k, "") for k in ENV_KEYS}
    merged["LOCAL_RANK"] = merged["LOCAL_RANK"] or merged["RANK"]
    merged["LOCAL_WORLD_SIZE"] = merged["LOCAL_WORLD_SIZE"] or merged["WORLD_SIZE"]
    merged["NODE_RANK"] = merged["NODE_RANK"] or "0"
    try:
        launch = Launch(int(merged["RANK"]), int(merged["LOCAL_RANK"]), int(merged["WORLD_SIZE"]),
                        int(merged["LOCAL_WORLD_SIZE"]), int(merged["NODE_RANK"]), merged["MASTER_ADDR"],
                        int(merged["MASTER_PORT"]), source)
    except ValueError as exc:
        raise ConfigError(f"the launch environment is not readable ({exc}): "
                          + ", ".join(f"{k}={merged[k]!r}" for k in ENV_KEYS)) from None
    if not 0 <= launch.rank < launch.world_size:
        raise ConfigError(f"RANK={launch.rank} is outside 0..{launch.world_size - 1} (WORLD_SIZE={launch.world_size})")
    return launch


def _from_slurm(env: dict[str, str]) -> dict[str, str]:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    hosts = expand_hostlist(nodelist) if nodelist else []
    node = int(env.get("SLURM_NODEID", "0"))
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    local_world = tasks_on_node(per_node, node) if per_node else int(env.get("SLURM_NTASKS", "1"))
    return {"RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "WORLD_SIZE": env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS", "1"),
            "LOCAL_WORLD_SIZE": str(local_world), "NODE_RANK": str(node),
            "MASTER_ADDR": hosts[0] if hosts else socket.gethostname(),
            "MASTER_PORT": str(port_for(env["SLURM_JOB_ID"]))}


def _from_submitit_local(env: dict[str, str]) -> dict[str, str]:
    world = env.get("SUBMITIT_LOCAL_NTASKS", "1")
    return {"RANK": env["SUBMITIT_LOCAL_GLOBALID"], "LOCAL_RANK": env.get("SUBMITIT_LOCAL_LOCALID", "0"),
            "WORLD_SIZE": world, "LOCAL_WORLD_SIZE": world, "NODE_RANK": env.get("SUBMITIT_LOCAL_NODEID", "0"),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port_for(env.get("SUBMITIT_LOCAL_JOB_ID", "0")))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_launch_env() -> Launch:
    """Write this process's launch environment into os.environ (for torch and DeepSpeed) and return it."""
    launch = launch_env()
    os.environ.update(launch.env())
    os.environ[SOURCE_KEY] = launch.source
    return launch


# ------------------------------------------------------------------------------------- process group
def training_device(launch: Launch) -> torch.device:
    """cuda:LOCAL_RANK on GPUs, else the CPU. A task that sees fewer GPUs than its local rank is an error."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise ConfigError(
            f"local rank {launch.local_rank} but this task sees {count} GPU(s) (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): every task of a node must see all the node's "
            "GPUs; do not bind one GPU per task (no --gpu-bind=single / --gpus-per-task)")
    return torch.device("cuda", launch.local_rank)


def backend_for(device: torch.device) -> str:
    """gloo beside NCCL on GPUs: CPU tensors (flags, object collectives) go through gloo."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_process_group(launch: Launch, timeout_min: float) -> torch.device:
    """Create the job's process group (idempotent) and return this rank's device."""
    device = training_device(launch)
    if dist.is_initialized():
        return device
    host = f"[{launch.master_addr}]" if ":" in launch.master_addr else launch.master_addr
    kwargs: dict = {"backend": backend_for(device), "rank": launch.rank, "world_size": launch.world_size,
                    "timeout": timedelta(minutes=timeout_min), "init_method": f"tcp://{host}:{launch.master_port}"}
    if device.type == "cuda":
        # 1 = tear down: a failed or timed-out collective aborts this process, so srun's
        # --kill-on-bad-exit ends the whole job instead of every other rank waiting on a dead peer.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(device)
        if launch.world_size > 1:
            # Binds NCCL's communicator to this GPU eagerly. Not for a world of one: torch then builds
            # every later new_group() by ncclCommSplit, which has no peer to split with (DeepSpeed #8248).
            kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    log.info("process group: rank %d of %d (local %d of %d, node %d), %s, rendezvous %s:%d (%s), timeout %g min",
             launch.rank, launch.world_size, launch.local_rank, launch.local_world_size, launch.node_rank,
             kwargs["backend"], launch.master_addr, launch.master_port, launch.source, timeout_min)
    return device


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rank_and_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def rank_zero_first(what: str):
    """Rank 0 runs the block first (to build and publish a shared cache); the others run it after.

    If rank 0 fails, every rank raises (naming rank 0's error) instead of waiting for it forever.
    """
    rank, world = rank_and_world()
    if world == 1:
        yield
        return
    if rank == 0:
        try:
            yield
        except BaseException as exc:
            dist.broadcast_object_list([f"{type(exc).__name__}: {exc}"], src=0)
            raise
        dist.broadcast_object_list([None], src=0)
        return
    box = [None]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise StageError(f"rank 0 failed while {what}: {box[0]}")
    yield
