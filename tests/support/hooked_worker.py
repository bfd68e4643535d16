"""train_harness's worker with one more hook, launched the same way (torch.distributed.run, gloo; the ranks
run `python -m tests.support.hooked_worker SPEC`).

- optimizer_state=PATH (in the spec): when training ends, every rank gathers the live optimizer's full
  fp32 weights and Adam moments (deepspeed.utils.safe_get_full_*, collective) and rank 0 saves them to
  PATH: the truth a dump is compared with. Given to the trainer as its `before_close` hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import train_harness


def optimizer_capture(path: str):
    """A TrainHooks.before_close that saves the live optimizer's full state to `path` (rank 0)."""

    def capture(trainer) -> None:
        import torch
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        if trainer.engine is None:
            return
        zero = trainer.engine.optimizer
        if hasattr(zero, "_hp_optimizer_states_linked"):
            # ZeRO 1/2 link each parameter to its Adam moments once, right after the first group's
            # first step, when the other groups have no state yet: link again now that all have.
            zero._hp_optimizer_states_linked = False
            zero._lazy_init_hp_params_optimizer_state()
        live = {}
        for name, p in trainer.engine.module.named_parameters():
            live[name] = {"fp32": safe_get_full_fp32_param(p).detach().clone().cpu(),
                          "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").detach().clone().cpu(),
                          "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").detach().clone().cpu()}
        if trainer.rank == 0:
            torch.save(live, path)

    return capture


def launch(run_dir: Path, overrides: list[str] = (), nproc: int = 2, optimizer_state: Path | None = None,
           timeout: float = 150) -> tuple[str, str]:
    """train_harness.launch, through this worker."""
    extra = {"optimizer_state": str(optimizer_state)} if optimizer_state else {}
    spec = train_harness.write_spec(run_dir, list(overrides), nproc, **extra)
    for old in run_dir.glob("result-rank*.json"):
        old.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tests.support.hooked_worker", str(spec)]
    proc = subprocess.run(cmd, env=train_harness.env(), capture_output=True, text=True, timeout=timeout,
                          cwd=train_harness.REPO)
    output = proc.stdout + proc.stderr
    return train_harness.read_result(run_dir, proc.returncode), output


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    path = json.loads(Path(sys.argv[1]).read_text()).get("optimizer_state")
    train_harness.worker(sys.argv[1], hooks={"before_close": optimizer_capture(path)} if path else None)
