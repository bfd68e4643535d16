"""The pretraining loop: resume, train steps, metrics, evaluation, checkpoints, and clean stops.

Every rank runs the same loop. Decisions that must be unanimous (stop on a signal, a time budget or
the kill switch; skip a step whose gradient is not finite) are taken from all-reduced values at step
boundaries, so ranks never disagree about what happens next.

Where reductions run: the stop flags are host values and go through the group's CPU backend (gloo),
with no device sync; losses stay on the device (all-reduced there, NCCL on GPUs) and are read to the
host once per log interval, at a checkpoint and at the end. So a step costs no host sync of its own
beyond what DeepSpeed's optimizer does, unless loss spikes are watched (train.spike.action other than
off: the loss, and with ZeRO 1-3 the gradient norm, are read once per step).

The training state is kept by its owners, each with state_dict()/load_state_dict(): TrainState (step,
tokens, last loss and rates), the data loader (samples consumed, sample-index fingerprint, the ramp-up's
batch there), the LR schedule (its position), SkipGuard (steps skipped) and SpikePolicy (loss spikes: counts,
skipped sample ranges, rollbacks; training/spikes.py). `checkpoint_state()` composes
them into graine_state.json; `resume()` hands each its part of what checkpoints.layout.read_state read.
When to log, evaluate and save is asked of the metrics logger, the evaluator and the checkpointer.

Results of `Trainer.fit()`:
    "done"         the run reached train.train_tokens (checkpoint saved)
    "preempted"    SIGUSR1/SIGUSR2/SIGTERM arrived: saved; the runner requeues the job
    "time_budget"  train.exit_duration_min elapsed: saved; the runner requeues the job
    "stopped"      the kill-switch file appeared: saved; no requeue
"""

from __future__ import annotations

import gc
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from checkpoints.checkpointer import Checkpointer, SaveHooks
from checkpoints.layout import CONFIG, read_latest
from core.errors import StageError
from core.fs import write_atomic
from core.signals import STOP_SIGNALS, early_stop_signal
from core.stage import TaskContext
from training import init_from
from training.data_loader import GlobalBatchLoader, SampleIndex, validation_batches
from training.engine import build_engine, set_lr
from training.metrics import MetricsLogger, Throughput, device_name, memory_gb, peak_tflops
from training.schedule import BatchRampup, LRSchedule
from training.spikes import EventLog, SkipRanges, SpikePolicy

log = logging.getLogger("graine.train")

# Config keys whose change alters the sample order (named when the fingerprint does not match).
DATA_KEYS = ("seed", "train.seq_len", "preprocess", "tokenizer", "clean")


@dataclass
class TrainData:
    train: SampleIndex
    valid: SampleIndex | None
    lineage: dict  # upstream output hashes (tokenizer, preprocess)


def _same_loss(step: int, loss: torch.Tensor) -> torch.Tensor:
    return loss


def _nothing(*args) -> None:
    pass


@dataclass(frozen=True, kw_only=True)
class TrainHooks:
    """Seams of the training loop for tests (fault injection, pacing, inspection); each does nothing by
    default. A test harness builds one and passes it to `Trainer` (through `training.pretrain.train_step`):

        on_loss(step, loss) -> loss  each micro-batch's loss of step `step` before its backward pass
        after_step(step)             after the step's metrics, evaluation and checkpoint
        before_close(trainer)        on every rank when training ends, before the engine is released
        save                         the checkpointer's (checkpoints.checkpointer.SaveHooks)
    """

    on_loss: Callable[[int, torch.Tensor], torch.Tensor] = _same_loss
    after_step: Callable[[int], None] = _nothing
    before_close: Callable[[Trainer], None] = _nothing
    save: SaveHooks = SaveHooks()


@dataclass
class TrainState:
    """How far the run is: its steps and tokens, and its last loss and rates. With the data loader's
    position, the LR schedule's and the skip count, it is what a checkpoint records beside the model."""

    step: int = 0
    consumed_tokens: int = 0
    loss: torch.Tensor | float | None = None  # the last applied step's mean loss, on the device until read
    throughput: dict = field(default_factory=dict)  # the rates of this job's last log interval

    @property
    def last_loss(self) -> float | None:
        return None if self.loss is None else float(self.loss)

    def advance(self, tokens: int) -> int:
        """Start the next step, which consumes `tokens`; returns its number."""
        self.step += 1
        self.consumed_tokens += tokens
        return self.step

    def state_dict(self) -> dict:
        return {"step": self.step, "consumed_tokens": self.consumed_tokens, "loss": self.last_loss,
                "throughput": self.throughput}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.consumed_tokens = int(state["step"]), int(state["consumed_tokens"])
        self.loss = state.get("loss")


