"""The config sections of the pretrain stage: model (a preset and its overrides), train (batch,
schedule, precision, job shape) and checkpoint (interval, retention). Plain dataclasses, no torch:
the orchestration imports them to assemble the run's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.config import RunConfigBase, param
from core.errors import ConfigError
from training.presets import PRESETS
from training.spikes import SkipRanges, SpikeConfig

FROM_INIT = "from_init"


@dataclass(kw_only=True)
class ModelConfig:
    size: str = param("demo", help=f"a preset name ({', '.join(PRESETS)}; training/presets.py), 'custom', "
                                   "or 'from_init' (the shape of train.init_from's model); shape fields left at 0 "
                                   "come from the preset")
    num_layers: int = param(0, ge=0, help="transformer blocks; 0 = the preset's")
    hidden_size: int = param(0, ge=0, help="model width; 0 = the preset's")
    num_heads: int = param(0, ge=0, help="attention heads (need not be a power of two); 0 = the preset's")
    max_positions: int = param(2048, ge=8, help="longest sequence the run may use (ALiBi has no position table)")
    vocab_size: int = param(0, ge=0, help="0 = the tokenizer's size (BLOOM's released models: 250880)")
    pad_vocab_to_multiple: int = param(128, ge=1, help="pad the embedding rows to a multiple of this")
    layer_norm_eps: float = param(1e-5, gt=0.0, help="LayerNorm epsilon")
    init_std: float = param(0.0217, gt=0.0, help="normal init std (BLOOM: 0.0048 at 176b)")
    hidden_dropout: float = param(0.0, ge=0.0, le=1.0)
    attention_dropout: float = param(0.0, ge=0.0, le=1.0)
    kernels: Literal["auto", "triton", "apex", "torch"] = param("auto", help="fused-kernel backend (kernels/dispatch.py)")
    attention: Literal["auto", "triton", "flex", "sdpa", "eager"] = param(
        "auto", help="attention implementation; auto follows model.kernels")
    loss_chunk_tokens: int = param(4096, ge=1, help="tokens per chunk of the output projection + cross-entropy "
                                                  "(bounds the logits held at once)")
    compile: bool = param(False, help="wrap the model in torch.compile")

    def __post_init__(self) -> None:
        # A preset fills the shape fields left at 0, so `size: 560m` alone is a complete model and
        # `size: 560m, num_layers: 4` is a shallow 560m for tests.
        if self.size == FROM_INIT:
            return  # filled from train.init_from's model when the run's config is validated (validate)
        if self.size != "custom":
            if self.size not in PRESETS:
                raise ConfigError(f"model.size={self.size!r} is not a preset; use one of "
                                  f"{', '.join(PRESETS)} or 'custom' with model.num_layers/hidden_size/num_heads")
            preset = PRESETS[self.size]
            for name in ("num_layers", "hidden_size", "num_heads"):
                if getattr(self, name) == 0:
                    setattr(self, name, getattr(preset, name))
        for name in ("num_layers", "hidden_size", "num_heads"):
            if getattr(self, name) == 0:
                raise ConfigError(f"model.{name} is 0 with model.size=custom; set model.{name} or pick a preset size")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size={self.hidden_size} is not divisible by "
                              f"model.num_heads={self.num_heads}; pick a head count that divides it")

    def padded_vocab_size(self, tokenizer_vocab_size: int) -> int:
        """Rows of the embedding: `model.vocab_size` (or the tokenizer's) rounded up to `pad_vocab_to_multiple`."""
        vocab = self.vocab_size or tokenizer_vocab_size
        if vocab <= 0:
            raise ConfigError("the vocabulary size is unknown: model.vocab_size=0 and no tokenizer size was given; "
                              "set model.vocab_size or build the model from the tokenizer stage's output")
        multiple = self.pad_vocab_to_multiple
        return (vocab + multiple - 1) // multiple * multiple


@dataclass(kw_only=True)
class RampupConfig:
    start: int = param(0, ge=0, help="global batch size at the start (0 = no ramp-up)")
    increment: int = param(16, ge=1, help="batch-size step")
    samples: int = param(0, ge=0, help="samples over which the batch grows to train.global_batch_size")


@dataclass(kw_only=True)
class TrainConfig:
    seq_len: int = param(128, ge=8, help="tokens per training sample")
    micro_batch_size: int = param(4, ge=1, help="samples per rank per forward pass")
    global_batch_size: int = param(8, ge=1, help="samples per optimizer step, all ranks together")
    rampup: RampupConfig = param(default_factory=RampupConfig)
    train_tokens: int = param(200_000, ge=1, help="stop after this many tokens")
    lr: float = param(6e-4, gt=0.0, help="peak learning rate")
    min_lr_ratio: float = param(0.1, ge=0.0, le=1.0, help="final LR as a share of the peak (BLOOM: 10%)")
    warmup_tokens: int = param(20_000, ge=0, help="linear warm-up length in tokens (BLOOM: 375M)")
    decay_tokens: int = param(200_000, ge=1, help="cosine decay length in tokens (BLOOM: 410B)")
    weight_decay: float = param(0.1, ge=0.0)
    beta1: float = param(0.9, ge=0.0, le=1.0)
    beta2: float = param(0.95, ge=0.0, le=1.0)
    eps: float = param(1e-8, gt=0.0)
    grad_clip: float = param(1.0, ge=0.0, help="gradient-norm clipping; 0 disables")
    zero_stage: int = param(1, ge=0, le=3, help="DeepSpeed ZeRO stage (BLOOM used 1)")
    precision: Literal["fp32", "bf16", "fp16"] = param("fp32", help="bf16 on A100/H100, fp16 with loss scaling on V100")
    optimizer: Literal["adamw", "cpu_adam"] = param("adamw", help="adamw (fused on GPU) or DeepSpeedCPUAdam")
    activation_checkpointing: bool = param(False, help="recompute activations in the backward pass to save memory")
    devices_per_node: int = param(1, ge=1, help="processes (GPUs) per node; on CPU, processes on this machine")
    num_nodes: int = param(1, ge=1, help="nodes of the training job")
    log_interval: int = param(10, ge=1, help="steps between metric lines")
    eval_interval: int = param(50, ge=0, help="steps between validation losses; 0 disables")
    eval_iters: int = param(4, ge=1, help="validation batches per evaluation")
    exit_duration_min: float = param(0.0, ge=0.0, help="save and stop after this many minutes of wall clock; 0 disables")
    kill_switch_file: str = param("", help="save and stop when this file appears (default: <run_dir>/KILL)")
    max_skipped_steps: int = param(5, ge=1, help="consecutive non-finite steps that stop the run")
    spike: SpikeConfig = param(default_factory=SpikeConfig)
    skip_samples: list[list[int]] = param(default_factory=list, help="ranges [start, end) of positions in the global "
                                          "sample order never trained on, e.g. '[[1000, 1500]]' (README: Loss spikes)")
    dist_timeout_min: float = param(30.0, gt=0.0, help="minutes a collective may wait for a peer before the job "
                                    "fails (a checkpoint save on a slow filesystem must fit in it)")
    init_from: str = param("", help="start step 0 from these weights instead of random ones: 'hf:<dir>' (a "
                           "BloomForCausalLM folder) or a graine run directory or checkpoint folder, optionally "
                           "'@<step>'; used once: a run that has its own checkpoints resumes from them")
    init_optimizer: bool = param(False, help="with a graine train.init_from, also take its Adam moments")

    def __post_init__(self) -> None:
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                              f"train.micro_batch_size={self.micro_batch_size}")
        if self.rampup.start and self.rampup.start % self.micro_batch_size:
            raise ConfigError(f"train.rampup.start={self.rampup.start} is not a multiple of train.micro_batch_size")
        SkipRanges.from_config(self.skip_samples)
        if self.init_optimizer and (not self.init_from or self.init_from.startswith("hf:")):
            raise ConfigError(f"train.init_optimizer=true needs a graine run or checkpoint in train.init_from "
                              f"(got {self.init_from!r}): a Hugging Face model has no optimizer state; "
                              "set train.init_optimizer=false")


@dataclass(kw_only=True)
class CheckpointConfig:
    interval: int = param(50, ge=1, help="steps between checkpoints")
    keep_last: int = param(2, ge=1, help="recent checkpoints kept")
    keep_every: int = param(0, ge=0, help="also keep every N-th step forever (0 = none)")
    max_num_timeout: int = param(20, ge=0, help="walltime requeues before giving up")


def validate(cfg: RunConfigBase) -> None:
    """Checks across the pretrain stage's sections, made when the config is loaded."""
    if cfg.model.size == FROM_INIT:
        from training.init_source import fill_model_shape

        fill_model_shape(cfg.model, cfg.train.init_from)
    if cfg.train.seq_len > cfg.model.max_positions:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} exceeds model.max_positions={cfg.model.max_positions}; "
                          "lower train.seq_len or raise model.max_positions")
