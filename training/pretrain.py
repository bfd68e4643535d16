"""Stage `pretrain`: parse -> build (data, model, engine) -> train -> close. The work lives in
training.trainer (loop), training.engine (DeepSpeed), training.data_loader, training.schedule,
training.metrics and checkpoints/ (save, publish, resume).

Runs as one process per device; every process calls `train_step(ctx)`, which returns "done",
"preempted", "time_budget" or "stopped" (see training.trainer). Re-running the same command on an
existing run directory resumes from the latest valid checkpoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import lineage
from core.config import RunConfigBase as RunConfig
from core.stage import Stage, Step, TaskContext
from training.config import CheckpointConfig, ModelConfig, TrainConfig, validate

# torch, DeepSpeed and what imports them are imported where they are used: this module is imported
# whenever the run's config is assembled (`graine --help` included), which must not pay for them.
if TYPE_CHECKING:
    import torch

    from training.trainer import TrainData, TrainHooks


def build_data(ctx: TaskContext) -> tuple[TrainData, int]:
    """The train/valid sample indexes over the preprocess stage's shards, and the vocabulary size."""
    from data_prep.sample_index import BlendedSampleIndex, EmptySplitError
    from data_prep.tokenizer import tokenizer_info
    from training.distributed import rank_zero_first
    from training.trainer import TrainData

    cfg, shards, tokenizer = ctx.cfg, ctx.input_dir("preprocess"), ctx.input_dir("tokenizer")
    # As many samples as the token budget takes (plus one global batch of slack), each dataset repeating
    # its own epochs as its weight asks. The index's prefix does not depend on this length, so raising
    # train.train_tokens later extends the same order and a resume stays valid.
    needed = -(-cfg.train.train_tokens // cfg.train.seq_len) + cfg.train.global_batch_size
    # Rank 0 checks the upstream outputs against their records (one reader is enough), builds and
    # publishes the cached indexes; the other ranks then map them read-only. A failure reaches every rank.
    with rank_zero_first("checking the inputs and building the sample index"):
        if ctx.rank == 0:
            lineage.check_inputs({n: ctx.input_dir(n) for n in ("preprocess", "tokenizer")}, full=cfg.verify_inputs == "full")
        train = BlendedSampleIndex(shards, cfg.train.seq_len, cfg.seed, split="train", num_samples=needed,
                                   tokenizer_dir=tokenizer)
        try:
            valid = BlendedSampleIndex(shards, cfg.train.seq_len, cfg.seed, split="valid")
        except EmptySplitError as exc:  # preprocess.validation_fraction=0, or documents shorter than seq_len
            ctx.log.warning("no validation split (%s): validation loss disabled", exc)
            valid = None
    info = tokenizer_info(tokenizer)
    hashes = {name: (lineage.read_record(ctx.input_dir(name)) or {}).get("output_hash")
              for name in ("tokenizer", "preprocess")}
    return TrainData(train, valid, {**hashes, "tokenizer_model": info.hash}), info.vocab_size


def build_model(cfg: RunConfig, vocab_size: int) -> torch.nn.Module:
    """The initial model for the run's ZeRO stage and precision (training.engine.build_model)."""
    from training.engine import build_model

    return build_model(cfg.model, cfg.train, vocab_size, cfg.seed)


def train_step(ctx: TaskContext, hooks: TrainHooks | None = None) -> str:
    """The stage's step on this rank; `hooks` are tests' seams into the loop (training.trainer.TrainHooks)."""
    import torch

    from training.distributed import init_process_group, launch_env
    from training.engine import ensure_cpu_accelerator
    from training.trainer import Trainer, TrainHooks

    ensure_cpu_accelerator()
    # Python's and numpy's streams are seeded per rank, torch's alike on every rank (the weights draw from
    # generators of their own, see build_model): their states are saved in every checkpoint, which two
    # runs of one config then write alike.
    random.seed(ctx.cfg.seed + ctx.rank)
    np.random.seed(ctx.cfg.seed + ctx.rank)
    torch.manual_seed(ctx.cfg.seed)
    # The process group exists before the data and DeepSpeed: DeepSpeed adopts it as it is.
    init_process_group(launch_env(), ctx.cfg.train.dist_timeout_min)
    data, vocab_size = build_data(ctx)
    trainer = Trainer(ctx, build_model(ctx.cfg, vocab_size), data, hooks or TrainHooks())
    try:
        return trainer.fit()
    finally:
        trainer.close()


def summary(out_dir: Path) -> str:
    """The finished run's result, or, while it trains or waits to resume, its last checkpoint and metrics."""
    from checkpoints.checkpointer import latest_checkpoint_info
    from training.metrics import last_metrics
    from training.spikes import describe_event, read_events

    info = latest_checkpoint_info(out_dir.parent) or {}
    try:
        result = json.loads((out_dir / "result.json").read_text())
    except (OSError, ValueError):
        result = None
    lines = []
    if result and result.get("result") == "done":
        lines.append(f"done at step {result['step']} ({result['tokens']:,} tokens): loss {result['loss']:.4f} "
                     f"vs unigram entropy {result['unigram_entropy']:.4f} nats")
    elif result:
        lines.append(f"{result['result']} at step {result['step']} ({result['tokens']:,} tokens); the same "
                     "command resumes it")
    if info:
        loss = f"loss {info['loss']:.4f}, " if isinstance(info.get("loss"), float) else ""
        lines.append(f"latest valid checkpoint (manifest and sizes): step {info.get('step')}, {info.get('tokens') or 0:,} tokens, "
                     f"{loss}{info.get('path')}")
    last = last_metrics(out_dir.parent)
    if last and not (result and result.get("result") == "done"):
        lines.append(f"last metrics: step {last['step']}, loss {last['loss']:.4f}, lr {last['lr']:.3g}, "
                     f"grad norm {last.get('grad_norm', float('nan')):.3g}, {last.get('tokens_per_s', 0):,.0f} tokens/s"
                     + (f", MFU {last['mfu']:.1%}" if last.get("mfu") else ""))
    lines += [f"spike event: {describe_event(e)}" for e in read_events(out_dir.parent)[-3:]]  # the last three
    return "\n".join(lines)


def check(cfg: RunConfig, world_size: int, gpus: bool) -> None:
    """What would fail the job at start-up, for a job of `world_size` ranks with or without GPUs;
    the runner calls it before anything is submitted (ConfigError names the key and the fix)."""
    from training.engine import check_devices
    from training.init_from import check as check_init_from
    from training.schedule import BatchRampup

    BatchRampup.from_config(cfg.train).check_divisible(cfg.train.micro_batch_size, world_size)
    check_devices(cfg.train, gpus)
    check_init_from(cfg)


def record(out_dir: Path) -> dict:
    """What the completion record adds: the source the run was initialised from (train.init_from)."""
    try:
        return {"init_from": json.loads((out_dir / "result.json").read_text()).get("init_from")}
    except (OSError, ValueError, AttributeError):
        return {}


STAGE = Stage(
    name="pretrain",
    needs=("preprocess", "tokenizer"),
    sections=("seed", "model", "train", "checkpoint"),
    steps=(Step("train", run=train_step, kind="gpu"),),
    description="BLOOM-style pretraining with DeepSpeed ZeRO; resumes from its latest valid checkpoint",
    publish=False,
    summary=summary,
    check=check,
    record=record,
    config={"model": ModelConfig, "train": TrainConfig, "checkpoint": CheckpointConfig},
    validate=validate,
)