class SkipGuard:
    """Steps whose loss or gradient norm was not finite, whose update was dropped: counted and logged;
    `max_in_a_row` of them in a row stop the run, naming the last good checkpoint."""

    def __init__(self, max_in_a_row: int, ckpt_dir: Path):
        self.max_in_a_row, self.ckpt_dir = max_in_a_row, ckpt_dir
        self.skipped = 0  # in the whole run (checkpointed)
        self.in_a_row = 0  # in this job: a resumed one starts from a good checkpoint

    def record(self, step: int, skipped: bool, loss: torch.Tensor, grad_norm) -> None:
        if not skipped:
            self.in_a_row = 0
            return
        self.skipped += 1
        self.in_a_row += 1
        log.warning("step %d skipped: loss %s, grad norm %s (%d in a row, %d in all)", step,
                    float(loss), _to_float(grad_norm), self.in_a_row, self.skipped)
        if self.in_a_row >= self.max_in_a_row:
            latest = read_latest(self.ckpt_dir)
            where = f"{self.ckpt_dir / latest}" if latest else "none (no checkpoint was saved yet)"
            raise StageError(
                f"{self.in_a_row} consecutive steps had a non-finite loss or gradient norm "
                f"(train.max_skipped_steps={self.max_in_a_row}), at step {step}; last good "
                f"checkpoint: {where}. Lower train.lr or raise train.warmup_tokens, move the newer "
                "checkpoints away if needed, and run again to resume from it")

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped_steps", 0))


class Evaluator:
    """The validation loss over a fixed set of batches (validation_batches), every `interval` steps."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], interval: int, world_size: int):
        self.batches, self.interval, self.world = batches, interval, world_size

    def should_eval(self, step: int) -> bool:
        return bool(self.batches) and self.interval > 0 and step % self.interval == 0

    @torch.no_grad()
    def loss(self, engine) -> float:
        """The mean loss over every rank's batches (a collective: every rank calls it)."""
        engine.eval()
        device = engine.device
        total = torch.zeros(2, dtype=torch.float64, device=device)
        one = torch.ones((), dtype=torch.float64, device=device)
        for input_ids, labels in self.batches:
            loss = engine(input_ids.to(device), labels=labels.to(device))
            total += torch.stack([loss.double(), one])
        if self.world > 1:
            dist.all_reduce(total)
        engine.train()
        return (total[0] / total[1]).item()


