"""Test faults for the real training loop, as the hooks graine's Trainer takes (training.trainer.TrainHooks).

A test names its faults in a dict (train_harness writes it into the worker's spec as "faults"):

    step_delay: 0.25        a pause after every step, in seconds (so a test can signal or kill mid-run)
    nan_steps: [3, 4]       steps whose loss rank 0 makes NaN (the spike guard's input)
    save_fail: "1:hash:8"   RANK:PHASE[:STEP]: that rank fails its part of that phase of a save (of that
                            step) with a disk-full error; phases: checkpoints.checkpointer.SAVE_PHASES
    save_pause: "hash:8:30" PHASE:STEP:SECONDS: every rank pauses before that phase of the save of that
                            step (so a test can kill -9 the job inside it)

graine reads none of this from the environment: each test process builds the hooks and passes them in.
"""

from __future__ import annotations

import time

NAMES = ("step_delay", "nan_steps", "save_fail", "save_pause")


def train_hooks(faults: dict, rank: int):
    """The TrainHooks of `faults` for the process of `rank`."""
    from checkpoints.checkpointer import SAVE_PHASES, SaveHooks
    from training.trainer import TrainHooks

    unknown = sorted(set(faults) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown test faults {unknown}; valid: {', '.join(NAMES)}")
    hooks = {}
    delay = float(faults.get("step_delay") or 0)
    if delay:
        hooks["after_step"] = lambda step: time.sleep(delay)
    nan_steps = {int(s) for s in faults.get("nan_steps") or ()}
    if nan_steps and rank == 0:
        hooks["on_loss"] = lambda step, loss: loss * float("nan") if step in nan_steps else loss
    phase_hooks = []
    if faults.get("save_fail"):
        spec = str(faults["save_fail"])
        fail_rank, phase, *step = spec.split(":")
        if phase not in SAVE_PHASES:
            raise ValueError(f"save_fail={spec!r}: {phase!r} is not a save phase; valid: {', '.join(SAVE_PHASES)}")

        def fail(name: str, at: int) -> None:
            if rank == int(fail_rank) and name == phase and (not step or at == int(step[0])):
                raise OSError(28, f"No space left on device (test fault save_fail={spec})")

        phase_hooks.append(fail)
    if faults.get("save_pause"):
        pause_phase, pause_step, seconds = str(faults["save_pause"]).split(":")
        if pause_phase not in SAVE_PHASES:
            raise ValueError(f"save_pause: {pause_phase!r} is not a save phase; valid: {', '.join(SAVE_PHASES)}")

        def pause(name: str, at: int) -> None:
            if name == pause_phase and at == int(pause_step):
                time.sleep(float(seconds))

        phase_hooks.append(pause)
    if phase_hooks:
        hooks["save"] = SaveHooks(before_phase=lambda name, at: [hook(name, at) for hook in phase_hooks])
    return TrainHooks(**hooks)
