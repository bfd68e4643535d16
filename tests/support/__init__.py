"""Helpers shared by the tests and the benchmarks, imported as `from tests.support import tiny_run` or
`from tests.support.train_harness import launch`.

- train_harness, hooked_worker: the real `pretrain` step in torch.distributed.run processes (their ranks run
  `python -m tests.support.train_harness` with the repository root on PYTHONPATH); train_faults: the test
  faults given to it as hooks.
- tiny_run: a real run directory in seconds; slurm_jobs: run directories and job states of the Slurm tests.
- toy_stages: two small stages for the orchestration tests.
- env_faults/: a `sitecustomize` for jobs that run graine's own CLI (see `env_faults_pythonpath`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV_FAULTS = Path(__file__).resolve().parent / "env_faults"


def env_faults_pythonpath() -> str:
    """The PYTHONPATH of a job that runs graine's CLI with GRAINE_TEST_* faults in its environment: the
    shim's folder first (Python then imports its `sitecustomize`), then the repository root, from which the
    shim imports tests.support.train_faults."""
    return os.pathsep.join([str(ENV_FAULTS), str(REPO)])


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0) -> None:
    """Return once `predicate()` is true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
