"""Loss spikes in the real loop (2 ranks, gloo, DeepSpeed ZeRO 1 on CPU, fp32): samples [96, 112) of the
synthetic data are noise, which the demo model, trained for 24 steps on the chain, scores ~1 nat worse.

With train.spike.action=rollback the run skips the updates of steps 25-27 (each a loss spike), rolls back
to global_step24 at the third, skips the samples those steps took plus a margin of 8 ([96, 116)), and
continues at step 28: from there it is bit for bit the run that skipped [96, 116) by hand. Without spike
handling the noise shows in the metrics. A kill -9 inside the rollback's save resumes onto the same
trajectory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from checkpoints.layout import read_latest, read_state
from tests.support.train_harness import kill_9, launch, losses, records, start
from training.pretrain import summary
from training.spikes import read_events

pytestmark = pytest.mark.slow

TIMEOUT = 300  # seconds a 40-step run may take on 2 busy cores (about 60 unloaded)
STEPS, BAD = 40, [96, 112]  # 4 samples of 32 tokens a step: the noise is steps 25-28's data
BASE = [f"train.train_tokens={STEPS * 128}", f"train.decay_tokens={STEPS * 128}", "train.eval_interval=0",
        "train.zero_stage=1", "checkpoint.interval=4", "checkpoint.keep_last=2"]
SPIKE = ["train.spike.action=rollback", "train.spike.window=8", "train.spike.warmup_steps=8",
         "train.spike.persist_spikes=3", "train.spike.persist_steps=8", "train.spike.margin_samples=8"]


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    folder = run_dir / "checkpoints" / f"global_step{step}"
    return torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("spikes") / "rollback"
    result, output = launch(run_dir, BASE + SPIKE, pathological=BAD, timeout=TIMEOUT)
    assert result == "done", output[-4000:]
    return run_dir


def test_rollback_skips_the_bad_samples_and_rejoins_a_clean_run(rolled_back, tmp_path):
    events = read_events(rolled_back)
    assert [(e["kind"], e["step"]) for e in events] == [("skip", 25), ("skip", 26), ("skip", 27), ("rollback", 27)]
    rollback = events[-1]
    assert rollback["checkpoint"] == "global_step24" and rollback["skipped_samples"] == [96, 116]
    assert all(e["loss"] > e["loss_threshold"] for e in events[:3])
    # The step count goes on; the tokens went back to the checkpoint's and the run trains its budget.
    curve = losses(rolled_back)
    assert sorted(curve) == list(range(1, STEPS + 4))
    assert read_latest(rolled_back / "checkpoints") == f"global_step{STEPS + 3}"
    state = read_state(rolled_back / "checkpoints" / f"global_step{STEPS + 3}")
    assert state.consumed_tokens == STEPS * 128 and state.raw["spikes"]["rollbacks"] == 1
    assert state.raw["spikes"]["skip_ranges"] == [[96, 116]] and state.raw["sample_position"] == STEPS * 4 + 20
    assert records(rolled_back)[-1]["rollbacks"] == 1 and records(rolled_back)[-1]["spike_skips"] == 3
    status = summary(rolled_back / "pretrain")
    assert "spike event: step 27 rollback" in status and "skipped samples [96, 116]" in status
    tensorboard = b"".join(p.read_bytes() for p in (rolled_back / "logs" / "tensorboard").glob("*tfevents*"))
    assert b"events/rollback" in tensorboard and b"train/rollbacks" in tensorboard

    # The same data with the range skipped by hand, no spike handling: from step 25 on (the rollback run's
    # 28), the same samples at the same weights, optimizer state and LR, so the same losses bit for bit.
    by_hand = tmp_path / "by-hand"
    result, output = launch(by_hand, BASE + ["train.skip_samples=[[96, 116]]"], pathological=BAD, timeout=TIMEOUT)
    assert result == "done", output[-4000:]
    clean = losses(by_hand)
    assert max(clean.values()) == clean[1] and not read_events(by_hand)  # no spike on the way
    assert [curve[s + 3] for s in range(25, STEPS + 1)] == [clean[s] for s in range(25, STEPS + 1)]
    mine, theirs = final_weights(rolled_back, STEPS + 3), final_weights(by_hand, STEPS)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_without_spike_handling_the_noise_shows_in_the_metrics(rolled_back, tmp_path):
    run_dir = tmp_path / "off"
    result, output = launch(run_dir, BASE, pathological=BAD, timeout=TIMEOUT)
    assert result == "done", output[-4000:]
    curve, handled = losses(run_dir), losses(rolled_back)
    assert curve[24] == handled[24]  # the same run up to the noise
    assert min(curve[s] for s in range(25, 29)) > max(curve[s] for s in range(17, 25)) + 0.5
    assert not read_events(run_dir) and "spikes" not in records(run_dir)[-1]


def test_skip_without_rollback_drops_the_updates_then_stops(tmp_path):
    # ZeRO 0: graine drops the poisoned gradient itself. The three spikes persist, which skip cannot cure.
    run_dir = tmp_path / "run"
    over = [*BASE, "train.zero_stage=0", "checkpoint.interval=1", "checkpoint.keep_last=2",
            *(o for o in SPIKE if "action" not in o), "train.spike.action=skip"]
    result, output = launch(run_dir, over, pathological=BAD, timeout=TIMEOUT)
    assert result.startswith("error: StageError: loss spikes persist at step 27"), output[-4000:]
    assert "train.spike.action=skip does not roll back" in result and "global_step24" in result
    assert [(e["kind"], e["step"]) for e in read_events(run_dir)] == [("skip", 25), ("skip", 26), ("skip", 27),
                                                                     ("stop", 27)]
    # Retention kept global_step24 (the checkpoint before the spikes) beyond keep_last=2; 25 and 26 hold
    # its very weights: their updates were dropped.
    steps = sorted(int(p.name.removeprefix("global_step")) for p in (run_dir / "checkpoints").glob("global_step*"))
    assert steps == [24, 25, 26]
    weights = [final_weights(run_dir, s) for s in steps]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])


def _wait_for_rollback(run_dir: Path, proc, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(e["kind"] == "rollback" for e in read_events(run_dir)):
            return
        time.sleep(0.1)
    kill_9(proc)
    pytest.fail(f"no rollback event within {timeout} s\n{proc.stdout.read()[-3000:]}")


def test_kill_9_inside_the_rollback_resumes_onto_the_same_trajectory(rolled_back, tmp_path):
    run_dir = tmp_path / "run"
    # Killed after the reload, while its save is written, then again with everything written but not
    # published: each restart resumes from global_step24, replays 25-27 and rolls back alike.
    for phase in ("deepspeed", "publish"):
        proc = start(run_dir, BASE + SPIKE, faults={"save_pause": f"{phase}:27:120"}, pathological=BAD)
        _wait_for_rollback(run_dir, proc)
        time.sleep(1.0)  # inside the pause
        kill_9(proc)
        assert read_latest(run_dir / "checkpoints") == "global_step24"
        (run_dir / "logs" / "events.jsonl").write_text("")  # so the next attempt's rollback is awaited anew
    result, output = launch(run_dir, BASE + SPIKE, pathological=BAD, timeout=TIMEOUT)
    assert result == "done", output[-4000:]
    assert "resumed from" in output and "global_step24" in output
    assert losses(run_dir) == losses(rolled_back)  # every step, bitwise
    mine, theirs = final_weights(run_dir, STEPS + 3), final_weights(rolled_back, STEPS + 3)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert json.loads((run_dir / "logs" / "events.jsonl").read_text().splitlines()[-1])["kind"] == "rollback"
