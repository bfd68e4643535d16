"""One pipeline writes a run directory at a time.

The lock is a JSON file created with O_EXCL naming its holder: host, pid, Slurm job id and the jobs it
submitted. A holder is stale when its process is dead (same host) and none of its jobs is alive (local
pids, or Slurm jobs still known to `squeue`); a stale lock is taken over with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

from core.errors import LockError
from core.fs import write_atomic

log = logging.getLogger("graine")
LOCK_NAME = ".graine.lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (finished, not yet reaped) counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def slurm_job_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, reason)} of the jobs squeue still knows and that can still run; None when squeue
    cannot answer. A job waiting on a dependency that failed (DependencyNeverSatisfied) will never run
    (Slurm cancels it, kill_on_invalid_dep, at one of its scheduling passes): it is left out."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(sorted({j.split("_")[0] for j in job_ids}))],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # squeue fails for ids it no longer knows: they are all finished.
        return {} if "Invalid job id" in out.stderr else None
    states = {}
    for line in out.stdout.splitlines():
        jid, state, *reason = line.split()
        if reason != ["DependencyNeverSatisfied"]:
            states[jid] = (state, " ".join(reason))
    return states


def _waits_on_finished_jobs(state: tuple[str, str]) -> bool:
    return state == ("PENDING", "Dependency")


class RunLock:
    """`with RunLock(run_dir, command):` holds the run directory; `handover()` keeps it for Slurm jobs."""

    def __init__(self, run_dir: Path, command: str = ""):
        self.path = Path(run_dir) / LOCK_NAME
        self.command = command
        self.chain = uuid.uuid4().hex[:12]
        self.held = False
        self.doomed: list[str] = []  # jobs of a stale chain that can never run, cancelled on take-over

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _info(self, **extra) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "command": self.command, "chain": self.chain, "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "local_pids": [], "slurm_jobs": [], **extra}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._info(), f)
            self.held = True
            return
        raise LockError(f"could not take the lock {self.path}")

    def _break_if_stale(self) -> None:
        h = self.holder()
        if h is None:  # being written right now, or unreadable: give the writer a moment
            time.sleep(0.2)
            h = self.holder()
            if h is None:
                self._take_over("unreadable lock file", None)
                return
        why = self._stale_reason(h)
        if why is None:
            jobs = ", ".join(h.get("slurm_jobs") or []) or "none"
            raise LockError(
                f"run directory {self.path.parent} is in use by another pipeline: host {h.get('host')}, "
                f"pid {h.get('pid')}, Slurm job {h.get('slurm_job_id') or '-'}, submitted jobs {jobs}, since "
                f"{h.get('since')} ({h.get('command')}). Wait for it, or stop it (scancel) and run again; "
                f"if you are sure it is dead, delete {self.path}")
        self._take_over(why, h)

    def _stale_reason(self, h: dict) -> str | None:
        same_host = h.get("host") == socket.gethostname()
        # Once it queued its chain, the driver's process no longer holds the lock: its jobs do.
        if same_host and not h.get("handed_over") and pid_alive(int(h.get("pid", 0))):
            return None
        if any(pid_alive(int(p)) for p in h.get("local_pids") or []) and same_host:
            return None
        states = slurm_job_states(h.get("slurm_jobs") or [])
        if states is None and h.get("slurm_jobs"):
            return None
        # Jobs that only wait on dependencies while none of the chain's other jobs can still run wait on
        # jobs that ended without success (afterok): they will never run. Slurm cancels them only at a
        # later scheduling pass (minutes); the take-over cancels them now.
        if states and not all(_waits_on_finished_jobs(s) for s in states.values()):
            return None
        if states:
            self.doomed = sorted(states)
            return (f"holder pid {h.get('pid')} on {h.get('host')} is gone and its remaining jobs "
                    f"{', '.join(self.doomed)} wait on jobs that failed")
        if not same_host and not h.get("slurm_jobs"):
            return None  # a process on another host: we cannot see whether it lives
        return f"holder pid {h.get('pid')} on {h.get('host')} is gone and none of its jobs is alive"

    def _take_over(self, why: str, judged: dict | None) -> None:
        log.warning("taking over a stale lock %s: %s", self.path, why)
        if self.doomed:
            subprocess.run(["scancel", *self.doomed], capture_output=True, timeout=60)
            log.warning("cancelled jobs %s of the failed chain", ", ".join(self.doomed))
            self.doomed = []
        stale = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.replace(self.path, stale)
        except FileNotFoundError:
            return  # someone else took it over first; the O_EXCL retry decides
        try:
            moved = json.loads(stale.read_text())
        except (OSError, json.JSONDecodeError):
            moved = None
        if moved != judged:
            # Another pipeline replaced the stale lock with its own between our read and our rename:
            # give it back (unless a third one holds the name now) and let the O_EXCL retry decide.
            try:
                os.link(stale, self.path)
            except FileExistsError:
                pass
        stale.unlink(missing_ok=True)

    def record_jobs(self, local_pids: list[int] = (), slurm_jobs: list[str] = ()) -> None:
        """Name the jobs this pipeline started, so a dead driver with live jobs still holds the lock."""
        h = self.holder() or self._info()
        h["local_pids"] = sorted(set(h.get("local_pids", [])) | {int(p) for p in local_pids})
        h["slurm_jobs"] = list(dict.fromkeys(list(h.get("slurm_jobs", [])) + list(slurm_jobs)))
        write_atomic(self.path, json.dumps(h))

    def release(self, force: bool = False) -> None:
        h = self.holder()
        if self.held or force or (h and h.get("chain") == self.chain):
            self.path.unlink(missing_ok=True)
        self.held = False

    def handover(self) -> None:
        """Leave the lock to submitted Slurm jobs: the chain's last job releases it."""
        h = self.holder()
        if h is not None and h.get("chain") == self.chain:
            h["handed_over"] = True
            write_atomic(self.path, json.dumps(h))
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        if self.held:
            self.release()


def release_chain(run_dir: Path, chain: str) -> None:
    """Called by the last job of a submitted chain."""
    path = Path(run_dir) / LOCK_NAME
    try:
        h = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if h.get("chain") == chain:
        path.unlink(missing_ok=True)
