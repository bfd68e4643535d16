"""Where tasks run: in this process (`inline`), as local processes (`local`) or as Slurm jobs (`slurm`).

`local` and `slurm` go through submitit, so the same pickled task runs on a laptop and on Jean Zay.
Data steps are arrays of tasks; a training step is one job of nodes × tasks-per-node processes.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError, StageError
from pipeline.config import RunConfig

log = logging.getLogger("graine")
EXECUTORS = ("inline", "local", "slurm")


@dataclass
class Handle:
    """A submitted task; `job` is a submitit Job, or None for inline tasks (already done)."""

    label: str
    job: Any = None
    result: Any = None

    @property
    def job_id(self) -> str:
        return str(self.job.job_id) if self.job is not None else "inline"


def tail(path: Path | None, lines: int = 12) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def failure(handle: Handle, exc: BaseException) -> StageError:
    job = handle.job
    if job is None:
        return StageError(f"{handle.label} failed: {exc}")
    err = job.paths.stderr
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return StageError(f"{handle.label} failed (job {job.job_id}): {type(exc).__name__}: {first}\n"
                      f"  log: {err}\n  last lines:\n{tail(err)}")


WARNING_LINE = re.compile(r" WARNING (?:\[rank \d+\] )?graine[.\w]*: ")


def relay_warnings(handle: Handle) -> None:
    """Repeat on the console the warnings graine logged inside a finished job (a checkpoint skipped as
    damaged at resume, an epoch boundary...): otherwise they are only in the job's log file."""
    err = getattr(getattr(handle.job, "paths", None), "stderr", None)
    try:
        text = Path(err).read_text(errors="replace") if err else ""
    except OSError:
        return
    for line in dict.fromkeys(line for line in text.splitlines() if WARNING_LINE.search(line)):
        log.warning("%s (job %s): %s", handle.label, handle.job_id, WARNING_LINE.split(line, 1)[-1])


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block, then restore them (submitit's local executor hands this
    process's environment to the processes it starts)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Executor:
    name = "base"
    waits = True  # whether run() blocks until jobs finish (slurm queues a chain and returns)

    def __init__(self, cfg: RunConfig, folder: Path):
        self.cfg = cfg
        self.folder = folder

    def submit_tasks(self, fn, ranks: list[int], kind: str, after: list[Handle]) -> list[Handle]:
        raise NotImplementedError

    def submit_one(self, fn, kind: str, after: list[Handle], label: str) -> Handle:
        raise NotImplementedError

    def wait(self, handles: list[Handle]) -> list[Any]:
        return [h.result for h in handles]

    def stop(self) -> None:
        """End what this executor started on this machine (the driver was interrupted)."""


class InlineExecutor(Executor):
    """Runs every task in this process, one after the other: for debugging with pdb."""

    name = "inline"

    def submit_tasks(self, fn, ranks, kind, after):
        if kind == "gpu" and self.cfg.train.devices_per_node * self.cfg.train.num_nodes > 1:
            raise ConfigError("--executor inline runs one process; set train.devices_per_node=1 "
                              "train.num_nodes=1 or use --executor local")
        return [self._call(fn, f"task {r}", r) for r in ranks]

    def submit_one(self, fn, kind, after, label):
        return self._call(fn, label)

    @staticmethod
    def _call(fn, label, *args):
        try:
            return Handle(label, None, fn(*args))
        except StageError:
            raise
        except Exception as exc:
            raise StageError(f"{label} failed: {type(exc).__name__}: {exc}") from exc


class LocalExecutor(Executor):
    """submitit's local executor: each task is a process on this machine, at most `parallel` at once."""

    name = "local"

    def __init__(self, cfg, folder, parallel: int | None = None):
        super().__init__(cfg, folder)
        self.parallel = parallel or int(os.environ.get("GRAINE_LOCAL_PARALLEL", 0)) or len(os.sched_getaffinity(0))
        self.on_submit = lambda pids: None  # the runner records pids in the lock
        self.jobs: list = []  # every submitit job started, so that an interrupted driver can end them

    def stop(self, timeout: float = 60) -> None:
        """Interrupt every live task (submitit's local controller passes it on) and wait until all have
        ended, so that the run lock is released only when nothing of this run still writes."""
        live = [job for job in self.jobs if not job.done()]
        for job in live:
            job.cancel(check=False)
        deadline = time.time() + timeout
        while live and time.time() < deadline:
            time.sleep(0.2)
            live = [job for job in live if not job.done()]
        for job in live:
            log.warning("task job %s did not end within %g s of its interrupt; killing it", job.job_id, timeout)
            try:
                os.killpg(os.getpgid(int(job.job_id)), 9)
            except (OSError, ValueError):
                pass

    def _executor(self, tasks_per_node: int = 1):
        import submitit

        ex = submitit.LocalExecutor(folder=str(self.folder / "%j"))
        ex.update_parameters(timeout_min=60 * 24 * 30, tasks_per_node=tasks_per_node)
        return ex

    def submit_tasks(self, fn, ranks, kind, after):
        if kind == "gpu":
            world = self.cfg.train.devices_per_node * self.cfg.train.num_nodes
            from training.distributed import free_port

            # The ranks of a local job rendezvous on a port free on this machine now, chosen here and
            # handed to them in the environment (a port derived from the job id may be in use); one the
            # user exported wins.
            with environment(MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port())):
                job = self._executor(tasks_per_node=world).submit(fn, 0)
            self.jobs.append(job)
            self.on_submit([job.job_id])
            return [Handle("training job", job)]
        # The tasks share this machine: each one sizes its thread pools to its share (job_cpus), not to
        # every core (submitit's local executor hands this environment to the processes it starts).
        share = max(1, len(os.sched_getaffinity(0)) // max(1, min(self.parallel, len(ranks))))
        handles: list[Handle] = []
        running: list[Handle] = []
        with environment(GRAINE_TASK_CPUS=str(share)):
            ex = self._executor()
            # Bounded parallelism: a 64-task array should not start 64 processes on a laptop.
            for rank in ranks:
                while len(running) >= self.parallel:
                    running = self._reap(running)
                job = ex.submit(fn, rank)
                self.jobs.append(job)
                self.on_submit([job.job_id])
                h = Handle(f"task {rank}", job)
                handles.append(h)
                running.append(h)
        return handles

    def submit_one(self, fn, kind, after, label):
        job = self._executor().submit(fn)
        self.jobs.append(job)
        self.on_submit([job.job_id])
        return Handle(label, job)

    @staticmethod
    def _reap(running: list[Handle]) -> list[Handle]:
        time.sleep(0.2)
        return [h for h in running if not h.job.done()]

    def wait(self, handles):
        # Every task is waited for, failed or not: the others' work is kept and the report is whole.
        failed = []
        for h in handles:
            try:
                # A distributed job has one result per process; rank 0's speaks for the job.
                h.result = h.job.results()[0]
            except Exception as exc:  # submitit raises FailedJobError with the remote traceback
                failed.append(failure(h, exc))
            relay_warnings(h)
        if failed:
            more = f" (and {len(failed) - 1} more failed task(s))" if len(failed) > 1 else ""
            raise StageError(f"{failed[0]}{more}")
        return [h.result for h in handles]


class SlurmExecutor(Executor):
    """submitit's Slurm executor with the site profile: arrays for data steps, afterok between steps."""

    name = "slurm"
    waits = False

    def __init__(self, cfg, folder, wait: bool = False):
        super().__init__(cfg, folder)
        self.waits = wait

    def _executor(self, kind: str, num_tasks: int, after: list[Handle], name: str):
        import submitit

        from pipeline.slurm import job_for

        job = job_for(self.cfg, kind, num_tasks)
        ex = submitit.SlurmExecutor(folder=str(self.folder / "%j"), max_num_timeout=self.cfg.checkpoint.max_num_timeout)
        params = dict(job.params)  # its setup lines already export the profile's environment
        setup = list(params.pop("setup", []))
        extra = dict(params.pop("additional_parameters", {}) or {})
        deps = sorted({h.job.job_id.split("_")[0] for h in after if h.job is not None})
        if deps:
            extra["dependency"] = "afterok:" + ":".join(deps)
            extra["kill_on_invalid_dep"] = "yes"
        if kind != "cpu":
            from pipeline.slurm import TRAIN_SRUN_ARGS

            params["srun_args"] = [*TRAIN_SRUN_ARGS, *(params.get("srun_args") or [])]
        ex.update_parameters(**params, setup=setup, additional_parameters=extra, job_name=f"graine-{name}")
        return ex

    def submit_tasks(self, fn, ranks, kind, after):
        label = getattr(fn, "step", "task")
        if kind == "gpu":
            job = self._executor("gpu", 1, after, label).submit(fn, 0)
            return [Handle("training job", job)]
        if kind == "accel":  # one task on one GPU: a job of the gpu partition, not an array
            return [Handle(f"task {r}", self._executor("accel", 1, after, label).submit(fn, r)) for r in ranks]
        ex = self._executor("cpu", len(ranks), after, label)
        jobs = ex.map_array(fn, ranks)
        return [Handle(f"task {r}", j) for r, j in zip(ranks, jobs)]

    def submit_one(self, fn, kind, after, label):
        job = self._executor(kind, 1, after, label.replace(" ", "-")).submit(fn)
        return Handle(label, job)

    def wait(self, handles):
        if not self.waits:
            return [None for _ in handles]
        out = []
        for h in handles:
            try:
                h.result = h.job.results()[0]
            except Exception as exc:
                raise failure(h, exc) from None
            out.append(h.result)
        return out


def make_executor(name: str, cfg: RunConfig, folder: Path, wait: bool = False) -> Executor:
    if name == "inline":
        return InlineExecutor(cfg, folder)
    if name == "local":
        return LocalExecutor(cfg, folder)
    if name == "slurm":
        return SlurmExecutor(cfg, folder, wait=wait)
    raise ConfigError(f"unknown executor '{name}'; valid executors: {', '.join(EXECUTORS)}")
