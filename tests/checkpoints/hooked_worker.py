"""train_harness's worker with two test hooks, launched the same way (torch.distributed.run, gloo).

- Until `Checkpointer.load` loads through `checkpoints.universal.load_engine_state` (the one-line change
  requested in the report), the worker routes DeepSpeed's load through it, exactly as that line would.
- GRAINE_TEST_OPTIM_STATE=PATH: when training ends, every rank gathers the live optimizer's full fp32
  weights and Adam moments (deepspeed.utils.safe_get_full_*, collective) and rank 0 saves them to PATH:
  the truth a dump is compared with.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import train_harness

OPTIM_STATE = "GRAINE_TEST_OPTIM_STATE"


def install_universal_hook() -> None:
    from checkpoints import checkpointer, universal

    if "load_engine_state" in inspect.getsource(checkpointer.Checkpointer.load):
        return  # the checkpointer calls it itself
    original = checkpointer.Checkpointer.load

    def load(self, engine):
        real = engine.load_checkpoint

        def redirected(load_dir, tag=None, **kwargs):
            return universal.load_engine_state(engine, Path(load_dir) / tag, self.world, load=real)

        engine.load_checkpoint = redirected
        try:
            return original(self, engine)
        finally:
            del engine.load_checkpoint

    checkpointer.Checkpointer.load = load


def install_optimizer_capture(path: str) -> None:
    import torch
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from training.trainer import Trainer

    original = Trainer.close

    def close(self):
        if self.engine is not None:
            zero = self.engine.optimizer
            if hasattr(zero, "_hp_optimizer_states_linked"):
                # ZeRO 1/2 link each parameter to its Adam moments once, right after the first group's
                # first step, when the other groups have no state yet: link again now that all have.
                zero._hp_optimizer_states_linked = False
                zero._lazy_init_hp_params_optimizer_state()
            live = {}
            for name, p in self.engine.module.named_parameters():
                live[name] = {"fp32": safe_get_full_fp32_param(p).detach().clone().cpu(),
                              "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").detach().clone().cpu(),
                              "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").detach().clone().cpu()}
            if self.rank == 0:
                torch.save(live, path)
        original(self)

    Trainer.close = close


def launch(run_dir: Path, overrides: list[str] = (), nproc: int = 2, hooks: dict | None = None,
           timeout: float = 150) -> tuple[str, str]:
    """train_harness.launch, through this worker."""
    spec = train_harness.write_spec(run_dir, list(overrides), nproc)
    for old in run_dir.glob("result-rank*.json"):
        old.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(Path(__file__)), str(spec)]
    proc = subprocess.run(cmd, env=train_harness.env(hooks), capture_output=True, text=True, timeout=timeout,
                          cwd=train_harness.REPO)
    output = proc.stdout + proc.stderr
    return train_harness.read_result(run_dir, proc.returncode), output


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    install_universal_hook()
    if os.environ.get(OPTIM_STATE):
        install_optimizer_capture(os.environ[OPTIM_STATE])
    train_harness.worker(sys.argv[1])
