"""The data a run sees depends on the global order only: not on ranks, micro-batches or restarts."""

from __future__ import annotations

import pytest
import torch

from core.errors import DataError
from tests.support.train_harness import SyntheticTokens
from training.data_loader import GlobalBatchLoader, validation_batches
from training.schedule import BatchRampup


def global_batches(world: int, micro: int, steps: int, ramp: BatchRampup, index) -> list[torch.Tensor]:
    """Each step's samples, all ranks' micro-batches concatenated in rank order."""
    loaders = [GlobalBatchLoader(index, ramp, micro, r, world) for r in range(world)]
    out = []
    for _ in range(steps):
        parts = [torch.cat([ids for ids, _ in loader.next_batch()]) for loader in loaders]
        out.append(torch.cat(parts))
    return out


@pytest.mark.parametrize("world,micro", [(2, 1), (2, 2), (4, 1), (1, 4)])
def test_same_samples_whatever_the_layout(world, micro):
    index = SyntheticTokens(200, 8, seed=3)
    ramp = BatchRampup(start=4, increment=4, samples=8, final=8)
    reference = global_batches(1, 1, 6, ramp, index)
    assert [len(b) for b in reference] == [4, 4, 8, 8, 8, 8]
    for got, want in zip(global_batches(world, micro, 6, ramp, index), reference):
        assert torch.equal(got, want)


def test_labels_are_inputs_shifted_by_one():
    index = SyntheticTokens(10, 8, seed=1)
    loader = GlobalBatchLoader(index, BatchRampup(0, 1, 0, 2), 2, 0, 1)
    (ids, labels), = loader.next_batch()
    assert torch.equal(ids[:, 1:], labels[:, :-1])
    assert torch.equal(ids[0], torch.from_numpy(index[0][:-1]))


def test_resume_continues_the_order_and_checks_the_fingerprint():
    index = SyntheticTokens(100, 8, seed=1)
    ramp = BatchRampup(0, 1, 0, 4)
    a = GlobalBatchLoader(index, ramp, 2, 0, 1)
    a.next_batch()
    state = a.state_dict()
    expected = a.next_batch()
    b = GlobalBatchLoader(index, ramp, 2, 0, 1)
    b.load_state_dict(state)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(b.next_batch(), expected))
    assert state["global_batch_size"] == 4  # the ramp-up's batch at the saved position
    other = GlobalBatchLoader(SyntheticTokens(100, 8, seed=2), ramp, 2, 0, 1)
    with pytest.raises(DataError, match="train.seq_len: 8 -> 16"):
        other.load_state_dict(state, override_hint="train.seq_len: 8 -> 16")


def test_validation_set_is_fixed_and_split_over_ranks():
    index = SyntheticTokens(50, 8, seed=1)
    one = validation_batches(index, 2, 4, 2, 0, 1)
    two = [validation_batches(index, 2, 4, 2, r, 2) for r in range(2)]
    assert len(one) == 4 and len(two[0]) == 2
    assert torch.equal(torch.cat([one[0][0], one[1][0]]), torch.cat([two[0][0][0], two[1][0][0]]))
    assert validation_batches(None, 2, 4, 2, 0, 1) == []
