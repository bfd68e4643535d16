"""Test faults for training processes a test cannot hand hooks to: the real-Slurm tests run graine's own
CLI in their jobs. Put this folder first on the job's PYTHONPATH, then the repository root (from which it
imports tests.support.train_faults; tests.support.env_faults_pythonpath() gives both), and name the faults
in its environment:

    GRAINE_TEST_STEP_DELAY=1.5       train_faults' step_delay (seconds)
    GRAINE_TEST_NAN_STEPS=3,4        nan_steps
    GRAINE_TEST_SAVE_FAIL=1:hash:8   save_fail

Python imports `sitecustomize` at start-up; with any of these set, the Trainer class is given the faults'
hooks as its default once `training.trainer` is imported (torch is not imported any earlier). graine
itself reads none of these variables.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

ENV = {"GRAINE_TEST_STEP_DELAY": "step_delay", "GRAINE_TEST_NAN_STEPS": "nan_steps",
       "GRAINE_TEST_SAVE_FAIL": "save_fail"}


def faults_from_env(environ) -> dict:
    faults = {name: environ[var] for var, name in ENV.items() if environ.get(var)}
    if "nan_steps" in faults:
        faults["nan_steps"] = [int(s) for s in faults["nan_steps"].split(",") if s]
    return faults


def give_trainers(module, faults: dict) -> None:
    """Make `module.Trainer` use the faults' hooks when it is given none (the stage passes the default)."""
    from tests.support.train_faults import train_hooks

    init, default = module.Trainer.__init__, module.TrainHooks()

    def __init__(self, ctx, model, data, hooks=default):
        init(self, ctx, model, data, train_hooks(faults, ctx.rank) if hooks == default else hooks)

    module.Trainer.__init__ = __init__


class WhenTrainerLoads(importlib.abc.MetaPathFinder):
    """Lets `training.trainer` load as usual, then calls give_trainers on it."""

    def __init__(self, faults: dict):
        self.faults = faults

    def find_spec(self, name, path=None, target=None):
        if name != "training.trainer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            give_trainers(module, self.faults)

        spec.loader.exec_module = exec_module
        return spec


if faults_from_env(os.environ):
    sys.meta_path.insert(0, WhenTrainerLoads(faults_from_env(os.environ)))
