"""A job across the two nodes of the local 2-node Slurm (slurm/local-cluster/start.sh NODES=2): the host and
n2, a network namespace on it reached over a veth pair. Checks what a multi-node training job relies on:
one task per node, MASTER_ADDR from the job's node list, and gloo collectives between the nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slurm
TIMEOUT_S = 50

# Rank and world size from the step, as training/distributed.py takes them; the rendezvous from the batch script.
ALL_REDUCE = """\
import datetime, json, os, socket, sys
import torch
import torch.distributed as dist

rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=30))
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
hosts = [None] * world
dist.all_gather_object(hosts, socket.gethostname())
dist.destroy_process_group()
with open(os.path.join(sys.argv[1], f"rank-{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world": world, "sum": value.item(), "host": socket.gethostname(),
               "hosts": hosts, "master": os.environ["MASTER_ADDR"]}, f)
"""

BATCH = """\
#!/bin/bash
#SBATCH --job-name=graine-two-nodes
#SBATCH --partition={partition}
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=2
#SBATCH --output={out}/slurm-%j.out
set -euo pipefail
export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export OMP_NUM_THREADS=1
srun --kill-on-bad-exit=1 {python} {out}/all_reduce.py {out}
"""


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "UNKNOWN"


def test_gloo_all_reduce_across_two_nodes(slurm_two_nodes, tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    (out / "all_reduce.py").write_text(ALL_REDUCE)
    script = out / "job.sh"
    script.write_text(BATCH.format(partition=slurm_two_nodes, out=out, python=sys.executable))
    job_id = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                            check=True).stdout.strip().split(";")[0]
    deadline = time.monotonic() + TIMEOUT_S
    state = job_state(job_id)
    while state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "UNKNOWN"):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False)
            break
        time.sleep(0.5)
        state = job_state(job_id)
    log = next(out.glob("slurm-*.out"), None)
    log_text = log.read_text() if log else "(no log)"
    assert state == "COMPLETED", f"job {job_id} is {state} after up to {TIMEOUT_S} s; log:\n{log_text}"

    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1], log_text
    assert all(r["world"] == 2 and r["sum"] == 3.0 for r in ranks), ranks  # 1 + 2, on both ranks
    hosts = [r["host"] for r in ranks]
    assert len(set(hosts)) == 2, f"both ranks ran on {hosts[0]}: the job did not span two nodes"
    assert all(r["hosts"] == hosts for r in ranks), ranks  # all_gather agrees with where each rank ran
    assert ranks[0]["master"] == hosts[0], f"rank 0 runs on {hosts[0]}, MASTER_ADDR is {ranks[0]['master']}"
