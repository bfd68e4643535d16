"""Training batches cut from the global sample order, independent of the number of ranks.

Global batch g is the samples [start_g, start_g + B_g) of the global order, where B_g comes from the
batch ramp-up and start_g is the number of samples consumed before it. Rank r takes the r-th contiguous
slice of B_g / world_size samples and cuts it into micro-batches. So the data a run sees depends only
on the sample index and the ramp-up, never on the number of ranks or the micro-batch size, and a
checkpoint only needs `consumed_samples` to continue the same order, on any number of ranks.

Skipped samples (`train.skip_samples`, a spike's rollback: training.spikes.SkipRanges) are positions of
that order left out: a global batch is then the next B_g positions not skipped, from `position` (the
loader's cursor, equal to consumed_samples until something is skipped). The ramp-up follows the samples
trained, not the cursor.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch

from core.errors import DataError
from training.schedule import BatchRampup
from training.spikes import SkipRanges

log = logging.getLogger("graine.data")


class SampleIndex(Protocol):
    """What the loader needs from `data_prep.sample_index.BlendedSampleIndex`."""

    fingerprint: str

    def __len__(self) -> int: ...

    def __getitem__(self, idx: int) -> np.ndarray: ...  # (seq_len + 1,) int64 tokens


def to_batch(samples: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels): tokens [0, L) and [1, L+1) of each sample."""
    tokens = torch.from_numpy(np.stack(samples).astype(np.int64, copy=False))
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


class GlobalBatchLoader:
    """Yields this rank's micro-batches of each global batch and counts consumed samples."""

    def __init__(self, index: SampleIndex, rampup: BatchRampup, micro_batch_size: int, rank: int,
                 world_size: int, consumed_samples: int = 0):
        if len(index) == 0:
            raise DataError("the training sample index is empty; re-run `graine run preprocess` with more data")
        rampup.check_divisible(micro_batch_size, world_size)
        self.index, self.rampup = index, rampup
        self.micro, self.rank, self.world = micro_batch_size, rank, world_size
        self.consumed_samples = consumed_samples
        self.position = consumed_samples  # the next position of the global order that may be trained
        self.skips = SkipRanges()  # set by the trainer: the config's ranges and the rollbacks'
        self._warned_epoch = False

    def global_batch_size(self) -> int:
        return self.rampup(self.consumed_samples)

    def grad_accumulation_steps(self) -> int:
        return self.global_batch_size() // (self.micro * self.world)

    def _sample(self, i: int) -> np.ndarray:
        # Past the end of the index the order repeats; say so once, since it means a second epoch.
        if i >= len(self.index) and not self._warned_epoch:
            log.warning("consumed %d samples, more than the %d of the index: starting another epoch", i, len(self.index))
            self._warned_epoch = True
        return self.index[i % len(self.index)]

    def next_batch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches of the next global batch; advances `consumed_samples`."""
        size = self.global_batch_size()
        per_rank = size // self.world
        order, self.position = self.skips.take(self.position, size)
        samples = [self._sample(i) for i in order[self.rank * per_rank:(self.rank + 1) * per_rank]]
        self.consumed_samples += size
        return [to_batch(samples[i:i + self.micro]) for i in range(0, per_rank, self.micro)]

    def state_dict(self) -> dict:
        """The data position, the order it indexes, and the ramp-up's batch size there (the next step's)."""
        return {"consumed_samples": self.consumed_samples, "sample_position": self.position,
                "fingerprint": self.index.fingerprint, "global_batch_size": self.global_batch_size()}

    def load_state_dict(self, state: dict, override_hint: str = "") -> None:
        """Continue the saved order at its position; DataError when this run builds another order."""
        if state["fingerprint"] != self.index.fingerprint:
            raise DataError(
                f"the checkpoint was trained on the sample index {state['fingerprint']} but this run builds "
                f"{self.index.fingerprint}: {override_hint or 'the data, train.seq_len or seed changed'}; "
                "undo that change, or start a new run_dir")
        self.consumed_samples = int(state["consumed_samples"])
        self.position = int(state.get("sample_position", self.consumed_samples))
        saved_batch = state.get("global_batch_size")
        if saved_batch is not None and saved_batch != self.global_batch_size():
            log.info("the global batch at sample %d is %d, the checkpoint's was %d: train.global_batch_size or "
                     "train.rampup changed since, and applies from here on", self.consumed_samples,
                     self.global_batch_size(), saved_batch)


def validation_batches(index: SampleIndex | None, num_batches: int, batch_size: int, micro_batch_size: int,
                       rank: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: the first num_batches x batch_size samples of the validation order.

    Fixed so that successive evaluations are comparable; each rank takes its slice of every batch.
    """
    if index is None or len(index) == 0:
        return []
    per_rank = batch_size // world_size
    out = []
    for b in range(num_batches):
        first = b * batch_size + rank * per_rank
        samples = [index[(first + i) % len(index)] for i in range(per_rank)]
        out += [to_batch(samples[i:i + micro_batch_size]) for i in range(0, per_rank, micro_batch_size)]
    return out
