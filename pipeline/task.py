"""What runs inside a job: one task of a step, or the publication of a stage.

These objects are pickled by submitit and executed in job processes (a local subprocess, a Slurm array
element, or one rank of a distributed training job). A task writes a completion marker last, so a task
with a marker is never redone and a task without one is redone from scratch.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import lineage
from core.fs import fsync_dir, write_atomic
from core.lineage import check_inputs
from core.signals import catch_stop_signals, release_stop_signals
from core.stage import Stage, TaskContext
from pipeline import registry
from pipeline.config import RunConfig, build
from pipeline.lock import release_chain
from pipeline.registry import folder_of

log = logging.getLogger("graine")

# Set once this process ran a distributed step: it then leaves through os._exit (gloo's shutdown race).
ran_distributed = False

# Results of a training step that ask for the job to be requeued rather than finished.
REQUEUE = ("preempted", "time_budget")


def setup_logging(rank: int | None = None) -> None:
    """Logging for a job process; inline tasks keep the caller's configuration."""
    if not (os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SLURM_JOB_ID") or os.environ.get("RANK")):
        return
    tag = f"[rank {rank}] " if rank is not None else ""
    logging.basicConfig(level=logging.INFO, force=True, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s", datefmt="%H:%M:%S")


def upstream_folders(stage: Stage) -> dict[str, str]:
    """{upstream stage: the folder it publishes under the run directory}."""
    return {name: folder_of(name) for name in stage.needs}


@dataclass
class StagePaths:
    run_dir: Path
    stage: str

    @property
    def published(self) -> Path:
        return self.run_dir / folder_of(self.stage)

    @property
    def work(self) -> Path:
        return self.run_dir / ".work" / self.stage

    @property
    def staging(self) -> Path:
        return self.work / "out"

    @property
    def scratch(self) -> Path:
        return self.work / "scratch"

    @property
    def jobs_file(self) -> Path:
        return self.work / "jobs.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.work / "fingerprint.json"

    def read_fingerprint(self) -> dict:
        """{"key", "started"} of the attempt the work folder's parts belong to; {} when none is recorded."""
        try:
            stamp = json.loads(self.fingerprint_file.read_text())
        except (OSError, ValueError):
            return {}
        return stamp if isinstance(stamp, dict) else {}

    def write_fingerprint(self, key: str) -> None:
        """Record that the work folder's parts belong to the attempt `key` (lineage.Fingerprint.key), started now."""
        write_atomic(self.fingerprint_file, json.dumps({"key": key, "started": time.time()}))

    def progress_dir(self, step: str) -> Path:
        """Where the tasks of `step` write their progress files (core/progress.py), one per rank: in the
        work folder, so never part of what is published or hashed."""
        return self.work / "progress" / step

    @property
    def kept_progress(self) -> Path:
        """Where the publication keeps the tasks' last progress files: beside the stage's job logs."""
        return self.logs() / "progress"

    def marker(self, step: str, rank: int) -> Path:
        return self.work / "completions" / step / f"{rank:05d}"

    def logs(self) -> Path:
        return self.run_dir / "logs" / "jobs" / self.stage


def apply_run_dir_mode(cfg: RunConfig) -> None:
    """Create the run directory with cfg.run_dir_mode and make this process create nothing more open.

    The umask is what keeps others from writing submitit's job pickles (code that jobs run) and outputs;
    job processes call this too (Slurm passes the submitter's umask as well).
    """
    mode = int(cfg.run_dir_mode, 8)
    os.umask(0o777 & ~mode)
    run_dir = Path(cfg.run_dir)
    if not run_dir.exists():
        run_dir.mkdir(parents=True, mode=mode)
        run_dir.chmod(mode)  # mkdir's mode is filtered by the umask of the moment


@dataclass
class TaskRunner:
    """One task of one step. Called with the task's rank (array index); distributed steps ignore it."""

    cfg: dict
    stage: Stage
    step: str
    num_tasks: int
    registry: dict[str, Stage] = field(default_factory=registry.registered)

    def _step(self):
        return next(s for s in self.stage.steps if s.name == self.step)

    def __call__(self, rank: int = 0) -> str:
        for extra in self.registry.values():
            registry.register(extra)
        step = self._step()
        cfg: RunConfig = build(RunConfig, self.cfg, "")
        apply_run_dir_mode(cfg)
        if step.kind == "gpu":
            return self._run_distributed()
        folders = upstream_folders(self.stage)
        check_inputs({name: Path(cfg.run_dir) / f for name, f in folders.items()}, full=cfg.verify_inputs == "full")
        paths = StagePaths(Path(cfg.run_dir), self.stage.name)
        setup_logging(rank)
        marker = paths.marker(self.step, rank)
        if marker.exists():
            log.info("%s/%s task %d already complete (%s); skipping", self.stage.name, self.step, rank, marker)
            return "done"
        ctx = TaskContext(cfg, self.stage.name, self.step, rank, self.num_tasks,
                          out_dir=paths.staging if self.stage.publish else paths.published, work_dir=paths.scratch,
                          folders=folders, progress_dir=paths.progress_dir(self.step))
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        step.run(ctx)
        write_atomic(marker, json.dumps({"host": socket.gethostname(), "seconds": round(time.time() - t0, 3),
                                         "slurm_job_id": os.environ.get("SLURM_JOB_ID")}))
        return "done"

    def _run_distributed(self) -> str:
        # submitit's own handler for its timeout signal: kept so that, once training has saved, the
        # requeue goes through submitit's checkpoint mechanism (checkpoint() below, scontrol requeue).
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        previous = catch_stop_signals()
        from training.distributed import ENV_KEYS, SOURCE_KEY, export_launch_env

        global ran_distributed
        ran_distributed = True
        # An inline run trains in the caller's process: its launch environment must not outlive it.
        saved_env = {k: os.environ.get(k) for k in (*ENV_KEYS, SOURCE_KEY)}
        launch = export_launch_env()
        rank, world = launch.rank, launch.world_size
        setup_logging(rank)
        cfg: RunConfig = build(RunConfig, self.cfg, "")
        paths = StagePaths(Path(cfg.run_dir), self.stage.name)
        ctx = TaskContext(cfg, self.stage.name, self.step, rank, world,
                          out_dir=paths.published, work_dir=paths.scratch, folders=upstream_folders(self.stage),
                          progress_dir=paths.progress_dir(self.step) if rank == 0 else None)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            result = self._step().run(ctx) or "done"
        finally:
            release_stop_signals(previous)
            if not os.environ.get("SUBMITIT_EXECUTOR"):
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        if result == "done" and rank == 0:
            write_atomic(paths.marker(self.step, 0), json.dumps({"host": socket.gethostname()}))
        if result in REQUEUE and rank == 0 and os.environ.get("SLURM_JOB_ID") and callable(submitit_handler):
            log.info("training saved after %s; requeuing through submitit", result)
            submitit_handler(signal.SIGUSR2, None)  # checkpoints this callable, requeues, exits
        # gloo's worker thread can abort the interpreter at exit (docs/DEEPSPEED_CPU.md): once submitit has
        # written this task's result, leave without running interpreter shutdown. (Inline runs leave
        # through the CLI's own os._exit instead, with its exit code.)
        if os.environ.get("SUBMITIT_EXECUTOR"):
            atexit.register(_hard_exit)
        return result

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _hard_exit() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@dataclass
class Publisher:
    """Publishes a stage once every task of every step is complete; the last one of a chain unlocks."""

    cfg: dict
    stage: Stage
    release_chain: str = ""
    registry: dict[str, Stage] = field(default_factory=registry.registered)

    def __call__(self) -> str:
        for extra in self.registry.values():
            registry.register(extra)
        setup_logging()
        cfg: RunConfig = build(RunConfig, self.cfg, "")
        apply_run_dir_mode(cfg)
        try:
            return publish(cfg, self.stage)
        finally:
            if self.release_chain:
                release_chain(Path(cfg.run_dir), self.release_chain)


def publish(cfg: RunConfig, stage: Stage) -> str:
    paths = StagePaths(Path(cfg.run_dir), stage.name)
    started = _started(paths)
    fp = lineage.fingerprint(cfg, stage, registry.folder_of)
    if not stage.publish:
        folder = paths.published
        write_atomic(folder / lineage.RESOLVED_CONFIG, cfg.to_yaml())
        extra = stage.record(folder) if stage.record is not None else {}
        lineage.write_record(folder, stage, fp, started, {"num_tasks": _num_tasks(paths), "jobs": _jobs(paths),
                                                          **extra})
        _keep_progress(paths)
        shutil.rmtree(paths.work, ignore_errors=True)
        return str(folder)
    staging = paths.staging
    staging.mkdir(parents=True, exist_ok=True)
    write_atomic(staging / lineage.RESOLVED_CONFIG, cfg.to_yaml())
    lineage.write_record(staging, stage, fp, started, {"num_tasks": _num_tasks(paths), "jobs": _jobs(paths)})
    # Rename is atomic on one filesystem: readers see the old output or the new one, never a mix.
    target = paths.published
    old = paths.work.with_name(f"{stage.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    fsync_dir(target.parent)  # the rename itself survives a crash of the node
    shutil.rmtree(old, ignore_errors=True)
    _keep_progress(paths)
    shutil.rmtree(paths.work, ignore_errors=True)
    log.info("published %s", target)
    return str(target)


def _keep_progress(paths: StagePaths) -> None:
    """Move the tasks' progress files (each task's last rates and counts) out of the work folder, which
    goes next, to logs/jobs/<stage>/progress/: outside every published folder, so in no hash."""
    src = paths.work / "progress"
    if not src.is_dir():
        return
    dst = paths.kept_progress
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as exc:  # progress is for people watching: never a reason to fail a publication
        log.warning("could not keep the progress files of %s (%s)", paths.stage, exc)


def _started(paths: StagePaths) -> float:
    return paths.read_fingerprint().get("started", time.time())


def _jobs(paths: StagePaths) -> dict:
    try:
        return json.loads(paths.jobs_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _num_tasks(paths: StagePaths) -> dict[str, int]:
    base = paths.work / "completions"
    if not base.is_dir():
        return {}
    return {d.name: len(list(d.iterdir())) for d in sorted(base.iterdir()) if d.is_dir()}
