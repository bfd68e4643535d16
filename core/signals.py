"""Stop signals that reach a training task before its loop installs its own handlers.

A walltime warning or a preemption can arrive while a task is still starting up (importing, joining
the process group); USR1's default action would kill the process before anything is saved. The task
records them from its first moment; the training loop reads the first one when it takes over.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
_early_signals: list[int] = []


def catch_stop_signals() -> dict:
    """Record stop signals from now on; returns the previous handlers (to restore)."""
    _early_signals.clear()  # one that reached an earlier (inline) run does not stop this one
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, lambda signum, frame: _early_signals.append(signum)) for sig in STOP_SIGNALS}


def early_stop_signal() -> int:
    """The first stop signal received before the training loop took over (0 if none)."""
    return _early_signals[0] if _early_signals else 0
