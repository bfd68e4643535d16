"""The DeepSpeed engine: ZeRO stage, precision, clipping, accumulation, AdamW and its parameter groups.

The LR is not handed to DeepSpeed as a scheduler: the trainer sets it on the optimizer's groups before
every step from the tokens consumed (training.schedule), so resuming needs no scheduler state and a
skipped step cannot advance it by accident.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

from core.errors import ConfigError
from training.config import TrainConfig

if TYPE_CHECKING:
    from training.model import BloomModel

log = logging.getLogger("graine.engine")



def ensure_cpu_accelerator() -> None:
    """DeepSpeed picks its accelerator at import time; without a GPU it must be told `cpu`."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def build_optimizer(model: BloomModel, t: TrainConfig) -> torch.optim.Optimizer:
    groups = model.param_groups(t.weight_decay)
    kwargs = {"lr": t.lr, "betas": (t.beta1, t.beta2), "eps": t.eps}
    if t.optimizer == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    if torch.cuda.is_available():
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def check_devices(t: TrainConfig, gpus: bool) -> None:
    """Precision and optimizer against the devices the job gets; checked before submission and in the job."""
    if t.precision == "fp16" and not gpus:
        raise ConfigError("train.precision=fp16 needs a GPU (DeepSpeed refuses fp16 on CPU); use fp32 or bf16, "
                          "or a GPU profile (cluster.profile)")
    if t.optimizer == "cpu_adam" and gpus and t.zero_stage == 0:
        raise ConfigError("train.optimizer=cpu_adam on GPU offloads the optimizer, which needs "
                          "train.zero_stage >= 1; raise train.zero_stage or use adamw")


def deepspeed_config(t: TrainConfig, world_size: int, global_batch_size: int) -> dict:
    """DeepSpeed's JSON config for the first global batch (the ramp-up changes accumulation later)."""
    check_devices(t, torch.cuda.is_available())
    zero: dict = {"stage": t.zero_stage}
    if t.optimizer == "cpu_adam" and torch.cuda.is_available():
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": global_batch_size // (t.micro_batch_size * world_size),
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        # Dynamic loss scaling for V100s (BLOOM's 176B run trained in bf16 on A100s instead).
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 12},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,  # graine logs its own metrics
        "wall_clock_breakdown": False,
    }


def build_engine(model: BloomModel, t: TrainConfig, world_size: int, global_batch_size: int):
    """(engine, optimizer): the model wrapped by `deepspeed.initialize`, and the client optimizer."""
    ensure_cpu_accelerator()
    import deepspeed

    if t.activation_checkpointing:
        model.set_activation_checkpointing(True)
    optimizer = build_optimizer(model, t)
    config = deepspeed_config(t, world_size, global_batch_size)
    # DeepSpeed wraps `optimizer` (ZeRO keeps it as the inner optimizer): its param groups stay the
    # ones the LR is set on.
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    log.info("DeepSpeed engine: ZeRO %d, %s, %s, grad accumulation %d, clip %g", t.zero_stage, t.precision,
             type(optimizer).__name__, config["gradient_accumulation_steps"], t.grad_clip)
    return engine, optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
