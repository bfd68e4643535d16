"""How far a running step has got, from its tasks' completion markers and progress files (core/progress.py):
what `graine status` prints for a running or queued stage.

    filter: 12/64 tasks done, 8 running, 44 pending; 1,230 docs/s, 41.2 MB/s, ETA 1h12m

A task is done when its marker exists; running when the executor says its job runs (a live local
process, a RUNNING Slurm array element) or when it has a progress file that is not finished (and, on
this host, whose process is alive); pending otherwise. A running task whose file has not changed for
three intervals is counted as silent (stuck, or in a phase that reports nothing). The rates are the
running tasks' sums. The ETA is the slowest running task's when nothing is pending; otherwise the step's
elapsed time scaled by the share of its work left (each running task counting for its done/total, or for
nothing without a total).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.progress import format_duration, format_rate, read_progress
from pipeline.lock import pid_alive


@dataclass
class StepProgress:
    step: str
    tasks: int
    done: int = 0
    running: list[dict] = field(default_factory=list)  # the running tasks' progress files ({} when none)
    started: float | None = None  # the earliest start of any task of the step that wrote a progress file

    @property
    def pending(self) -> int:
        return self.tasks - self.done - len(self.running)

    def rates(self) -> dict[str, float]:
        """{unit/s: summed rate} over the running tasks, plus "MB/s" when they count bytes."""
        out: dict[str, float] = {}
        for p in self.running:
            if not p:
                continue  # a running job that has written no progress file yet
            unit = str(p.get("unit") or "units")
            out[f"{unit}/s"] = out.get(f"{unit}/s", 0.0) + float(p.get("rate") or 0.0)
        mb = sum(float(p.get("byte_rate") or 0.0) for p in self.running) / 1e6
        if mb > 0:
            out["MB/s"] = mb
        return out

    def eta(self, now: float) -> float | None:
        if self.tasks <= 0 or self.done >= self.tasks:
            return None
        etas = [p.get("eta_s") for p in self.running]
        if self.pending == 0 and self.running and all(isinstance(e, (int, float)) for e in etas):
            return max(etas)
        fractions = [_fraction(p) for p in self.running]
        share = self.done + (sum(fractions) if all(f is not None for f in fractions) else 0.0)
        share /= self.tasks
        if share <= 0 or self.started is None:
            return None
        return max(now - self.started, 0.0) * (1 - share) / share

    def silent(self, now: float) -> int:
        """Running tasks whose progress file is older than three of its intervals."""
        return sum(1 for p in self.running if isinstance(p.get("updated"), (int, float))
                   and now - p["updated"] > 3 * float(p.get("interval_s") or 30.0))

    def line(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        silent = self.silent(now)
        text = (f"{self.step}: {self.done}/{self.tasks} tasks done, {len(self.running)} running"
                + (f" ({silent} silent for 3 progress intervals)" if silent else "") + f", {self.pending} pending")
        rates = [f"{format_rate(v)} {k}" for k, v in self.rates().items()]
        eta = self.eta(now)
        if eta is not None:
            rates.append(f"ETA {format_duration(eta)}")
        return text + ("; " + ", ".join(rates) if rates else "")


def _fraction(p: dict) -> float | None:
    total, done = p.get("total"), p.get("done")
    if not isinstance(total, (int, float)) or not isinstance(done, (int, float)) or total <= 0:
        return None
    return min(done / total, 1.0)


def is_running(p: dict) -> bool:
    """A progress file of a task still at work: not finished, and its process alive when it is on this host."""
    if p.get("finished"):
        return False
    pid = p.get("pid")
    if p.get("host") == socket.gethostname() and isinstance(pid, int):
        return pid_alive(pid)
    return True  # another node's process: its job's state (squeue) is the caller's evidence


def step_progress(step: str, tasks: int, progress_dir: Path, marker, running: set[int] = frozenset()
                  ) -> StepProgress:
    """The progress of `step`'s `tasks` tasks; `marker(step, rank)` is the path of a task's completion
    marker, `running` the ranks whose jobs the executor knows to run."""
    out = StepProgress(step, tasks)
    for rank in range(tasks):
        p = read_progress(progress_dir / f"{rank:05d}.json")
        if p is not None and isinstance(p.get("started"), (int, float)):
            out.started = p["started"] if out.started is None else min(out.started, p["started"])
        if marker(step, rank).exists():
            out.done += 1
        elif p is not None and (rank in running or is_running(p)):
            out.running.append(p)
        elif rank in running:
            out.running.append({})
    return out
