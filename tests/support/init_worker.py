"""train_harness's worker that also records the state right after `train.init_from` was loaded, before
the first step (launched like it: `python -m tests.support.init_worker SPEC` under torch.distributed.run).

With `capture=PATH` in the spec, `training.init_from.initialise` is wrapped: once it returns, every rank
gathers the full fp32 weights the optimizer will update (DeepSpeed's master copies, or the parameters
without ZeRO), the Adam moments when train.init_optimizer is set, and the logits of the engine's forward on `probe` (token ids), and rank 0 saves them to PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import train_harness


def capture_after_init(path: str, probe: list[list[int]]) -> None:
    import torch
    from deepspeed.utils import safe_get_full_fp32_param

    from training import init_from

    real = init_from.initialise

    def initialise(engine, cfg, rank, check_safe):
        source = real(engine, cfg, rank, check_safe)
        weights = {}
        for name, p in engine.module.named_parameters():
            full = safe_get_full_fp32_param(p) if engine.zero_optimization_stage() else None
            weights[name] = (full if full is not None else p.detach()).float().clone().cpu()
        moments = adam_moments(engine) if cfg.train.init_optimizer else None
        engine.eval()
        with torch.no_grad():
            logits = engine(torch.tensor(probe, device=engine.device)).float().cpu()
        engine.train()
        if rank == 0:
            torch.save({"weights": weights, "logits": logits, "source": source, "moments": moments}, path)
        return source

    init_from.initialise = initialise


def adam_moments(engine) -> dict:
    """{name: {exp_avg, exp_avg_sq}} of the live ZeRO optimizer (collective), linked as hooked_worker does."""
    from deepspeed.utils import safe_get_full_optimizer_state

    zero = engine.optimizer
    if hasattr(zero, "_hp_optimizer_states_linked"):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()
    return {name: {key: safe_get_full_optimizer_state(p, key).detach().clone().cpu() for key in ("exp_avg", "exp_avg_sq")}
            for name, p in engine.module.named_parameters()}


def launch(run_dir: Path, overrides: list[str] = (), nproc: int = 1, extra_env: dict | None = None,
           timeout: float = 150, **extra) -> tuple[str, str]:
    """train_harness.launch through this worker; `extra` goes into the spec (capture, probe, vocab)."""
    spec = train_harness.write_spec(run_dir, list(overrides), nproc, **extra)
    for old in run_dir.glob("result-rank*.json"):
        old.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tests.support.init_worker", str(spec)]
    proc = subprocess.run(cmd, env=train_harness.env(extra_env), capture_output=True, text=True, timeout=timeout,
                          cwd=train_harness.REPO)
    return train_harness.read_result(run_dir, proc.returncode), proc.stdout + proc.stderr


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("capture"):
        capture_after_init(spec["capture"], spec["probe"])
    train_harness.worker(sys.argv[1])
