"""What a stage is: named steps of independent tasks that write into a staging folder, published at once.

A stage's code lives in the package that owns the work (`data_prep/`, `training/pretrain.py`, ...); it
exposes a module-level `STAGE`. Each `Step` runs as `num_tasks(cfg)` independent tasks (a Slurm array
on a cluster); a task is `run(ctx)` and must only write its own files. Steps run in order; once the
last step's tasks are all complete the staging folder is published as `<run_dir>/<stage.name>/`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.config import RunConfigBase as RunConfig
from core.progress import Progress


def one_task(cfg: RunConfig) -> int:
    return 1


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[TaskContext], None]
    num_tasks: Callable[[RunConfig], int] = one_task
    # "cpu": a data task (array element on the CPU partition); "gpu": one distributed job of
    # train.num_nodes x train.devices_per_node processes, every one calling run(ctx); "accel": one task
    # on one accelerator (on a cluster a job of 1 node, 1 task and 1 GPU of the gpu partition; elsewhere a
    # plain task that uses a GPU when the machine has one): evaluation.
    kind: Literal["cpu", "gpu", "accel"] = "cpu"

    def count(self, cfg: RunConfig) -> int:
        """Tasks the orchestrator tracks: one per array element, one for a whole distributed job."""
        return 1 if self.kind == "gpu" else self.num_tasks(cfg)


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]
    sections: tuple[str, ...]  # config sections (and top-level keys) it reads: its config hash covers these
    steps: tuple[Step, ...]
    description: str = ""  # one line, listed by `graine --help`
    # The config sections this stage owns: {section name: kw_only dataclass}; the run's config class is
    # assembled from them (pipeline/config.py). A section is owned by one stage and read by any.
    config: Mapping[str, type] = field(default_factory=dict)
    # Checks across the stage's sections, run when the config is loaded (before anything runs).
    validate: Callable[[RunConfig], None] | None = None
    # False for stages that write in place and resume themselves (pretraining writes checkpoints/).
    publish: bool = True
    # Short human summary of a published output folder, for `graine status` and the end of a run.
    summary: Callable[[Path], str] | None = None
    # Config facts outside its sections that decide its outputs, hashed with them (JSON): preprocess's
    # blend reads the catalogue sources' weights, keys of the clean section that clean itself does not hash.
    identity: Callable[[RunConfig], Any] | None = None
    # Raw inputs outside the run directory (paths), hashed into the completion record (clean only).
    external_inputs: Callable[[RunConfig], list[Path]] | None = None
    # The folder under the run directory it publishes; default the stage's name (preprocess: shards).
    output: str = ""
    # Checks of the config run before anything is submitted, against the training job's shape for a
    # stage with a gpu step: check(cfg, world_size, gpus) raises ConfigError ((1, False) for data stages).
    check: Callable[[RunConfig, int, bool], None] | None = None
    # Extra fields of the completion record, read from the finished output folder (pretrain: its init source).
    record: Callable[[Path], dict] | None = None

    @property
    def folder(self) -> str:
        return self.output or self.name


@dataclass
class TaskContext:
    """What a task gets: its config, its place in the step, and where to read and write."""

    cfg: RunConfig
    stage: str
    step: str
    rank: int
    world_size: int
    out_dir: Path  # the staging folder, published as <run_dir>/<stage>; write final outputs here
    work_dir: Path  # scratch shared by the stage's tasks; deleted after publication
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("graine"))
    # Where each upstream stage publishes, when not under its own name ({"preprocess": "shards"}).
    folders: Mapping[str, str] = field(default_factory=dict)
    # Where this step's tasks write their progress files (`<stage work folder>/progress/<step>/`); None:
    # progress lines only (a stage run by hand, outside the orchestration).
    progress_dir: Path | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    def input_dir(self, stage: str) -> Path:
        """The published output of an upstream stage."""
        return self.run_dir / self.folders.get(stage, stage)

    def progress(self, total: int | None = None, unit: str = "docs", what: str = "", **kwargs) -> Progress:
        """A `Progress` of this task, logging to the task's log and writing its progress file."""
        path = self.progress_dir / f"{self.rank:05d}.json" if self.progress_dir is not None else None
        meta = {"stage": self.stage, "step": self.step, "rank": self.rank, "world_size": self.world_size}
        return Progress(what or f"{self.stage}/{self.step} task {self.rank}", total, unit, path=path,
                        logger=self.log, meta=meta, **kwargs)
