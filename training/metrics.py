"""Training metrics: one line to stdout from rank 0, `logs/metrics.jsonl`, and TensorBoard.

MFU = achieved model FLOP/s per device / the device's peak for the run's precision, where achieved
FLOP/s = flops_per_token(seq_len) x tokens per second / devices. flops_per_token counts the forward and
backward passes of the model (about 6 x parameters + attention), not the recomputation of activation
checkpointing, so MFU compares runs fairly whatever they recompute. No peak is known for CPUs: there
TFLOP/s is reported and MFU is left out.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import torch

log = logging.getLogger("graine.metrics")

METRICS_FILE = "metrics.jsonl"

# Dense peak TFLOP/s per device, by a substring of torch.cuda.get_device_name() (first match wins).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("V100", {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
]


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def peak_tflops(name: str, precision: str) -> float | None:
    """The device's dense peak for `precision`, or None when unknown (CPUs, unlisted GPUs)."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peaks.get(precision) or None
    return None


def memory_gb() -> float:
    """Peak memory of this process: GPU allocations on GPU, resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Throughput:
    """Tokens and samples since the last report, and the time they took."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.tokens, self.samples, self.steps = time.perf_counter(), 0, 0, 0

    def add(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens
        self.steps += 1

    def rates(self, world_size: int, flops_per_token: float, peak: float | None) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tflops = flops_per_token * self.tokens / elapsed / world_size / 1e12
        out = {"tokens_per_s": self.tokens / elapsed, "samples_per_s": self.samples / elapsed,
               "steps_per_s": self.steps / elapsed, "tflops_per_device": tflops}
        if peak:
            out["mfu"] = tflops / peak
        return out


class MetricsLogger:
    """Writes metric records; only rank 0 writes anything. Training metrics go out every `interval` steps."""

    def __init__(self, log_dir: Path, rank: int, tensorboard: bool = True, interval: int = 1):
        self.rank, self.interval = rank, interval
        self.file = self.writer = None
        if rank != 0:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(log_dir / METRICS_FILE, "a", buffering=1)  # noqa: SIM115 (closed in close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(log_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: metrics go to %s only", log_dir / METRICS_FILE)

    def should_log(self, step: int) -> bool:
        """Whether the step just trained ends a log interval (where the interval's losses are read to the host)."""
        return step % self.interval == 0

    def log(self, step: int, values: dict, kind: str = "train") -> None:
        if self.rank != 0:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)
        log.info("%s step %d | %s", kind, step, format_values(values))

    def event(self, record: dict) -> None:
        """An event of the run (a loss spike, a rollback: training.spikes) as TensorBoard text."""
        if self.writer is not None:
            self.writer.add_text(f"events/{record['kind']}", json.dumps(record), record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def format_values(values: dict) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return " | ".join(parts)


def last_metrics(run_dir: str | Path) -> dict | None:
    """The last training record of `<run_dir>/logs/metrics.jsonl` (for `graine status`), or None."""
    path = Path(run_dir) / "logs" / METRICS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("kind") == "train":
            return record
    return None
