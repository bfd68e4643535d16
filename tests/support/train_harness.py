"""Run the real `pretrain` step in real processes (torch.distributed.run, gloo, DeepSpeed on CPU).

As a module (`python -m tests.support.train_harness SPEC`, one process per rank, the repository root
on PYTHONPATH): builds a TaskContext from a JSON spec and calls
`training.pretrain.train_step(ctx, hooks)`, the hooks made from the spec's "faults" (train_faults). The
data is a deterministic synthetic token stream (a noisy Markov chain, so the loss can fall) instead of
the preprocess stage's sample index; the model is a small one, built by the stage itself. The spec's
"pathological": [start, end] makes those samples noise (uniform random tokens): the loss spikes on them.

From tests: `launch(...)` starts it (`faults={...}` injects train_faults' faults) and `losses(...)` reads
the per-step losses it logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.support.train_faults import train_hooks

REPO = Path(__file__).resolve().parents[2]
VOCAB = 96


class SyntheticTokens:
    """Sample i is generated from seed (base, i): the same sample whoever asks for it. Samples in
    `pathological` [start, end) are uniform random tokens instead of the chain."""

    def __init__(self, num_samples: int, seq_len: int, seed: int, vocab: int = VOCAB,
                 pathological: tuple[int, int] | None = None):
        self.n, self.seq_len, self.seed, self.vocab = num_samples, seq_len, seed, vocab
        self.bad = tuple(pathological) if pathological else None
        bad = f":bad={self.bad}" if self.bad else ""
        self.fingerprint = hashlib.sha256(f"synthetic:{num_samples}:{seq_len}:{seed}:{vocab}{bad}".encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, i])
        if self.bad and self.bad[0] <= i < self.bad[1]:
            return rng.integers(self.vocab, size=self.seq_len + 1).astype(np.int64)
        out = np.empty(self.seq_len + 1, dtype=np.int64)
        out[0] = rng.integers(self.vocab)
        noise = rng.random(self.seq_len) < 0.1
        jumps = rng.integers(self.vocab, size=self.seq_len)
        for t in range(self.seq_len):  # next = 5 * prev + 1 mod V, 10% of the time a random token
            out[t + 1] = jumps[t] if noise[t] else (5 * out[t] + 1) % self.vocab
        return out


def base_overrides(run_dir: Path) -> list[str]:
    """A run of 16 steps of 4 samples x 32 tokens, saving every 4 steps."""
    model = ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.pad_vocab_to_multiple=32"]
    return [f"run_dir={run_dir}", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=4",
            "train.train_tokens=2048", "train.lr=3e-3", "train.warmup_tokens=256", "train.decay_tokens=2048",
            "train.log_interval=1", "train.eval_interval=8", "train.eval_iters=1", "checkpoint.interval=4",
            "checkpoint.keep_last=2", "train.devices_per_node=2", *model]


# ------------------------------------------------------------------------------------ worker side
def worker(spec_path: str, on_exit=None, hooks: dict | None = None) -> None:
    """One rank's run of the spec; `hooks` adds TrainHooks fields to those of the spec's faults."""
    from core.stage import TaskContext
    from pipeline.config import load_config
    from pipeline.task import setup_logging
    from training import pretrain
    from training.trainer import TrainData

    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    setup_logging(rank)
    cfg = load_config(None, spec["overrides"])
    n, vocab = spec.get("num_samples", 4096), spec.get("vocab", VOCAB)

    def build_data(ctx):
        t = ctx.cfg.train
        data = TrainData(SyntheticTokens(n, t.seq_len, ctx.cfg.seed, vocab, spec.get("pathological")),
                         SyntheticTokens(64, t.seq_len, ctx.cfg.seed + 1, vocab),
                         {"tokenizer": "synthetic", "preprocess": "synthetic"})
        return data, vocab

    pretrain.build_data = build_data  # the model is the stage's own (training.engine.build_model)
    ctx = TaskContext(cfg, "pretrain", "train", rank, world, out_dir=Path(cfg.run_dir) / "pretrain",
                      work_dir=Path(cfg.run_dir) / ".work")
    code = 0
    try:
        result = pretrain.train_step(ctx, dataclasses.replace(train_hooks(spec.get("faults") or {}, rank),
                                                              **(hooks or {})))
    except Exception as exc:  # reported to the test through the result file and the exit code
        import traceback

        traceback.print_exc()
        result, code = f"error: {type(exc).__name__}: {exc}", 1
    Path(cfg.run_dir, f"result-rank{rank}.json").write_text(json.dumps({"result": result}))
    if on_exit is not None:  # a caller's last word before the hard exit below
        on_exit()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # gloo's shutdown race (DEEPSPEED_CPU.md): no interpreter teardown


# -------------------------------------------------------------------------------------- test side
def env(extra: dict | None = None) -> dict:
    out = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PYTHONUNBUFFERED": "1"}
    return {**out, **(extra or {})}


def command(spec_file: Path, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "tests.support.train_harness", str(spec_file)]


def write_spec(run_dir: Path, overrides: list[str], nproc: int, **extra) -> Path:
    """The worker's spec: the harness's overrides, then `overrides`; `extra` (faults, num_samples, ...) as is."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = run_dir.parent / f"{run_dir.name}-spec.json"
    spec.write_text(json.dumps({"overrides": [*base_overrides(run_dir), f"train.devices_per_node={nproc}",
                                              *overrides], **extra}))
    return spec


