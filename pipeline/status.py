"""`graine status`: where each stage of a run stands, from the run directory and the job queue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core import lineage
from pipeline import registry
from pipeline.array_progress import step_progress
from pipeline.checkpoint_cli import disk_report
from pipeline.config import RunConfig
from pipeline.executors import tail
from pipeline.lock import pid_alive, slurm_job_states
from pipeline.report import report_status
from pipeline.task import StagePaths


@dataclass
class StageStatus:
    name: str
    state: str  # not started | queued | running | complete | stale | failed | interrupted | unknown
    detail: str = ""
    summary: str = ""


def _find_err_log(logs: Path, job_id: str) -> Path | None:
    for path in sorted(logs.glob(f"{job_id.split('_')[0]}*/*{job_id}*_log.err")) + sorted(logs.glob(f"{job_id}/*_log.err")):
        return path
    return None


def stage_status(cfg: RunConfig, name: str) -> StageStatus:
    stage = registry.get(name)
    paths = StagePaths(Path(cfg.run_dir), name)
    record = lineage.read_record(paths.published)
    if record is not None:
        why = lineage.stale_reason(record, lineage.fingerprint(cfg, stage, registry.folder_of), stage.sections)
        summary = _summary(stage, paths.published)
        if why:
            return StageStatus(name, "stale", f"{why}; re-run: graine run {name} --force", summary)
        return StageStatus(name, "complete", f"finished {record.get('finished')}", summary)
    try:
        jobs = json.loads(paths.jobs_file.read_text())
    except (OSError, json.JSONDecodeError):
        return StageStatus(name, "not started", summary=_summary(stage, paths.published) if not stage.publish else "")
    return _from_jobs(cfg, stage, paths, jobs)


def _from_jobs(cfg: RunConfig, stage, paths: StagePaths, jobs: dict) -> StageStatus:
    by_rank = {(step, int(r)): j for step, ranks in jobs["jobs"].items() for r, j in ranks.items()}
    unfinished = {k: j for k, j in by_rank.items() if k[0] != "publish" and not paths.marker(*k).exists()}
    pub = jobs["jobs"].get("publish", {}).get("0")
    if jobs["executor"] == "slurm":
        live = slurm_job_states(list(by_rank.values()))
        if live is None:
            return StageStatus(stage.name, "unknown", "squeue does not answer: cannot tell whether its jobs run")
        if live and not (unfinished and set(live) == {pub}):  # only the publication left: its tasks failed
            state = "running" if any(s == "RUNNING" for s, _ in live.values()) else "queued"
            running = {k for k, j in by_rank.items() if live.get(j, ("",))[0] == "RUNNING"}
            return StageStatus(stage.name, state, _progress_detail(cfg, stage, paths, jobs, running) + "jobs "
                               + ", ".join(f"{j} {s.lower()}" for j, (s, _) in live.items()))
    elif alive := {k for k, j in by_rank.items() if j.isdigit() and pid_alive(int(j))}:
        return StageStatus(stage.name, "running", _progress_detail(cfg, stage, paths, jobs, alive)
                           + f"local processes {', '.join(sorted(set(by_rank.values())))}")
    summary = _summary(stage, paths.published) if not stage.publish else ""
    if not unfinished:
        pub_log = _find_err_log(paths.logs(), pub) if pub else None
        detail = "all tasks complete but not published" + (f"; publish log: {pub_log}\n{tail(pub_log)}" if pub_log else "")
        return StageStatus(stage.name, "failed" if pub else "interrupted", detail, summary)
    (step, rank), job = sorted(unfinished.items())[0]
    err = _find_err_log(paths.logs(), job)
    total = sum(1 for k in by_rank if k[0] == step)
    return StageStatus(stage.name, "failed",
                       f"{len(unfinished)} task(s) unfinished (first: {step} task {rank}, job {job}, of {total} "
                       f"submitted); log: {err}\n{tail(err)}\n  re-run `graine run {stage.name}` to redo only "
                       "the unfinished tasks", summary)


def _progress_detail(cfg: RunConfig, stage, paths: StagePaths, jobs: dict, running: set[tuple[str, int]]) -> str:
    """How far the first step with tasks left has got, from its tasks' markers and progress files, as
    `filter: 12/64 tasks done, 8 running, 44 pending; 41.2 MB/s, ETA 1h12m; ` ("" when every step is done);
    `running`: the (step, rank) tasks whose jobs run."""
    submitted = jobs.get("jobs", {})
    for step in stage.steps:
        if step.name not in submitted:
            continue
        try:
            tasks = step.count(cfg)
        except Exception:  # a config that no longer splits the same way: count what was submitted
            tasks = len(submitted[step.name])
        progress = step_progress(step.name, tasks, paths.progress_dir(step.name), paths.marker,
                                 {r for s, r in running if s == step.name})
        if progress.done < tasks:
            return progress.line() + "; "
    return ""


def _summary(stage, folder: Path) -> str:
    if stage.summary is None or not folder.exists():
        return ""
    try:
        return stage.summary(folder) or ""
    except Exception as exc:  # a broken summary must not hide the state
        return f"(summary unavailable: {exc})"


def format_status(cfg: RunConfig) -> str:
    lines = [f"run directory: {cfg.run_dir}"]
    lock = Path(cfg.run_dir) / ".graine.lock"
    if lock.exists():
        try:
            h = json.loads(lock.read_text())
            lines.append(f"locked by {h.get('command')} (host {h.get('host')}, pid {h.get('pid')}, since {h.get('since')})")
        except (OSError, json.JSONDecodeError):
            pass
    for name in registry.known():
        st = stage_status(cfg, name)
        lines.append(f"{name:<11} {st.state:<15} {st.detail}".rstrip())
        if st.summary:
            lines += ["    " + line for line in st.summary.splitlines()]
    lines.append(disk_report(cfg))
    lines.append(report_status(Path(cfg.run_dir)))
    return "\n".join(lines)
