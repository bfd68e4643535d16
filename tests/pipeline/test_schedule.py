"""LR in tokens (warm-up, cosine, floor) and the batch-size ramp-up."""

from __future__ import annotations

import math

import pytest

from core.errors import ConfigError
from pipeline.config import load_config
from training.schedule import BatchRampup, LRSchedule


def test_lr_warmup_cosine_floor():
    lr = LRSchedule(peak=1.0, min_lr_ratio=0.1, warmup_tokens=100, decay_tokens=1100)
    assert lr(0) == 0.0
    assert lr(50) == pytest.approx(0.5)
    assert lr(100) == pytest.approx(1.0)
    assert lr(600) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lr(1100) == pytest.approx(0.1)
    assert lr(10**9) == pytest.approx(0.1)
    values = [lr(t) for t in range(100, 1101, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_without_warmup_starts_at_peak():
    lr = LRSchedule(peak=2e-4, min_lr_ratio=0.0, warmup_tokens=0, decay_tokens=1000)
    assert lr(0) == pytest.approx(2e-4)
    assert lr(1000) == 0.0
    assert math.isclose(lr(500), 1e-4)


def test_bloom_schedule_from_config():
    cfg = load_config(None, ["train.lr=6e-5", "train.warmup_tokens=375000000", "train.decay_tokens=410000000000"])
    lr = LRSchedule.from_config(cfg.train)
    assert lr(375_000_000) == pytest.approx(6e-5)
    assert lr(410_000_000_000) == pytest.approx(6e-6)


def test_lr_state_is_its_position_and_a_changed_shape_is_said(caplog):
    lr = LRSchedule(peak=1.0, min_lr_ratio=0.1, warmup_tokens=100, decay_tokens=1100)
    assert lr.step(600) == lr(600)
    state = lr.state_dict()
    assert state == {"kind": "warmup_cosine_tokens", "peak": 1.0, "min_lr_ratio": 0.1, "warmup_tokens": 100,
                     "decay_tokens": 1100, "tokens": 600, "last_lr": lr(600)}
    resumed = LRSchedule(peak=1.0, min_lr_ratio=0.1, warmup_tokens=100, decay_tokens=1100)
    with caplog.at_level("INFO", logger="graine.train"):
        resumed.load_state_dict(state)
    assert resumed.state_dict() == state and "changed" not in caplog.text
    lower = LRSchedule(peak=0.5, min_lr_ratio=0.1, warmup_tokens=100, decay_tokens=1100)
    with caplog.at_level("INFO", logger="graine.train"):
        lower.load_state_dict(state)
    assert lower.tokens == 600 and "train.lr: 1.0 -> 0.5" in caplog.text


def test_rampup_like_bloom():
    # BLOOM: 16 -> 2048 by 16 over 9.7M samples (127 increments).
    ramp = BatchRampup(start=16, increment=16, samples=9_765_625, final=2048)
    per = 9_765_625 / 127
    assert ramp(0) == 16
    assert ramp(int(per) - 1) == 16
    assert ramp(int(per) + 1) == 32
    assert ramp(9_765_625) == 2048
    assert ramp(10**12) == 2048
    assert ramp.sizes()[0] == 16 and ramp.sizes()[-1] == 2048 and len(ramp.sizes()) == 128


def test_no_rampup_is_constant():
    ramp = BatchRampup(start=0, increment=16, samples=0, final=64)
    assert ramp(0) == ramp(10**9) == 64


def test_rampup_sizes_must_split_over_ranks():
    ramp = BatchRampup(start=4, increment=2, samples=100, final=8)
    ramp.check_divisible(micro_batch_size=2, world_size=1)
    with pytest.raises(ConfigError, match="train.rampup.start/increment"):
        ramp.check_divisible(micro_batch_size=2, world_size=2)  # 6 does not split into 2 x 2
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        BatchRampup(0, 1, 0, 6).check_divisible(micro_batch_size=2, world_size=2)