def launch(run_dir: Path, overrides: list[str] = (), nproc: int = 2, extra_env: dict | None = None,
           timeout: float = 120, **extra) -> tuple[str, str]:
    """Run the step to its end; returns (rank 0's result, combined output). `extra` goes into the spec
    (`faults={...}`: see train_faults), `extra_env` into the environment."""
    spec = write_spec(run_dir, list(overrides), nproc, **extra)
    for old in run_dir.glob("result-rank*.json"):
        old.unlink()
    proc = subprocess.Popen(command(spec, nproc), env=env(extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_9(proc)  # the ranks too: torch.distributed.run starts them in their own sessions
        raise
    return read_result(run_dir, proc.returncode), output


def read_result(run_dir: Path, returncode: int | None = None) -> str:
    """Rank 0's result, else the first rank's that wrote one. A decision every rank takes alike (a
    unanimous stop) ends them all with the same result, but torch.distributed.run kills the others as
    soon as one exits with an error, so the rank that wrote first is not always rank 0."""
    for path in sorted(run_dir.glob("result-rank*.json"), key=lambda p: int(p.stem.removeprefix("result-rank"))):
        try:
            return json.loads(path.read_text())["result"]
        except (OSError, ValueError, KeyError):
            continue
    return f"no result (exit {returncode})"


def start(run_dir: Path, overrides: list[str] = (), nproc: int = 2, faults: dict | None = None,
          **extra) -> subprocess.Popen:
    """Start the step in the background (its own process group, so a test can kill -9 all of it)."""
    spec = write_spec(run_dir, list(overrides), nproc, faults=faults or {}, **extra)
    return subprocess.Popen(command(spec, nproc), env=env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The rank processes under the launcher (torch.distributed.run starts them in their own sessions)."""
    import psutil

    return [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]


def kill_9(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank at once, as a node failure would."""
    for pid in [proc.pid, *worker_pids(proc)]:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    proc.wait()


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    path = run_dir / "logs" / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # cut by a kill -9
        if rec["kind"] == kind:
            out.append(rec)
    return out


def losses(run_dir: Path) -> dict[int, float]:
    """{step: loss}; a step logged twice (before a kill and after the resume) keeps its last value."""
    return {r["step"]: r["loss"] for r in records(run_dir)}


if __name__ == "__main__":
    worker(sys.argv[1])