class StopRequest:
    """Signal handlers that only set a flag; the loop acts on it at the next step boundary."""

    def __init__(self):
        self.signum = early_stop_signal()  # one that came while the task started up
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, ctx: TaskContext, model: torch.nn.Module, data: TrainData,
                 hooks: TrainHooks = TrainHooks()):
        self.ctx, self.cfg, self.t = ctx, ctx.cfg, ctx.cfg.train
        self.rank, self.world = ctx.rank, ctx.world_size
        self.started = time.monotonic()
        self.stop = StopRequest()
        self.data, self.hooks = data, hooks
        # The training state, each part kept by its owner and checkpointed through its state_dict().
        self.state = TrainState()
        self.lr = LRSchedule.from_config(self.t)
        self.loader = GlobalBatchLoader(data.train, BatchRampup.from_config(self.t), self.t.micro_batch_size,
                                        self.rank, self.world)
        self.flops_per_token = model.flops_per_token(self.t.seq_len)
        self.engine, self.optimizer = build_engine(model, self.t, self.world, self.loader.global_batch_size())
        run_dir = ctx.run_dir
        ck = self.cfg.checkpoint
        self.checkpointer = Checkpointer(run_dir / "checkpoints", ck.keep_last, ck.keep_every, ck.interval,
                                         hooks.save)
        self.skips = SkipGuard(self.t.max_skipped_steps, self.checkpointer.dir)
        self.metrics = MetricsLogger(run_dir / "logs", self.rank, interval=self.t.log_interval)
        self.spikes = SpikePolicy(self.t.spike, EventLog(run_dir / "logs", self.rank, self.metrics.event))
        self.loader.skips = SkipRanges.from_config(self.t.skip_samples)
        self.rollback_due = False  # the last step's spikes persist: roll back before going on
        # Relative to the run directory, so every rank on every node looks at the same file.
        self.kill_file = Path(run_dir) / (self.t.kill_switch_file or "KILL")
        self.evaluator = Evaluator(validation_batches(data.valid, self.t.eval_iters, self.t.global_batch_size,
                                                      self.t.micro_batch_size, self.rank, self.world),
                                   self.t.eval_interval, self.world)
        self.peak = peak_tflops(device_name(), self.t.precision)
        self.entropy: float | None = None  # of the training tokens, measured by rank 0 in fit()

    # ------------------------------------------------------------------------------------ resume
    def resume(self) -> None:
        saved = self.checkpointer.load(self.engine)
        if saved is None:
            # The one place a run's step 0 takes existing weights (train.init_from): after the engine is
            # built, and never once the run has a checkpoint of its own.
            source = init_from.initialise(self.engine, self.cfg, self.rank, self.checkpointer.check_safe)
            if source is None:
                log.info("no checkpoint in %s: starting from scratch", self.checkpointer.dir)
            else:
                self.data.lineage["init_from"] = source
            return
        init_from.check_unchanged(self.checkpointer.dir, self.t.init_from, saved.folder)
        if saved.lineage.get("init_from"):
            self.data.lineage["init_from"] = saved.lineage["init_from"]
            log.info("resuming this run's own checkpoint: train.init_from=%r is not loaded again", self.t.init_from)
        hint = changed_data_keys(saved.folder / CONFIG, self.cfg.to_dict())
        self.loader.load_state_dict(saved.raw, override_hint=hint)
        self.state.load_state_dict(saved.raw)
        self.lr.load_state_dict(saved.raw["lr_schedule"])
        self.skips.load_state_dict(saved.raw)
        self.spikes.load_state_dict(saved.raw.get("spikes") or {}, saved.step)
        self.loader.skips = SkipRanges.from_config(self.t.skip_samples) | self.spikes.ranges
        log.info("resumed from %s: step %d, %d samples, %d tokens", saved.folder, self.state.step,
                 self.loader.consumed_samples, self.state.consumed_tokens)

    # ------------------------------------------------------------------------------------- loop
    def fit(self) -> str:
        self.resume()
        if self.rank == 0:
            self.entropy = unigram_entropy(self.data.train)
            log.info("unigram entropy of the training tokens: %.4f nats", self.entropy)
        throughput = Throughput()
        interval_losses: list[torch.Tensor] = []
        while not (reason := self.stop_reason()):
            batch = self.loader.global_batch_size()
            loss, grad_norm, lr, skipped = self.train_step()
            step = self.state.step
            throughput.add(batch, batch * self.t.seq_len)
            if not skipped or self.spikes.skipping:  # a skipped spike's loss is shown, not kept
                interval_losses.append(loss)
            if not skipped:
                self.state.loss = loss
            if self.metrics.should_log(step):
                self.log_metrics(interval_losses, grad_norm, lr, throughput)
                interval_losses = []
                throughput.reset()
            if self.rollback_due:
                self.roll_back(step)
                interval_losses = []
            elif self.evaluator.should_eval(step):
                self.evaluate()
            if self.checkpointer.should_save(step) and self.checkpointer.last_saved != step:
                self.save()
            self.hooks.after_step(step)
        if self.checkpointer.last_saved != self.state.step:
            self.save()
        log.info("pretraining %s at step %d (%d tokens); last loss %s", reason, self.state.step,
                 self.state.consumed_tokens, self.state.last_loss)
        self.write_result(reason)
        return reason

    def stop_reason(self) -> str | None:
        """Why the run stops before the next step, agreed by all ranks, or None to continue."""
        if self.state.consumed_tokens >= self.t.train_tokens:
            return "done"
        over_time = self.t.exit_duration_min and time.monotonic() - self.started >= self.t.exit_duration_min * 60
        # A host tensor: reduced by the group's CPU backend, without waiting for the device.
        flags = torch.tensor([float(self.stop.signum != 0), float(bool(over_time)),
                              float(self.kill_file.exists())], device="cpu")
        if self.world > 1:
            dist.all_reduce(flags)
        signalled, timed_out, killed = flags.tolist()
        if signalled:
            log.warning("stop signal received: saving and exiting for requeue")
            return "preempted"
        if timed_out:
            log.warning("train.exit_duration_min=%g reached: saving and exiting for requeue", self.t.exit_duration_min)
            return "time_budget"
        if killed:
            log.warning("kill switch %s exists: saving and stopping (remove it to continue the run)", self.kill_file)
            return "stopped"
        return None

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor | float | None, float, bool]:
        """One optimizer step over a global batch: (mean loss on the device, grad norm, lr, skipped)."""
        # -- data and schedules: the batch size follows the ramp-up, the LR the tokens consumed
        global_batch = self.loader.global_batch_size()
        if global_batch != self.engine.train_batch_size():
            self.engine.set_train_batch_size(global_batch)
        micro_batches = self.loader.next_batch()
        step = self.state.advance(global_batch * self.t.seq_len)
        lr = self.lr.step(self.state.consumed_tokens) * self.spikes.lr_scale(self.loader.consumed_samples - global_batch)
        set_lr(self.optimizer, lr)

        # -- forward and backward of each micro-batch; DeepSpeed steps at the last one
        self.engine.train()
        device = self.engine.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        mean_loss = host_loss = None
        for i, (input_ids, labels) in enumerate(micro_batches):
            # The boundary is the last micro-batch of this global batch, said explicitly: DeepSpeed's own
            # rule (micro-steps so far modulo the accumulation) falls elsewhere once the ramp-up has
            # changed the accumulation after an odd number of micro-steps.
            self.engine.set_gradient_accumulation_boundary(i == len(micro_batches) - 1)
            loss = self.hooks.on_loss(step, self.engine(input_ids.to(device), labels=labels.to(device)))
            loss_sum += loss.detach().double()
            if self.spikes.active and i == len(micro_batches) - 1:
                # The step's loss is known before its update: a spike's update is dropped by making its
                # gradient non-finite, which the non-finite path below (ZeRO 0) or DeepSpeed's ZeRO
                # optimizer then skips whole (weights and Adam moments untouched). One host read per step.
                mean_loss = self._mean_loss(loss_sum, len(micro_batches))
                host_loss = float(mean_loss)
                if self.spikes.before_update(step, host_loss):
                    loss = loss * float("nan")
            self.engine.backward(loss)
            drop = False
            if i == len(micro_batches) - 1:
                grad_norm = self._zero0_grad_norm()
                # Without ZeRO, DeepSpeed would apply a non-finite gradient: this step is then not a
                # boundary (no optimizer step, no clipping of absent gradients), and the gradient goes.
                drop = grad_norm is not None and not math.isfinite(grad_norm)
                if drop:
                    self.engine.set_gradient_accumulation_boundary(False)
            self.engine.step()
            if drop:
                for p in self.engine.module.parameters():
                    p.grad = None

        # -- the mean loss over all ranks, kept on the device. A non-finite loss makes a non-finite
        # gradient: DeepSpeed's ZeRO optimizer then skips the update (was_step_applied), and without
        # ZeRO the loop above drops it; every rank sees the same reduced gradient norm.
        loss = mean_loss if mean_loss is not None else self._mean_loss(loss_sum, len(micro_batches))
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
        skipped = not self.engine.was_step_applied() or (
            isinstance(grad_norm, float) and not math.isfinite(grad_norm))
        self.skips.record(step, skipped and not self.spikes.skipping, loss, grad_norm)
        self.rollback_due = False
        if self.spikes.active and not (skipped and not self.spikes.skipping):
            where = {"tokens": self.state.consumed_tokens, "samples": self.loader.consumed_samples}
            norm = None if self.spikes.skipping else _to_float(grad_norm)
            self.rollback_due = self.spikes.after_update(step, host_loss, norm, where) == "rollback"
        return loss, grad_norm, lr, skipped

    def _mean_loss(self, loss_sum: torch.Tensor, micro_batches: int) -> torch.Tensor:
        """The mean loss over all ranks' micro-batches, on the device."""
        totals = torch.stack([loss_sum, torch.full((), float(micro_batches), dtype=torch.float64,
                                                   device=loss_sum.device)])
        if self.world > 1:
            dist.all_reduce(totals)
        return totals[0] / totals[1]

    def _zero0_grad_norm(self) -> float | None:
        """The global gradient norm without ZeRO (the gradients are all-reduced by now), None with ZeRO
        1-3, whose optimizer detects a non-finite norm and skips the update by itself."""
        if self.engine.zero_optimization_stage() != 0:
            return None
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()

    # ------------------------------------------------------------------------- metrics and eval
    def log_metrics(self, losses: list[torch.Tensor], grad_norm, lr: float, throughput: Throughput) -> None:
        host = torch.stack(losses).tolist() if losses else []  # the interval's one read of the device
        rates = throughput.rates(self.world, self.flops_per_token, self.peak)
        self.state.throughput = rates
        grad_norm = _to_float(grad_norm)
        values = {"loss": float(np.mean(host)) if host else float("nan"), "lr": lr,
                  "grad_norm": grad_norm if grad_norm is not None else float("nan"),
                  "global_batch": self.loader.global_batch_size(), "tokens": self.state.consumed_tokens,
                  "skipped": self.skips.skipped, **self.spikes.metrics(), **rates, "mem_gb": memory_gb()}
        self.metrics.log(self.state.step, values)

    def evaluate(self) -> float:
        loss = self.evaluator.loss(self.engine)
        self.metrics.log(self.state.step, {"loss": loss, "perplexity": math.exp(min(loss, 50))}, kind="valid")
        return loss

    # ------------------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        """graine_state.json of a save now: each component's state, and the upstream outputs the data
        came from (the checkpointer adds the world size and the time)."""
        return {**self.state.state_dict(), **self.loader.state_dict(), "lr_schedule": self.lr.state_dict(),
                **self.skips.state_dict(), "spikes": self.spikes.state_dict(), "lineage": self.data.lineage}

    def save(self) -> None:
        self.checkpointer.protect = self.spikes.before_save(self.state.step)
        self.checkpointer.save(self.engine, self.state.step, self.checkpoint_state(), self.cfg.to_yaml())

    def roll_back(self, step: int) -> None:
        """Spikes persist (SpikePolicy decided it, on every rank alike): reload the last checkpoint saved
        before they began, skip the samples consumed since (plus the margin), keep the step count, and
        save at once, so a kill from here on resumes onto this same trajectory."""
        position, where = self.loader.position, {"tokens": self.state.consumed_tokens,
                                                 "samples": self.loader.consumed_samples}
        saved = self.checkpointer.load(self.engine, self.checkpointer.dir / f"global_step{self.spikes.anchor}")
        self.loader.load_state_dict(saved.raw)
        self.state.load_state_dict(saved.raw)
        self.state.step = step  # steps count on: names and metrics stay unique
        self.lr.load_state_dict(saved.raw["lr_schedule"])
        self.spikes.rolled_back(step, saved.raw, self.loader.position, position, where, self.loader.consumed_samples)
        self.loader.skips = SkipRanges.from_config(self.t.skip_samples) | self.spikes.ranges
        self.save()

    def write_result(self, reason: str) -> None:
        if self.rank != 0:
            return
        out = self.ctx.out_dir
        out.mkdir(parents=True, exist_ok=True)
        result = {"result": reason, "step": self.state.step, "tokens": self.state.consumed_tokens,
                  "loss": self.state.last_loss, "skipped_steps": self.skips.skipped, "unigram_entropy": self.entropy,
                  "init_from": self.data.lineage.get("init_from")}
        # Atomic: `graine status` may read it at any moment.
        write_atomic(out / "result.json", json.dumps(result, indent=1))

    # ---------------------------------------------------------------------------------- close
    def close(self) -> None:
        """Release DeepSpeed and the process group before exit (avoids gloo's shutdown abort)."""
        self.hooks.before_close(self)
        self.stop.restore()
        self.metrics.close()
        self.engine = self.optimizer = self.checkpointer = None
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


def _to_float(value) -> float | None:
    """A gradient norm as DeepSpeed gives it (float, tensor or None) as a float, read when needed."""
    return None if value is None else float(value)


def changed_data_keys(saved_config: Path, current: dict) -> str:
    """The config keys that changed the data since the checkpoint, as a hint for the error."""
    try:
        saved = yaml.safe_load(saved_config.read_text())
    except (OSError, yaml.YAMLError):
        return ""
    changed = []
    for key in DATA_KEYS:
        old, new = saved, current
        for part in key.split("."):
            old, new = (old or {}).get(part), (new or {}).get(part)
        if old != new:
            changed += [f"{key}: {old!r} -> {new!r}"] if not isinstance(new, dict) else \
                [f"{key}.{k}: {(old or {}).get(k)!r} -> {v!r}" for k, v in new.items() if (old or {}).get(k) != v]
    return ("changed since the checkpoint: " + ", ".join(changed)) if changed else ""


def unigram_entropy(index: SampleIndex, max_samples: int = 2000) -> float:
    """Entropy (nats) of the token distribution of the first samples: the loss a unigram model gets."""
    n = min(len(index), max_samples)
    counts = np.bincount(np.concatenate([index[i][:-1] for i in range(n)]))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
