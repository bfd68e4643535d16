"""Live progress of a long task: a log line at a steady interval and a small JSON file beside the work.

    with ctx.progress(total=len(docs), unit="docs") as progress:
        for doc in docs:
            ...
            progress.update(1, nbytes=len(doc.text))

In a log file (a Slurm job's stderr, the local executor's task logs) it writes plain lines, one per
interval and one at the end, never carriage returns:

    preprocess/tokenize task 3: 12,288/50,000 docs (24.6%), 410 docs/s, 38.2 MB at 1.27 MB/s, elapsed 30s, ETA 1m32s

On a terminal it draws a tqdm bar instead (and still logs the final line). At the same interval it
replaces, atomically, its progress file (`TaskContext.progress` puts it in the stage's work folder, never in
what is published) with {done, total, unit, rate, eta_s, updated, host, pid, finished, ...}: what
`graine status` reads to show how far a running array has got.

`update` is meant to be called per document: it costs one clock read and a few additions (the clock is
compared, the line formatted and the file written only once per interval). The interval is
`GRAINE_PROGRESS_INTERVAL_S` (seconds, default 30), read from the environment so that it enters no
stage's config hash; a Slurm job inherits it from the shell that submitted it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.fs import write_atomic

INTERVAL_ENV = "GRAINE_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0

log = logging.getLogger("graine.progress")


def interval_from_env() -> float:
    """Seconds between progress reports: $GRAINE_PROGRESS_INTERVAL_S, or 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{INTERVAL_ENV}={raw!r} must be a positive number of seconds (e.g. 30); "
                          f"unset it for the default of {DEFAULT_INTERVAL_S:g}")
    return value


def format_duration(seconds: float) -> str:
    """45s, 5m10s, 1h12m, 2d3h: short enough for a status line."""
    if not math.isfinite(seconds):
        return "?"
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def format_rate(value: float) -> str:
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def format_bytes(n: float) -> str:
    """Decimal units, like the rates (MB/s)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{format_rate(n / scale)} {unit}"
    return f"{int(n)} B"


class Progress:
    """Counts units done (and bytes, and any named counts) and reports them every `interval` seconds.

    `total` is None when the task does not know it (then there is no ETA). `clock` (monotonic seconds)
    and `wall` (epoch seconds) are injectable for tests; `tty` None means "is stderr a terminal".
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "docs", *, interval: float | None = None,
                 path: str | Path | None = None, logger: logging.Logger | None = None, tty: bool | None = None,
                 meta: dict[str, Any] | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.what, self.total, self.unit = what, total, unit
        self.interval = interval_from_env() if interval is None else float(interval)
        if not self.interval > 0:
            raise ValueError(f"progress interval must be positive, got {self.interval}")
        self.path = Path(path) if path is not None else None
        self.log = logger or log
        self.meta = dict(meta or {})
        self.clock, self.wall = clock, wall
        self.done = 0
        self.bytes = 0
        self.counts: dict[str, int] = {}
        self.finished = False
        self.start = clock()
        self.started_wall = wall()
        self._next = self.start + self.interval
        self._bar = None
        if sys.stderr.isatty() if tty is None else tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, unit_scale=True, mininterval=1.0, dynamic_ncols=True,
                             file=sys.stderr)
        self._write_file(self.start)  # a task that has started shows as running before its first interval

    # ------------------------------------------------------------------------------------- counting
    def update(self, n: int = 1, nbytes: int = 0, **counts: int) -> None:
        """Add `n` units (and `nbytes` bytes, and named counts such as tokens=...) done."""
        self.done += n
        self.bytes += nbytes
        if counts:
            for key, value in counts.items():
                self.counts[key] = self.counts.get(key, 0) + value
        if self._bar is not None:
            self._bar.update(n)
        now = self.clock()
        if now >= self._next:
            self._report(now)

    def close(self) -> None:
        """The final line and the file marked finished; idempotent."""
        if self.finished:
            return
        self.finished = True
        if self._bar is not None:
            self._bar.close()
        now = self.clock()
        self.log.info("%s", self.line(now))
        self._write_file(now)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()

    # ------------------------------------------------------------------------------------ reporting
    def _report(self, now: float) -> None:
        # The next report is one interval after this one, not after the last deadline: a stalled task
        # reports once when it resumes, not in a burst.
        self._next = now + self.interval
        if self._bar is None:
            self.log.info("%s", self.line(now))
        self._write_file(now)

    def elapsed(self, now: float | None = None) -> float:
        return (self.clock() if now is None else now) - self.start

    def rate(self, now: float | None = None) -> float:
        elapsed = self.elapsed(now)
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the average rate so far; None without a total or before anything is done."""
        if self.total is None:
            return None
        if self.done >= self.total:
            return 0.0
        rate = self.rate(now)
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = self.elapsed(now)
        done = f"{self.done:,}" if self.total is None else f"{self.done:,}/{self.total:,}"
        parts = [f"{done} {self.unit}"
                 + (f" ({100 * self.done / self.total:.1f}%)" if self.total else "")]
        parts.append(f"{format_rate(self.rate(now))} {self.unit}/s")
        if self.bytes:
            parts.append(f"{format_bytes(self.bytes)} at {format_rate(self.bytes / max(elapsed, 1e-9) / 1e6)} MB/s")
        parts += [f"{value:,} {key}" for key, value in self.counts.items()]
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.finished:
            return f"{self.what}: finished, " + ", ".join(parts)
        eta = self.eta(now)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return f"{self.what}: " + ", ".join(parts)

    def state(self, now: float | None = None) -> dict[str, Any]:
        """The progress file's contents."""
        now = self.clock() if now is None else now
        elapsed = self.elapsed(now)
        eta = self.eta(now)
        return {**self.meta, "what": self.what, "unit": self.unit, "done": self.done, "total": self.total,
                "rate": round(self.rate(now), 3), "bytes": self.bytes,
                "byte_rate": round(self.bytes / elapsed, 1) if elapsed > 0 else 0.0, "counts": dict(self.counts),
                "eta_s": None if eta is None else round(eta, 1), "elapsed_s": round(elapsed, 3),
                "started": round(self.started_wall, 3), "updated": round(self.started_wall + elapsed, 3),
                "interval_s": self.interval, "host": socket.gethostname(), "pid": os.getpid(),
                "finished": self.finished}

    def _write_file(self, now: float) -> None:
        if self.path is None:
            return
        try:
            write_atomic(self.path, json.dumps(self.state(now), sort_keys=True) + "\n")
        except OSError as exc:  # progress is for people watching: it must never fail the task
            self.log.warning("%s: cannot write progress file %s (%s); going on without it", self.what, self.path, exc)
            self.path = None


def read_progress(path: Path) -> dict | None:
    """A progress file's contents; None when it is missing or unreadable (a task that has not started)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
