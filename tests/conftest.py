"""Shared fixtures. Each fixture keeps to its section; add new ones below the existing sections."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# CPU runs compare losses bit for bit across processes, local jobs and Slurm jobs: every one of them must
# use the same number of threads (the site profiles export OMP_NUM_THREADS=1 to jobs), on the CPU backend.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------------------------- real Slurm
SLURM_CONF = Path("/etc/slurm/slurm.conf")
SECOND_NODE = "n2"  # slurm/local-cluster/start.sh NODES=2


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The local Slurm of slurm/local-cluster, started if needed; returns its partition name.

    A 2-node cluster (start.sh NODES=2, as CI runs) is kept as it is: -N1 jobs may land on either node.
    Otherwise the single-node one is started. Without Slurm installed the test is skipped, unless
    GRAINE_REQUIRE_SLURM=1 (set by CI), where it fails. GRAINE_SLURM_INSTALL=1 installs it first (apt-get, root).
    """
    return _start_local_slurm(nodes=2 if _configured_nodes() == 2 else 1)


@pytest.fixture(scope="session")
def slurm_two_nodes() -> str:
    """The 2-node local Slurm (this host and n2, a network namespace on it), started or switched to if needed;
    returns its partition name. Skipped or failed without Slurm as `slurm_cluster` is."""
    return _start_local_slurm(nodes=2)


SLURM_FIXTURES = {"slurm_cluster", "slurm_two_nodes"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the group markers (its hook has no order)
def pytest_collection_modifyitems(config, items) -> None:
    """Every test that uses the local Slurm goes first and into one xdist group: under `make test`
    (`-n 2 --dist loadgroup`) one worker runs them in order, since they share one cluster that a test may
    switch between 1 and 2 nodes, while the other worker runs the rest beside their waits on jobs and
    walltimes. Without xdist the group marker does nothing and only the order changes."""
    uses_slurm = [item for item in items
                  if item.get_closest_marker("slurm") or SLURM_FIXTURES & set(getattr(item, "fixturenames", ()))]
    for item in uses_slurm:
        item.add_marker(pytest.mark.xdist_group("slurm"))
    chosen = set(map(id, uses_slurm))
    items[:] = uses_slurm + [item for item in items if id(item) not in chosen]


def _configured_nodes() -> int:
    """How many nodes the slurm.conf written by start.sh declares (1 when there is none)."""
    try:
        text = SLURM_CONF.read_text()
    except OSError:
        return 1
    return 2 if f"NodeName={SECOND_NODE} " in text else 1


def _start_local_slurm(nodes: int) -> str:
    scripts = REPO / "slurm" / "local-cluster"
    required = os.environ.get("GRAINE_REQUIRE_SLURM") == "1"
    if os.environ.get("GRAINE_SLURM_INSTALL") == "1":
        _run_script(scripts / "install.sh", timeout=900)
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        message = ("Slurm is not installed: run `make slurm-up` (or slurm/local-cluster/install.sh then "
                   "start.sh), or set GRAINE_SLURM_INSTALL=1 to install it from the tests")
        if required:
            pytest.fail(f"GRAINE_REQUIRE_SLURM=1 but {message}")
        pytest.skip(message)
    _run_script(scripts / "start.sh", timeout=180, env={"NODES": str(nodes)})
    return "debug"


def _run_script(path: Path, timeout: int, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        pytest.fail(f"{path} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
