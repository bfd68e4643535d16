"""Running stages: decide what is left to do, submit it, wait (or chain on Slurm), publish.

A stage that is complete with unchanged inputs and config is skipped. A stale one (its inputs or
config changed) is left alone and reported, with the stages to re-run, unless `--force`. Within a
stage, only tasks without a completion marker are submitted, so re-running after a crash redoes
only what did not finish.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from core import lineage
from core.errors import ConfigError, DataError, StageError
from core.fs import write_atomic
from core.stage import Stage
from pipeline import registry
from pipeline.config import RunConfig
from pipeline.executors import Executor, Handle, make_executor
from pipeline.lock import RunLock
from pipeline.task import (
    REQUEUE,
    Publisher,
    StagePaths,
    TaskRunner,
    apply_run_dir_mode,
    publish,
)

log = logging.getLogger("graine")


@dataclass
class Plan:
    """What `run` will do for one stage; printed by --dry-run."""

    stage: Stage
    action: str  # "run", "skip" or "refuse"
    reason: str
    tasks: dict[str, list[int]] = field(default_factory=dict)  # step -> ranks still to run


def plan_stage(cfg: RunConfig, stage: Stage, force: bool, upstream_rerun: bool = False) -> Plan:
    paths = StagePaths(Path(cfg.run_dir), stage.name)
    record = lineage.read_record(paths.published)
    fp = lineage.fingerprint(cfg, stage, registry.folder_of)
    if fp.missing and not upstream_rerun:
        return Plan(stage, "refuse", f"upstream {', '.join(fp.missing)} is not complete; run "
                    f"`graine run {fp.missing[0]}` first, or `graine run all`")
    if record is not None and not force and not upstream_rerun:
        why = lineage.stale_reason(record, fp, stage.sections)
        if why is None:
            return Plan(stage, "skip", f"complete and up to date (finished {record.get('finished')}); "
                        "nothing to do (--force redoes it)")
        redo = [stage.name] + registry.downstream(stage.name)
        return Plan(stage, "refuse", f"stale: {why}. Re-run with `graine run {stage.name} --force`, then "
                    f"{', '.join(redo[1:]) or 'nothing else'}")
    fresh = force or upstream_rerun or not _work_matches(paths, fp)
    tasks = {}
    for step in stage.steps:
        n = step.count(cfg)
        done = set() if fresh else {r for r in range(n) if paths.marker(step.name, r).exists()}
        tasks[step.name] = [r for r in range(n) if r not in done]
    reason = "forced" if force else "upstream re-runs" if upstream_rerun else "not complete"
    return Plan(stage, "run", reason, tasks)


def _work_matches(paths: StagePaths, fp: lineage.Fingerprint) -> bool:
    return paths.read_fingerprint().get("key") == fp.key


def _prepare_work(cfg: RunConfig, stage: Stage, plan: Plan) -> None:
    """Start from a clean work folder unless the previous attempt had the same inputs and config."""
    paths = StagePaths(Path(cfg.run_dir), stage.name)
    fp = lineage.fingerprint(cfg, stage, registry.folder_of)
    all_pending = all(len(r) == s.count(cfg)
                      for s, r in zip(stage.steps, plan.tasks.values()))
    if all_pending and paths.work.exists() and not (stage.publish is False and _work_matches(paths, fp)):
        shutil.rmtree(paths.work)
    if not stage.publish:  # written in place: it is not complete while it runs again
        (paths.published / lineage.RECORD).unlink(missing_ok=True)
    paths.work.mkdir(parents=True, exist_ok=True)
    if not paths.fingerprint_file.exists():
        paths.write_fingerprint(fp.key)


def resolve(names: list[str]) -> list[Stage]:
    order = registry.known()
    if names == ["all"]:
        names = registry.ORDER
    found = [registry.get(n) for n in dict.fromkeys(names)]  # unknown names fail here, with the list
    return sorted(found, key=lambda s: order.index(s.name))


def job_shape(cfg: RunConfig, executor: str) -> tuple[int, bool]:
    """(ranks, GPUs or not) of a training job on this executor."""
    if executor == "slurm":
        from pipeline.slurm import job_for

        job = job_for(cfg, "gpu")
        return job.params["nodes"] * job.params["ntasks_per_node"], job.gpus_per_node > 0
    import torch

    ranks = 1 if executor == "inline" else cfg.train.num_nodes * cfg.train.devices_per_node
    return ranks, torch.cuda.is_available()


def preflight(cfg: RunConfig, targets: list[Stage], executor: str) -> list[str]:
    """Every check that can be made before a job is submitted: the Slurm resources of each step, then
    each stage's own checks against its job's shape (batch divisibility, precision on the devices...),
    then the raw inputs the config names. Raises ConfigError, so a bad config exits 2 before anything
    waits in a queue; returns one line per check made (`graine run --dry-run` prints them)."""
    done = []
    for stage in targets:
        for step in stage.steps:
            if executor == "slurm":
                from pipeline.slurm import job_for

                job = job_for(cfg, step.kind, step.num_tasks(cfg))
                done.append(f"{stage.name}/{step.name}: Slurm resources of a {step.kind} job "
                            f"({job.params.get('partition') or job.params.get('constraint') or 'default partition'})")
        if stage.check is not None:
            gpu = any(step.kind == "gpu" for step in stage.steps)
            ranks, gpus = job_shape(cfg, executor) if gpu else (1, False)
            stage.check(cfg, ranks, gpus)
            done.append(f"{stage.name}: the stage's own checks"
                        + (f" against its job ({ranks} rank(s), {'GPUs' if gpus else 'no GPU'})" if gpu else ""))
        if stage.external_inputs is not None:
            try:  # inputs named by the config that do not exist are a config error, found before anything runs
                files = stage.external_inputs(cfg)
            except DataError as exc:
                raise ConfigError(str(exc)) from None
            done.append(f"{stage.name}: {len(files)} external input file(s) present")
    return done


def run(cfg: RunConfig, names: list[str], executor: str = "local", force: bool = False,
        wait: bool = False, command: str = "") -> list[Plan]:
    """Run (or, on Slurm, queue) the named stages in order. Returns the plans that were carried out."""
    targets = resolve(names)
    preflight(cfg, targets, executor)
    apply_run_dir_mode(cfg)
    lock = RunLock(Path(cfg.run_dir), command)
    with lock:
        ex = make_executor(executor, cfg, Path(cfg.run_dir) / "logs" / "jobs", wait=wait)
        if hasattr(ex, "on_submit"):
            ex.on_submit = lambda pids: lock.record_jobs(local_pids=[int(p) for p in pids])
        plans, after, rerun = [], [], False
        # A queued chain cannot look at upstream results, so it is planned whole before submitting:
        # then the last stage that runs knows it must release the lock.
        queued = [] if ex.waits else _plan_chain(cfg, targets, force)
        last_run = max((i for i, p in enumerate(queued) if p.action == "run"), default=-1)
        try:
            for i, stage in enumerate(targets):
                plan = queued[i] if queued else plan_stage(cfg, stage, force, upstream_rerun=rerun)
                plans.append(plan)
                if plan.action == "skip":
                    log.info("%s: %s", stage.name, plan.reason)
                    continue
                after = _run_stage(cfg, stage, plan, ex, after, lock, last=i == last_run)
                rerun = True
        except KeyboardInterrupt:
            # The lock is released on the way out: only once the tasks started here have ended too.
            log.warning("interrupted: ending the tasks started on this machine before releasing the run directory")
            ex.stop()
            raise
        if not ex.waits and after:
            ids = [h.job_id for h in after]
            lock.record_jobs(slurm_jobs=_all_job_ids(cfg, targets))
            lock.handover()  # the chain's last job releases the lock
            log.info("queued; the chain ends with job %s. Follow it with `graine status`", ", ".join(ids))
        return plans


def _plan_chain(cfg: RunConfig, targets: list[Stage], force: bool) -> list[Plan]:
    plans, rerun = [], False
    for stage in targets:
        plans.append(plan_stage(cfg, stage, force, upstream_rerun=rerun))
        _refuse_if(plans[-1])
        rerun = rerun or plans[-1].action == "run"
    return plans


def _refuse_if(plan: Plan) -> None:
    if plan.action == "refuse":
        raise StageError(f"{plan.stage.name}: {plan.reason}")


def _run_stage(cfg: RunConfig, stage: Stage, plan: Plan, ex: Executor, after: list[Handle],
               lock: RunLock, last: bool) -> list[Handle]:
    _refuse_if(plan)
    _prepare_work(cfg, stage, plan)
    paths = StagePaths(Path(cfg.run_dir), stage.name)
    ex.folder = paths.logs()
    cfg_dict = cfg.to_dict()
    submitted: dict[str, dict[str, str]] = {}
    log.info("%s: running (%s)", stage.name, plan.reason)
    for step in stage.steps:
        ranks = plan.tasks[step.name]
        if not ranks:
            log.info("%s/%s: all tasks already complete", stage.name, step.name)
            continue
        n = step.count(cfg)
        runner = TaskRunner(cfg_dict, stage, step.name, n)
        if len(ranks) < n:
            log.info("%s/%s: %d of %d tasks left to run", stage.name, step.name, len(ranks), n)
        handles = ex.submit_tasks(runner, ranks, step.kind, after)
        submitted[step.name] = {str(r): h.job_id for r, h in zip(ranks, handles)}
        _save_jobs(paths, ex.name, submitted)
        after = _wait_step(cfg, ex, runner, ranks, step.kind, handles)
    if ex.waits:
        publish(cfg, stage)
        _print_summary(cfg, stage)
        return []
    pub = Publisher(cfg_dict, stage, release_chain=lock.chain if last else "")
    handle = ex.submit_one(pub, "cpu", after, f"publish {stage.name}")
    submitted["publish"] = {"0": handle.job_id}
    _save_jobs(paths, ex.name, submitted)
    return [handle]


def _wait_step(cfg: RunConfig, ex: Executor, runner: TaskRunner, ranks: list[int], kind: str,
               handles: list[Handle]) -> list[Handle]:
    if not ex.waits:
        return handles
    results = ex.wait(handles)
    # A local training job that saved on a signal or on its time budget is started again, as Slurm
    # would requeue it; the step resumes from its checkpoint.
    requeues = 0
    while kind == "gpu" and results and results[0] in REQUEUE and ex.name != "inline":
        requeues += 1
        if requeues > cfg.checkpoint.max_num_timeout:
            raise StageError(f"training requeued {requeues - 1} times; raise checkpoint.max_num_timeout")
        log.info("training stopped (%s); starting it again from its checkpoint", results[0])
        results = ex.wait(ex.submit_tasks(runner, ranks, kind, []))
    if kind == "gpu" and results and results[0] == "stopped":
        raise StageError("training was stopped by its kill-switch file after saving; remove the file and "
                         "run the same command to continue")
    return handles


def _save_jobs(paths: StagePaths, executor: str, jobs: dict[str, dict[str, str]]) -> None:
    write_atomic(paths.jobs_file, json.dumps({"executor": executor, "jobs": jobs, "logs": str(paths.logs())}))


def _all_job_ids(cfg: RunConfig, targets: list[Stage]) -> list[str]:
    ids = []
    for stage in targets:
        try:
            data = json.loads(StagePaths(Path(cfg.run_dir), stage.name).jobs_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        ids += [j for js in data["jobs"].values() for j in js.values()]
    return ids


def _print_summary(cfg: RunConfig, stage: Stage) -> None:
    if stage.summary is None:
        return
    try:
        text = stage.summary(Path(cfg.run_dir) / stage.folder)
    except Exception as exc:  # a summary is a courtesy: never fail a finished stage for it
        log.warning("could not summarise %s: %s", stage.name, exc)
        return
    if text:
        print(f"\n== {stage.name} ==\n{text}", flush=True)
