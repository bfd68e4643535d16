"""Learning-rate and batch-size schedules, both functions of what the run has consumed.

The LR is defined in tokens (BLOOM: 375M warm-up tokens, cosine decay to 10% over 410B tokens) so that
it does not depend on the batch size, which itself grows during the ramp-up (BLOOM: 16 -> 2048 over
9.7M samples). Both are pure functions of consumed samples/tokens: a resumed run recomputes them
exactly, and a checkpoint only needs the counters. Their checkpointed state is that position: the LR
schedule keeps the tokens it was last stepped to (`state_dict`, under `lr_schedule`); the ramp-up's
position is the data loader's consumed samples, so the loader saves the batch size it gives there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from core.errors import ConfigError
from training.config import TrainConfig

log = logging.getLogger("graine.train")

LR_KIND = "warmup_cosine_tokens"
CONFIG_KEYS = {"peak": "train.lr", "min_lr_ratio": "train.min_lr_ratio", "warmup_tokens": "train.warmup_tokens",
               "decay_tokens": "train.decay_tokens"}


@dataclass
class LRSchedule:
    """Linear warm-up from 0 to `peak`, then cosine decay to `peak * min_lr_ratio` at `decay_tokens`.

    As in Megatron's token-based schedule, `decay_tokens` counts from the start of training (warm-up
    included), and the LR stays at the minimum afterwards. Calling it is pure; `step` also records the
    position, which is all its checkpointed state.
    """

    peak: float
    min_lr_ratio: float
    warmup_tokens: int
    decay_tokens: int
    tokens: int = field(default=0, compare=False)  # the position: tokens consumed at the last step

    @classmethod
    def from_config(cls, t: TrainConfig) -> LRSchedule:
        return cls(t.lr, t.min_lr_ratio, t.warmup_tokens, t.decay_tokens)

    def __call__(self, tokens: int) -> float:
        """The LR of the step that brings the run to `tokens` consumed tokens (so step 1 is not 0)."""
        min_lr = self.peak * self.min_lr_ratio
        if self.warmup_tokens and tokens <= self.warmup_tokens:
            return self.peak * tokens / self.warmup_tokens
        if tokens >= self.decay_tokens:
            return min_lr
        span = max(self.decay_tokens - self.warmup_tokens, 1)
        progress = (tokens - self.warmup_tokens) / span
        return min_lr + (self.peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def step(self, tokens: int) -> float:
        """The LR of the step that brings the run to `tokens`, which becomes the schedule's position."""
        self.tokens = tokens
        return self(tokens)

    def state_dict(self) -> dict:
        return {"kind": LR_KIND, **self._shape(), "tokens": self.tokens, "last_lr": self(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from the saved position. The shape comes from the current config: a changed one
        applies from here on, and is said so."""
        self.tokens = int(state["tokens"])
        changed = [f"{CONFIG_KEYS[k]}: {state.get(k)} -> {v}" for k, v in self._shape().items() if state.get(k) != v]
        if changed:
            log.info("the LR schedule changed since the checkpoint (%s): the new one applies from %d tokens on",
                     ", ".join(changed), self.tokens)

    def _shape(self) -> dict:
        return {"peak": self.peak, "min_lr_ratio": self.min_lr_ratio, "warmup_tokens": self.warmup_tokens,
                "decay_tokens": self.decay_tokens}


@dataclass(frozen=True)
class BatchRampup:
    """Global batch size as a function of consumed samples (Megatron's `--rampup-batch-size`).

    The batch grows from `start` by `increment` every `samples / num_increments` consumed samples
    until it reaches `final`; `start=0` means a constant batch.
    """

    start: int
    increment: int
    samples: int
    final: int

    @classmethod
    def from_config(cls, t: TrainConfig) -> BatchRampup:
        r = t.rampup
        return cls(r.start, r.increment, r.samples, t.global_batch_size)

    def __call__(self, consumed_samples: int) -> int:
        if not self.start or self.start >= self.final or not self.samples:
            return self.final
        num_increments = math.ceil((self.final - self.start) / self.increment)
        per_increment = self.samples / num_increments
        size = self.start + int(consumed_samples // per_increment) * self.increment
        return min(size, self.final)

    def sizes(self) -> list[int]:
        """Every batch size the ramp-up can produce."""
        if not self.start or self.start >= self.final or not self.samples:
            return [self.final]
        return sorted({min(s, self.final) for s in range(self.start, self.final + self.increment, self.increment)})

    def check_divisible(self, micro_batch_size: int, world_size: int) -> None:
        """Each global batch must split evenly into micro-batches on every rank."""
        unit = micro_batch_size * world_size
        for size in self.sizes():
            if size % unit:
                key = "train.global_batch_size" if size == self.final else "train.rampup.start/increment"
                raise ConfigError(
                    f"a global batch of {size} samples does not split into micro-batches of "
                    f"train.micro_batch_size={micro_batch_size} on {world_size} ranks; make {key} "
                    f"a multiple of {unit} (micro_batch_size x ranks per node x train.num_nodes; on a GPU "
                    "profile the ranks per node are its GPUs per node, else train.devices_per_node)")
