"""Stop signals of a training task (core/signals.py), in a fresh Python process as a rank is: a USR1 sent
to every process of the job step, as Slurm does, is recorded by the task and leaves its children alive
(DeepSpeed's ninja died of it inside deepspeed.initialize); SIGTERM still ends them; the mask is put back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TASK = """
import json, os, signal, subprocess, sys, time
from core.signals import catch_stop_signals, early_stop_signal, release_stop_signals

before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
caught = catch_stop_signals()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # USR1's default: die
time.sleep(0.5)
for pid in (child.pid, os.getpid()):  # every process of the step, as slurmstepd signals them
    os.kill(pid, signal.SIG{sig})
deadline = time.time() + 10
while not early_stop_signal() and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.5)
alive = child.poll() is None
release_stop_signals(caught)
after = signal.pthread_sigmask(signal.SIG_BLOCK, [])
child.kill()
print(json.dumps({{"recorded": early_stop_signal(), "child_alive": alive, "returncode": child.wait(),
                  "mask_restored": after == before}}))
"""


def run_task(sig: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", TASK.format(sig=sig)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_walltime_warning_to_every_process_is_recorded_and_spares_the_children():
    for sig in ("USR1", "USR2"):
        got = run_task(sig)
        assert got["recorded"] == getattr(signal, f"SIG{sig}"), got
        assert got["child_alive"] and got["returncode"] == -signal.SIGKILL, got  # ended by the kill, not the warning
        assert got["mask_restored"], got


def test_sigterm_still_ends_the_children():
    got = run_task("TERM")
    assert got["recorded"] == signal.SIGTERM
    assert not got["child_alive"] and got["returncode"] == -signal.SIGTERM, got
