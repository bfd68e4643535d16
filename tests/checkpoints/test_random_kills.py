"""kill -9 of every training process at 20 random moments, saves included (issue 7).

A checkpoint every step makes many kills land inside a save. After each kill, whatever `latest` names
must verify against its manifest; the run, restarted each time with the same command, must end with
the weights and per-step losses of an uninterrupted run, bit for bit (fp32, CPU).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch

from checkpoints import manifest
from checkpoints.layout import read_latest
from tests.support.train_harness import kill_9, launch, losses, start

STEPS = 64
OVERRIDES = ["train.zero_stage=1", f"train.train_tokens={STEPS * 4 * 32}", f"train.decay_tokens={STEPS * 4 * 32}",
             "checkpoint.interval=1", "checkpoint.keep_last=2", "train.eval_interval=0"]
FAULTS = {"step_delay": 0.05}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    folder = run_dir / "checkpoints" / f"global_step{STEPS}"
    return torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


@pytest.mark.slow
def test_twenty_random_kills_end_on_the_uninterrupted_weights(tmp_path):
    reference = tmp_path / "reference"
    result, output = launch(reference, OVERRIDES, faults=FAULTS)
    assert result == "done", output[-4000:]

    run_dir, rng, kills, resumes = tmp_path / "run", random.Random(27), 0, 0
    while kills < 20:
        before = max(losses(run_dir), default=0)
        proc = start(run_dir, OVERRIDES, faults=FAULTS)
        if kills % 4 == 3:
            time.sleep(rng.uniform(0.2, 2.0))  # during start-up, DeepSpeed init or the resume itself
        else:  # once this attempt has trained a step: mid-step or mid-save
            deadline = time.time() + 60
            while max(losses(run_dir), default=0) <= before and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is not None:
            pytest.fail(f"the run ended before kill {kills + 1}: make it longer\n{proc.stdout.read()[-3000:]}")
        kill_9(proc)
        kills += 1
        output = proc.stdout.read()
        resumes += "resumed from" in output
        latest = read_latest(run_dir / "checkpoints")
        if latest is not None:
            problem = manifest.verify(run_dir / "checkpoints" / latest)
            assert problem is None, f"after kill {kills}, latest={latest} is not valid: {problem}"
    result, output = launch(run_dir, OVERRIDES, faults=FAULTS)
    assert result == "done", output[-4000:]
    assert resumes >= 5, "too few kills landed after a checkpoint: the test did not exercise resuming"

    got, want = losses(run_dir), losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want  # every step, bitwise, whichever attempt logged it last
    mine, theirs = final_weights(run_dir), final_weights(reference)
    assert mine.keys() == theirs.keys()
    for name in theirs:
        assert torch.equal(mine[name], theirs[name]), name
