"""Host synchronisations per optimizer step of the real training loop (issue 14's CPU-checkable guard).

On a GPU every read of a device scalar to the host (`.item()`, `float(t)`, `bool(t)`: aten's
`_local_scalar_dense`) waits for the device; the loop must not pay that per step. On CPU there is no
device to wait for, but the same calls still go through the dispatcher, so they can be counted here: a
TorchDispatchMode counts `_local_scalar_dense` while each `Trainer.train_step` and `Trainer.stop_reason`
runs (logging, evaluation and checkpoint steps are excluded by the config: intervals beyond the run).
Every call is counted, DeepSpeed's own included.

    .venv/bin/python tests/benchmarks/count_syncs.py [--zero-stage 1] [--steps 12] [--set train.spike.action=rollback]
    .venv/bin/python -m tests.benchmarks.count_syncs [...]           (the same, from the repository root)

Prints one line per configuration; tests/pipeline/test_syncs.py runs it with a bound.
Run as one process (world size 1, gloo) through torch.distributed.run (`-m tests.benchmarks.count_syncs --worker`).
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


def who(stack) -> str:
    """Whose read: torch's optimizer (its CPU implementation reads each step counter; CUDA's fused one
    does not), DeepSpeed's engine, or graine (the code of this repository)."""
    if any("/torch/optim/" in f.filename for f in stack):
        return "torch.optim"
    caller = next(f.filename for f in reversed(stack) if "site-packages/torch/" not in f.filename)
    return "deepspeed" if "/deepspeed/" in caller else "graine"


def worker(spec: dict) -> None:
    import traceback

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from tests.support import train_harness
    from training import trainer as trainer_mod

    counts: Counter = Counter()
    steps = {"n": 0}

    class CountScalarReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                stack = traceback.extract_stack()[:-1]
                counts[f"{steps['n']}:{who(stack)}"] += 1
                if steps["n"] == 3 and os.environ.get("COUNT_SYNCS_WHERE"):  # one step's callers, to find them
                    frames = [f for f in stack if "site-packages/torch/" not in f.filename]
                    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-3:][::-1])
                    print(f"scalar read: {where}", file=sys.stderr)
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


def measure(zero_stage: int, steps: int, extra: list[str] = ()) -> dict[int, Counter]:
    """{step: {whose: scalar reads during that step and the stop check after it}}, from a fresh process."""
    from tests.support import train_harness

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, out = Path(tmp) / "run", Path(tmp) / "counts.json"
        overrides = [f"train.zero_stage={zero_stage}", f"train.train_tokens={steps * 4 * 32}",
                     f"train.decay_tokens={steps * 4 * 32}", "train.log_interval=100000", "train.eval_interval=0",
                     "checkpoint.interval=100000", *extra]
        spec = train_harness.write_spec(run_dir, overrides, nproc=1)
        spec.rename(Path(tmp) / "spec.json")
        env = train_harness.env({"GRAINE_COUNT_SYNCS": json.dumps({"run_dir": str(run_dir), "out": str(out)})})
        env.pop("COUNT_SYNCS_WHERE", None) if not os.environ.get("COUNT_SYNCS_WHERE") else None
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                               "-m", "tests.benchmarks.count_syncs", "--worker"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        if os.environ.get("COUNT_SYNCS_WHERE"):
            print("\n".join(line for line in proc.stderr.splitlines() if "scalar read:" in line))
        if not out.exists():
            raise RuntimeError(f"the training process wrote no counts (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                               f"\n{proc.stderr[-3000:]}")
        per_step: dict[int, Counter] = {}
        for key, n in json.loads(out.read_text()).items():
            step, owner = key.split(":")
            per_step.setdefault(int(step), Counter())[owner] += n
        return per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zero-stage", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.spike.action=rollback")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(os.environ["GRAINE_COUNT_SYNCS"]))
        return
    for stage in args.zero_stage:
        counts = measure(stage, args.steps, args.set)
        steady = range(2, args.steps + 1)  # step 1 warms DeepSpeed up
        parts = []
        for owner in ("graine", "deepspeed", "torch.optim"):
            per = [counts.get(s, Counter())[owner] for s in steady]
            parts.append(f"{owner} max {max(per)} (mean {sum(per) / len(per):.2f})")
        print(f"ZeRO {stage}{' ' + ' '.join(args.set) if args.set else ''}, host scalar reads per optimizer step (train step + stop check, steps 2..{args.steps}, "
              f"no logging/eval/save steps): " + ", ".join(parts))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # run as a script: the repository root, for tests.support
    main()
