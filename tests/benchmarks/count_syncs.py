"""Host synchronisations per optimizer step of the real training loop (issue 14's CPU-checkable guard).

On a GPU every read of a device scalar to the host (`.item()`, `float(t)`, `bool(t)`: aten's
`_local_scalar_dense`) waits for the device; the loop must not pay that per step. On CPU there is no
device to wait for, but the same calls still go through the dispatcher, so they can be counted here: a
TorchDispatchMode counts `_local_scalar_dense` while each `Trainer.train_step` and `Trainer.stop_reason`
runs (logging, evaluation and checkpoint steps are excluded by the config: intervals beyond the run).
Every call is counted, DeepSpeed's own included.

    .venv/bin/python tests/benchmarks/count_syncs.py [--zero-stage 1] [--steps 12]

Prints one line per configuration; tests/pipeline/test_syncs.py runs it with a bound.
Run as one process (world size 1, gloo) through torch.distributed.run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def worker(spec: dict) -> None:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    sys.path.insert(0, str(REPO / "tests" / "checkpoints"))
    import train_harness

    from pipeline import trainer as trainer_mod

    counts: Counter = Counter()
    steps = {"n": 0}

    class CountScalarReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                counts[steps["n"]] += 1
            return func(*args, **(kwargs or {}))

    train_step, stop_reason = trainer_mod.Trainer.train_step, trainer_mod.Trainer.stop_reason

    def counted_step(self):
        steps["n"] += 1
        with CountScalarReads():
            return train_step(self)

    def counted_stop(self):
        with CountScalarReads():
            return stop_reason(self)

    trainer_mod.Trainer.train_step, trainer_mod.Trainer.stop_reason = counted_step, counted_stop
    spec_file = Path(spec["run_dir"]).parent / "spec.json"
    train_harness.worker(str(spec_file), on_exit=lambda: Path(spec["out"]).write_text(json.dumps(dict(counts))))


def measure(zero_stage: int, steps: int) -> dict[int, int]:
    """{step: scalar reads during that step and the stop check after it}, from a fresh process."""
    sys.path.insert(0, str(REPO / "tests" / "checkpoints"))
    import train_harness

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, out = Path(tmp) / "run", Path(tmp) / "counts.json"
        overrides = [f"train.zero_stage={zero_stage}", f"train.train_tokens={steps * 4 * 32}",
                     f"train.decay_tokens={steps * 4 * 32}", "train.log_interval=100000", "train.eval_interval=0",
                     "checkpoint.interval=100000"]
        spec = train_harness.write_spec(run_dir, overrides, nproc=1)
        spec.rename(Path(tmp) / "spec.json")
        env = train_harness.env({"GRAINE_COUNT_SYNCS": json.dumps({"run_dir": str(run_dir), "out": str(out)})})
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                               __file__, "--worker"], env=env, capture_output=True, text=True, timeout=300)
        if not out.exists():
            raise RuntimeError(f"the training process wrote no counts (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                               f"\n{proc.stderr[-3000:]}")
        return {int(k): v for k, v in json.loads(out.read_text()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zero-stage", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(os.environ["GRAINE_COUNT_SYNCS"]))
        return
    for stage in args.zero_stage:
        counts = measure(stage, args.steps)
        steady = [counts.get(s, 0) for s in range(2, args.steps + 1)]  # step 1 warms DeepSpeed up
        print(f"ZeRO {stage}: host scalar reads per step (train step + stop check), steps 2..{args.steps}: "
              f"max {max(steady)}, mean {sum(steady) / len(steady):.2f}; step 1: {counts.get(1, 0)}")


if __name__ == "__main__":
    main()
