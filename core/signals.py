"""Stop signals of a training task: recorded from its first moment, and kept from its child processes.

A walltime warning or a preemption can arrive while a task is still starting up (importing, joining
the process group); USR1's default action would kill the process before anything is saved. The task
records them from its first moment; the training loop reads the first one when it takes over.

Slurm delivers the warnings (USR1 from a rendered script's trap through srun, USR2 from submitit's
`--signal`) to every process of the job step, children included: DeepSpeed's JIT op builds (ninja, g++),
torch.compile's workers, data loader workers. Their default action is to die, and the rank with them
(a 2-node requeue test lost a restart to a `ninja` killed by USR1 inside `deepspeed.initialize`). So
the main thread blocks USR1 and USR2 while the task runs: children inherit the mask and leave the
warning pending, and a watcher thread, the one thread with them unblocked, receives them for the
process, whose Python handler then runs in the main thread as usual. SIGTERM is not blocked: at the
walltime it ends children and rank alike.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
WARNING_SIGNALS = {signal.SIGUSR1, signal.SIGUSR2}  # blocked in the main thread, so in children
_early_signals: list[int] = []
_watcher: threading.Thread | None = None


@dataclass
class Caught:
    """What `catch_stop_signals` replaced, for `release_stop_signals`."""
    handlers: dict = field(default_factory=dict)
    mask: set | None = None


def _receive_for_the_process() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WARNING_SIGNALS)
    threading.Event().wait()  # forever: the kernel delivers the process's warnings to this thread


def _start_watcher() -> None:
    global _watcher
    if _watcher is None or not _watcher.is_alive():
        _watcher = threading.Thread(target=_receive_for_the_process, name="graine-stop-signals", daemon=True)
        _watcher.start()


def catch_stop_signals() -> Caught:
    """Record stop signals from now on, and keep USR1/USR2 from the child processes started from now on."""
    _early_signals.clear()  # one that reached an earlier (inline) run does not stop this one
    if threading.current_thread() is not threading.main_thread():
        return Caught()
    handlers = {sig: signal.signal(sig, lambda signum, frame: _early_signals.append(signum)) for sig in STOP_SIGNALS}
    _start_watcher()
    return Caught(handlers, signal.pthread_sigmask(signal.SIG_BLOCK, WARNING_SIGNALS))


def release_stop_signals(caught: Caught) -> None:
    """Put back the handlers and the main thread's signal mask that `catch_stop_signals` replaced."""
    for sig, handler in caught.handlers.items():
        signal.signal(sig, handler)
    if caught.mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, caught.mask)


def early_stop_signal() -> int:
    """The first stop signal received before the training loop took over (0 if none)."""
    return _early_signals[0] if _early_signals else 0
