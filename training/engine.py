"""The DeepSpeed engine: ZeRO stage, precision, clipping, accumulation, AdamW and its parameter groups.

The LR is not handed to DeepSpeed as a scheduler: the trainer sets it on the optimizer's groups before
every step from the tokens consumed (training.schedule), so resuming needs no scheduler state and a
skipped step cannot advance it by accident.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core.errors import ConfigError
from training.config import ModelConfig, TrainConfig

if TYPE_CHECKING:
    from training.model import BloomModel

log = logging.getLogger("graine.engine")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def ensure_cpu_accelerator() -> None:
    """DeepSpeed picks its accelerator at import time; without a GPU it must be told `cpu`."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


STALE_BUILD_LOCK_MIN = 30.0  # a JIT op build takes minutes; a lock this old outlived the build that took it


def clear_stale_build_locks(max_age_min: float = STALE_BUILD_LOCK_MIN) -> list[Path]:
    """Remove the lock files of torch's JIT extension builds (DeepSpeed's ops: cpu_adam, the CPU
    shared-memory comm op) older than `max_age_min`: a build killed at the walltime or with its node
    leaves `<TORCH_EXTENSIONS_DIR>/<py_cu>/<op>/lock` behind, and every later job waits on it forever
    ("Waiting for lock"). Returns the locks removed (each logged)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    removed = []
    now = time.time()
    for lock in root.glob("*/*/lock"):
        try:
            age_min = (now - lock.stat().st_mtime) / 60
            if age_min <= max_age_min:
                continue
            lock.unlink()
        except FileNotFoundError:  # another rank removed it, or the build ended
            continue
        log.warning("removed %s, a JIT build lock %.0f min old (its build was killed); the op is rebuilt if "
                    "needed", lock, age_min)
        removed.append(lock)
    return removed


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


def build_model(cfg: ModelConfig, t: TrainConfig, vocab_size: int, seed: int) -> BloomModel:
    """The model of this config, initialised from `seed`, in the form DeepSpeed will train it.

    Whatever the path, every parameter gets the same value (BloomModel.reset_parameters: one generator
    per parameter, drawn in fp32 and rounded once to the training dtype), so a run's numbers do not
    depend on the ZeRO stage it was built for:
    - ZeRO-3: built under `deepspeed.zero.Init`, which partitions each module's parameters as soon as
      the module exists; then each parameter in turn is gathered, set by rank 0 and scattered back
      (`GatheredParameters(modifier_rank=0)`). A rank holds its partitions plus one whole parameter.
    - ZeRO 0-2: built on the meta device (no memory), materialised once on the device DeepSpeed trains
      on, directly in the training dtype: no fp32 copy of a bf16 model ever exists.
    Weights loaded from elsewhere (HF or another run) are set on the model this returns.
    """
    from training.model import BloomModel, init_parameter

    ensure_cpu_accelerator()
    if t.zero_stage == 3:
        import deepspeed
        import torch.distributed as dist

        # The dtype comes from the config's bf16/fp16 keys: DeepSpeed 0.19 ignores an explicit `dtype=`
        # on accelerators without fp16 (CPUs) and builds in bf16 (operator precedence in Init._set_dtype).
        with deepspeed.zero.Init(config_dict_or_path=zero_init_config(t)):
            model = BloomModel(cfg, vocab_size, init=False)
        for name, p in model.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if dist.get_rank() == 0:
                    init_parameter(cfg, name, p, seed)
        return model
    with torch.device("meta"):
        model = BloomModel(cfg, vocab_size, init=False)
    model = model.to(DTYPES[t.precision]).to_empty(device=train_device())
    model.reset_parameters(seed)
    return model


def train_device() -> torch.device:
    """Where DeepSpeed keeps this rank's module: its accelerator's current device."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def zero_init_config(t: TrainConfig) -> dict:
    """What `deepspeed.zero.Init` reads of the engine's config (ZeRO-3 and the precision); the batch
    keys are only there to satisfy DeepSpeed's config checks."""
    return {"train_micro_batch_size_per_gpu": t.micro_batch_size, "zero_optimization": {"stage": 3},
            "bf16": {"enabled": t.precision == "bf16"}, "fp16": {"enabled": t.precision == "fp16"}}


def build_engine(model: BloomModel, t: TrainConfig, world_size: int, global_batch_size: int):
    """(engine, optimizer): the model wrapped by `deepspeed.initialize`, and the client optimizer."""
    ensure_cpu_accelerator()
    clear_stale_build_locks()
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
