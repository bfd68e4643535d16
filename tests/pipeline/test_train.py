"""The pretrain step in real processes: 2 ranks on gloo, DeepSpeed ZeRO 1/2/3 on CPU, fp32.

One reference run (ZeRO 1, 2 ranks, 16 steps, a checkpoint every 4) is shared: the other tests compare
against its per-step losses exactly (resume) or within float tolerance (other layouts).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from checkpoints import manifest
from checkpoints.checkpointer import latest_checkpoint_info
from checkpoints.layout import read_latest
from tests.support.train_harness import kill_9, launch, losses, records, start
from training.metrics import last_metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    result, output = launch(run_dir, ["train.zero_stage=1"])
    assert result == "done", output[-4000:]
    return run_dir


def test_reference_learns_and_publishes(reference):
    curve = losses(reference)
    assert sorted(curve) == list(range(1, 17))
    first, last = curve[1], curve[16]
    assert last < first - 0.3, curve  # learning, not noise: the chain is easy to predict
    ckpt = reference / "checkpoints"
    assert read_latest(ckpt) == "global_step16"
    assert sorted(p.name for p in ckpt.glob("global_step*")) == ["global_step12", "global_step16"]  # keep_last=2
    assert manifest.verify(ckpt / "global_step16") is None
    assert len(list((ckpt / "global_step16" / "rng").iterdir())) == 2  # one RNG file per rank
    info = latest_checkpoint_info(reference)
    assert info["step"] == 16 and info["tokens"] == 16 * 4 * 32 and info["loss"] == curve[16]
    metrics = last_metrics(reference)
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "tflops_per_device", "mem_gb"):
        assert math.isfinite(metrics[key]), key
    assert "mfu" not in metrics  # no peak is known for CPUs
    assert [r["step"] for r in records(reference, "valid")] == [8, 16]
    assert (reference / "logs" / "tensorboard").is_dir()


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_match_the_reference(reference, tmp_path, stage):
    # ZeRO 3 also recomputes activations in the backward pass: the losses must not change.
    over = [f"train.zero_stage={stage}", "train.train_tokens=1024", f"train.activation_checkpointing={stage == 3}"]
    result, output = launch(tmp_path / "run", over)
    assert result == "done", output[-4000:]
    got, want = losses(tmp_path / "run"), losses(reference)
    assert sorted(got) == list(range(1, 9))
    for step, loss in got.items():
        assert loss == pytest.approx(want[step], rel=1e-4, abs=1e-5), step


def test_one_rank_accumulating_equals_two_ranks(reference, tmp_path):
    # 1 rank x micro 2 x accumulation 2 sees the same global batches as 2 ranks x micro 2 x 1.
    result, output = launch(tmp_path / "run", ["train.zero_stage=1", "train.train_tokens=1024"], nproc=1)
    assert result == "done", output[-4000:]
    assert "grad accumulation 2" in output
    got, want = losses(tmp_path / "run"), losses(reference)
    assert sorted(got) == list(range(1, 9))
    for step, loss in got.items():
        assert loss == pytest.approx(want[step], rel=1e-5, abs=1e-6), step


def test_kill_9_then_resume_is_bit_exact(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, ["train.zero_stage=1"], faults={"step_delay": 0.25})
    deadline = time.time() + 90
    while max(losses(run_dir), default=0) < 7 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read()[-4000:]
    kill_9(proc)  # the launcher and both ranks, mid-run
    time.sleep(0.5)
    assert read_latest(run_dir / "checkpoints") == "global_step4"
    result, output = launch(run_dir, ["train.zero_stage=1"])
    assert result == "done", output[-4000:]
    assert "resumed from" in output and "global_step4" in output
    got, want = losses(run_dir), losses(reference)
    assert sorted(got) == list(range(1, 17))
    for step in range(5, 17):
        assert got[step] == want[step], (step, got[step], want[step])  # bitwise, not approximately


def test_damaged_latest_falls_back_with_a_warning(reference, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    victim = run_dir / "checkpoints" / "global_step16" / "graine_state.json"
    victim.write_text(victim.read_text().replace('"step": 16', '"step": 15'))  # same size, other bytes
    result, output = launch(run_dir, ["train.zero_stage=1", "train.train_tokens=2560"])
    assert result == "done", output[-4000:]
    assert "global_step16 is not valid" in output and "graine_state.json does not match its sha256" in output
    assert "resuming from global_step12 instead of the damaged global_step16" in output
    got, want = losses(run_dir), losses(reference)
    assert got[13] == want[13] and got[16] == want[16]  # steps 13-16 were redone identically
    assert read_latest(run_dir / "checkpoints") == "global_step20"


def test_spike_guard_skips_then_stops(tmp_path):
    run_dir = tmp_path / "skip"
    over = ["train.zero_stage=2", "train.train_tokens=640", "checkpoint.interval=1", "checkpoint.keep_last=10"]
    result, output = launch(run_dir, over, faults={"nan_steps": [3]})
    assert result == "done", output[-4000:]
    assert "step 3 skipped" in output
    assert records(run_dir)[-1]["skipped"] == 1 and math.isfinite(losses(run_dir)[5])
    # The skipped step left the weights untouched: checkpoints 2 and 3 hold the same model.
    weights = [torch.load(run_dir / "checkpoints" / f"global_step{s}" / "mp_rank_00_model_states.pt",
                          weights_only=False)["module"] for s in (2, 3, 4)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[1][k], weights[2][k]) for k in weights[0])

    run_dir = tmp_path / "stop"
    result, output = launch(run_dir, over[:-2] + ["checkpoint.interval=2", "train.max_skipped_steps=2"],
                            faults={"nan_steps": [3, 4]})
    assert result.startswith("error: StageError"), output[-4000:]
    assert "2 consecutive steps had a non-finite loss" in result
    assert f"last good checkpoint: {run_dir / 'checkpoints' / 'global_step2'}" in result


def test_batch_rampup_applies_every_step(tmp_path):
    # 3 steps of 2 samples, then 4: DeepSpeed's own accumulation counter would put the boundary after the
    # first micro-batch of the first bigger batch (an odd number of micro-steps so far), so every later
    # step would end off the boundary, be reported as not applied and counted as skipped.
    over = ["train.devices_per_node=1", "train.rampup.start=2", "train.rampup.increment=2",
            "train.rampup.samples=6", "train.train_tokens=1024"]
    result, output = launch(tmp_path / "run", over, nproc=1)
    assert result == "done", output[-4000:]
    steps = records(tmp_path / "run", "train")
    assert steps and all(r["skipped"] == 0 for r in steps), steps
    assert [r["step"] for r in steps][-1] == 3 + -(-(1024 // 32 - 6) // 4)  # 3 batches of 2, then of 4 to the end


def test_zero_0_skips_a_non_finite_step_with_clipping_on(tmp_path):
    # Without ZeRO graine drops the gradient itself; DeepSpeed's clipping (train.grad_clip=1) must not see
    # the dropped gradients (it failed on an empty list), and the weights must not move.
    run_dir = tmp_path / "run"
    over = ["train.zero_stage=0", "train.grad_clip=1.0", "train.train_tokens=640", "checkpoint.interval=1",
            "checkpoint.keep_last=10"]
    result, output = launch(run_dir, over, faults={"nan_steps": [3]})
    assert result == "done", output[-4000:]
    assert "step 3 skipped" in output and records(run_dir)[-1]["skipped"] == 1
    weights = [torch.load(run_dir / "checkpoints" / f"global_step{s}" / "mp_rank_00_model_states.pt",
                          weights_only=False)["module"] for s in (2, 3, 4)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[1][k], weights[2][k]) for k in weights[0])
