"""Steps/s and tokens/s of the demo model on CPU with 1 and 2 processes (DeepSpeed, gloo, fp32).

    .venv/bin/python tests/benchmarks/bench_pretrain.py [--steps 60] [key=value ...]

Runs the real pretrain step (tests/support/train_harness.py) on synthetic tokens with the demo
config's model and batch, no checkpoint, and reads the throughput it logged; the first steps are
left out as warm-up. Overrides are applied to configs/demo.yaml (e.g. model.hidden_size=128).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: the repository root, for tests.support

from pipeline.config import load_config  # noqa: E402
from tests.support.train_harness import launch, records  # noqa: E402


def demo_overrides(extra: list[str]) -> list[str]:
    cfg = load_config(REPO / "configs" / "demo.yaml", extra)
    m, t = cfg.model, cfg.train
    return [f"model.num_layers={m.num_layers}", f"model.hidden_size={m.hidden_size}", f"model.num_heads={m.num_heads}",
            f"model.pad_vocab_to_multiple={m.pad_vocab_to_multiple}", f"train.seq_len={t.seq_len}",
            f"train.micro_batch_size={t.micro_batch_size}", f"train.global_batch_size={t.global_batch_size}",
            f"train.zero_stage={t.zero_stage}", f"train.precision={t.precision}", f"train.optimizer={t.optimizer}"]


def measure(nproc: int, steps: int, overrides: list[str], vocab: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        seq_len = int(next(o for o in overrides if o.startswith("train.seq_len=")).split("=")[1])
        batch = int(next(o for o in overrides if o.startswith("train.global_batch_size=")).split("=")[1])
        over = [*overrides, f"train.train_tokens={steps * seq_len * batch}", "train.log_interval=5",
                "train.eval_interval=0", f"checkpoint.interval={10 * steps}", "train.warmup_tokens=0"]
        result, output = launch(run_dir, over, nproc=nproc, timeout=600, num_samples=steps * batch,
                                vocab=vocab)
        if result != "done":
            raise SystemExit(f"benchmark run failed ({result}):\n{output[-3000:]}")
        recs = records(run_dir)[2:]  # the first 10 steps are warm-up
        return {k: statistics.median(r[k] for r in recs) for k in ("steps_per_s", "tokens_per_s", "tflops_per_device")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--vocab", type=int, default=8000, help="vocabulary of the synthetic tokens (demo: 8000)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = demo_overrides(args.overrides)
    rows = []
    for nproc in (1, 2):
        r = measure(nproc, args.steps, [*overrides, f"train.devices_per_node={nproc}"], args.vocab)
        rows.append((nproc, r))
    print(f"\ndemo model on CPU ({', '.join(overrides)})")
    print(f"{'processes':>9} | {'steps/s':>8} | {'tokens/s':>9} | {'TFLOP/s/proc':>12}")
    print("-" * 48)
    for nproc, r in rows:
        print(f"{nproc:>9} | {r['steps_per_s']:>8.2f} | {r['tokens_per_s']:>9.0f} | {r['tflops_per_device']:>12.4f}")


if __name__ == "__main__":
    main()
