"""Loss-spike detection and handling, without processes: the detector's statistics, the policy's
decisions and ledger, and the sample-skipping arithmetic across batch ramp-up and rank counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import ConfigError, StageError
from pipeline.config import load_config
from tests.support.train_harness import SyntheticTokens
from training.data_loader import GlobalBatchLoader
from training.schedule import BatchRampup
from training.spikes import EventLog, SkipRanges, SpikeConfig, SpikeDetector, SpikePolicy, read_events


# ------------------------------------------------------------------------------------- detector
def test_detector_statistics_are_the_windows_mean_and_std():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 0.1, 40).tolist()
    det = SpikeDetector(window=16, warmup_steps=10, sigma=6.0)
    for i, v in enumerate(values):
        if i < 9:
            assert det.stats("loss") is None  # warming up
        det.add(v, 2 * v)
    mean, std = det.stats("loss")
    assert mean == pytest.approx(np.mean(values[-16:]), abs=1e-12)
    assert std == pytest.approx(np.std(values[-16:]), abs=1e-12)
    assert det.threshold("grad_norm") == pytest.approx(np.mean(values[-16:]) * 2 + 6 * np.std(values[-16:]) * 2)
    assert det.is_spike("loss", mean + 6.01 * std) and not det.is_spike("loss", mean + 5.99 * std)
    assert not det.is_spike("loss", float("nan")) and not det.is_spike("grad_norm", None)


def test_detector_state_round_trips_exactly():
    det = SpikeDetector(8, 2, 3.0)
    for v in (1 / 3, 2 / 7, 0.1, 1e-9, 5.5):
        det.add(v, v * 10)
    again = SpikeDetector(8, 2, 3.0)
    again.load_state_dict(json.loads(json.dumps(det.state_dict())))
    assert again.state_dict() == det.state_dict() and again.threshold("loss") == det.threshold("loss")


# --------------------------------------------------------------------------------------- policy
def _policy(tmp_path, **cfg) -> SpikePolicy:
    base = {"window": 8, "warmup_steps": 8, "persist_spikes": 3, "persist_steps": 6}
    return SpikePolicy(SpikeConfig(**{**base, **cfg}), EventLog(tmp_path / "logs", rank=0))


def _feed(policy: SpikePolicy, losses, first_step: int = 1) -> list[tuple[int, bool, str | None]]:
    """(step, skipped, decision) of each step, checkpoints every 4 steps."""
    out = []
    for step, loss in enumerate(losses, first_step):
        skip = policy.before_update(step, loss)
        out.append((step, skip, policy.after_update(step, loss, 1.0, {"tokens": step, "samples": step})))
        if step % 4 == 0:
            policy.before_save(step)
    return out


def test_isolated_spike_is_skipped_and_the_episode_closes(tmp_path):
    policy = _policy(tmp_path, action="rollback")
    calm = [3.0 + 0.01 * (i % 3) for i in range(12)]
    got = _feed(policy, calm + [6.0] + calm[:8])
    assert [s for s, skip, _ in got if skip] == [13] and all(d is None for *_, d in got)
    assert policy.spikes == policy.skipped == 1 and policy.episode is None
    assert policy.anchor == 20  # the episode closed after 6 calm steps: step 20's save is an anchor again
    assert [(e["kind"], e["step"]) for e in read_events(tmp_path)] == [("skip", 13)]


def test_persistent_spikes_roll_back_to_the_checkpoint_before_them(tmp_path):
    policy = _policy(tmp_path, action="rollback", margin_samples=5, lr_factor=0.5, lr_samples=10)
    calm = [3.0 + 0.01 * (i % 3) for i in range(14)]
    got = _feed(policy, calm + [6.0, 3.0, 6.0, 6.0])
    assert got[-1] == (18, True, "rollback") and policy.anchor == 12  # step 16's save was inside the episode
    assert policy.before_save(16) == {12}  # retention keeps the anchor while the episode is open
    skipped = policy.rolled_back(18, {"spikes": {"detector": {"seen": 3, "loss": [1.0, 2.0]}}}, 48, 72,
                                 {"tokens": 1, "samples": 72}, trained=48)
    assert skipped == [48, 77] and policy.ranges.ranges == [[48, 77]] and policy.rollbacks == 1
    assert policy.detector.seen == 3 and policy.episode is None  # the anchor's statistics
    assert policy.lr_scale(50) == 0.5 and policy.lr_scale(58) == 1.0
    assert read_events(tmp_path)[-1]["kind"] == "rollback"


def test_loss_staying_above_the_pre_spike_mean_rolls_back(tmp_path):
    policy = _policy(tmp_path, action="rollback", loss_factor=1.5)
    calm = [3.0, 3.6] * 6  # mean 3.3, std 0.3: spikes exceed 5.1
    got = _feed(policy, calm + [9.0] + [5.0] * 5)  # one spike, then 5.0: no spike, but above 1.5 x 3.3
    assert policy.spikes == 1 and [d for *_, d in got] == [None] * 17 + ["rollback"]


@pytest.mark.parametrize("action, rollbacks, needle", [
    ("skip", 0, "train.spike.action=skip does not roll back"),
    ("rollback", 2, "train.spike.max_rollbacks=2 rollbacks were made already"),
])
def test_persistent_spikes_stop_with_a_clear_error(tmp_path, action, rollbacks, needle):
    policy = _policy(tmp_path, action=action, max_rollbacks=2)
    policy.rollbacks = rollbacks
    with pytest.raises(StageError, match=needle) as err:
        _feed(policy, [3.0 + 0.01 * (i % 3) for i in range(14)] + [6.0] * 3)
    assert "global_step12" in str(err.value) and "train.skip_samples" in str(err.value)
    assert read_events(tmp_path)[-1]["kind"] == "stop"


def test_log_only_never_skips_and_state_round_trips(tmp_path):
    policy = _policy(tmp_path, action="log")
    got = _feed(policy, [3.0 + 0.01 * (i % 3) for i in range(12)] + [6.0] * 5)
    assert not any(skip for _, skip, _ in got) and all(d is None for *_, d in got) and policy.spikes == 5
    again = _policy(tmp_path, action="log")
    again.load_state_dict(json.loads(json.dumps(policy.state_dict())), step=16)
    assert again.state_dict() == policy.state_dict()
    fresh = _policy(tmp_path, action="log")
    fresh.load_state_dict({}, step=8)  # a checkpoint from before spike handling is its own anchor
    assert fresh.anchor == 8 and fresh.rollbacks == 0


def test_events_keep_the_last_of_a_replayed_step(tmp_path):
    log = EventLog(tmp_path / "logs", rank=0)
    log.write("skip", 5, loss=1.0)
    log.write("skip", 5, loss=2.0)  # a replay after a kill
    log.write("rollback", 7)
    (tmp_path / "logs" / "events.jsonl").open("a").write('{"kind": "sk')  # cut by a kill
    assert [(e["kind"], e["step"], e.get("loss")) for e in read_events(tmp_path)] == [("skip", 5, 2.0),
                                                                                    ("rollback", 7, None)]
    EventLog(tmp_path / "other", rank=1).write("skip", 1)  # only rank 0 writes
    assert not (tmp_path / "other").exists()


# --------------------------------------------------------------------------------- sample ranges
def test_ranges_merge_and_take_skips_them():
    r = SkipRanges([[10, 20], [15, 25], [30, 31], [40, 40]])
    assert r.ranges == [[10, 25], [30, 31]] and len(r) == 16
    assert r.take(0, 12) == ([*range(10), 25, 26], 27)
    assert r.take(12, 3) == ([25, 26, 27], 28)  # a cursor inside a range jumps over it
    assert r.take(28, 4) == ([28, 29, 31, 32], 33)
    assert SkipRanges().take(5, 3) == ([5, 6, 7], 8)
    assert (SkipRanges([[0, 2]]) | SkipRanges([[2, 4]])).ranges == [[0, 4]]


@pytest.mark.parametrize("value", ["[[5, 5]]", "[[-1, 3]]", "[[1, 2, 3]]", "[[4, 2]]"])
def test_bad_skip_ranges_fail_at_load_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"train\.skip_samples\[0\]"):
        load_config(None, [f"train.skip_samples={value}"])


def test_spike_config_checks_its_span():
    with pytest.raises(ConfigError, match="train.spike.persist_spikes=9 exceeds train.spike.persist_steps=4"):
        load_config(None, ["train.spike.persist_spikes=9", "train.spike.persist_steps=4"])
    assert load_config(None, ["train.skip_samples=[[0, 8]]"]).train.skip_samples == [[0, 8]]


def _trained(world: int, micro: int, steps: int, ramp: BatchRampup, skips: SkipRanges, index, resume_at=None):
    """The first token of every sample each step trains, all ranks together in rank order."""
    loaders = [GlobalBatchLoader(index, ramp, micro, r, world) for r in range(world)]
    for loader in loaders:
        loader.skips = skips
    out = []
    for step in range(steps):
        if step == resume_at:  # a resume on the same ranks from the saved state
            states = [loader.state_dict() for loader in loaders]
            loaders = [GlobalBatchLoader(index, ramp, micro, r, world) for r in range(world)]
            for loader, state in zip(loaders, states):
                loader.skips = skips
                loader.load_state_dict(state)
        out.append([int(ids[j, 0]) for loader in loaders for ids, _ in loader.next_batch() for j in range(len(ids))])
    return out, loaders[0]


@pytest.mark.parametrize("world, micro, resume_at", [(1, 1, None), (2, 1, 3), (2, 2, None), (4, 1, 2)])
def test_skipped_samples_leave_the_order_independent_of_ranks_and_ramp_up(world, micro, resume_at):
    index = SyntheticTokens(400, 8, seed=3)
    ramp = BatchRampup(start=4, increment=4, samples=16, final=16)
    skips = SkipRanges([[6, 11], [30, 50]])
    got, loader = _trained(world, micro, 6, ramp, skips, index, resume_at)
    # The ramp-up follows the samples trained, not the positions skipped.
    sizes, trained = [], 0
    for _ in range(6):
        sizes.append(ramp(trained))
        trained += sizes[-1]
    assert [len(b) for b in got] == sizes and sizes[0] < sizes[-1]
    kept = [p for p in range(400) if not (6 <= p < 11 or 30 <= p < 50)][:trained]
    assert sum(got, []) == [int(index[p][0]) for p in kept]
    assert loader.consumed_samples == trained and loader.position == kept[-1] + 1
