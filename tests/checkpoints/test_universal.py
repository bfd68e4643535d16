"""Resharding: 2 ranks (ZeRO 1, 2 and 3) -> `graine checkpoint universal 8` -> resume on 1 rank with
gradient accumulation 2. The data order is kept and the losses of steps 9-16 equal the uninterrupted
2-rank run's bit for bit: on CPU in fp32, 1 rank accumulating 2 micro-batches gives the same sums as
2 ranks (measured, from scratch too), so any difference is a resume error. A tolerance of 1e-5 would
have let through DeepSpeed's ZeRO-3 universal-load slips that checkpoints.universal repairs (3.5e-6
at step 10, 4e-4 by step 16)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from checkpoints import manifest
from checkpoints.layout import write_latest
from checkpoints.universal import check_universal
from tests.support.hooked_worker import launch
from tests.support.train_harness import REPO, base_overrides, env, losses, records

GRAINE = [sys.executable, "-m", "pipeline.cli"]


def config_file(run_dir: Path, overrides: list[str] = ()) -> Path:
    """A YAML run file equivalent to the harness's overrides (the CLI takes -c CONFIG)."""
    data: dict = {}
    for item in [*base_overrides(run_dir), *overrides]:
        key, value = item.split("=", 1)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def back_to_step_8(reference: Path, run_dir: Path) -> None:
    """The reference run as it was after step 8: later checkpoints and metrics removed."""
    shutil.copytree(reference, run_dir)
    ckpt = run_dir / "checkpoints"
    for later in ("global_step12", "global_step16"):
        shutil.rmtree(ckpt / later, ignore_errors=True)
    write_latest(ckpt, "global_step8")
    (run_dir / "logs" / "metrics.jsonl").unlink()


@pytest.mark.parametrize("zero,precision", [(1, "fp32"), (2, "fp32"), (3, "fp32"), (1, "bf16"), (3, "bf16")])
def test_two_ranks_resume_on_one_through_universal(tmp_path, zero, precision):
    reference = tmp_path / "ref"
    # keep_every=8: step 8 stays as a release beside the last two (12, 16).
    common = [f"train.zero_stage={zero}", f"train.precision={precision}", "checkpoint.keep_every=8"]
    result, output = launch(reference, common)
    assert result == "done", output[-4000:]
    want = losses(reference)
    assert sorted(want) == list(range(1, 17))
    # Neighbouring steps differ by far more than the tolerance: a batch out of order would show.
    assert min(abs(want[s + 1] - want[s]) for s in range(8, 16)) > 1e-4

    run_dir = tmp_path / "run"
    back_to_step_8(reference, run_dir)
    # Without a conversion, a different number of ranks is refused with the command that fixes it.
    result, output = launch(run_dir, common, nproc=1)
    assert result.startswith("error: CheckpointError"), output[-4000:]
    assert "saved by 2 ranks and this job has 1" in result and "graine checkpoint universal 8" in result

    proc = subprocess.run([*GRAINE, "checkpoint", "universal", "8", "-c", str(config_file(run_dir, common))],
                          capture_output=True, text=True, env=env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = run_dir / "checkpoints"
    universal = ckpt / "global_step8_universal"
    assert proc.stdout.splitlines()[0] == str(universal)
    assert manifest.verify(universal) is None and check_universal(universal, ckpt / "global_step8") is None
    assert json.loads((universal / "source.json").read_text())["world_size"] == 2
    assert not list(ckpt.glob(".tmp-*"))
    assert (ckpt / "latest_universal").read_text().strip() == universal.name
    assert "[latest, release, universal]" in subprocess.run(
        [*GRAINE, "checkpoint", "list", "-c", str(config_file(run_dir, common))], capture_output=True, text=True,
        env=env(), cwd=REPO, timeout=60).stdout

    result, output = launch(run_dir, common, nproc=1)
    assert result == "done", output[-4000:]
    assert "loading its universal conversion global_step8_universal on 1 ranks" in output
    assert "grad accumulation 2" in output
    assert "resumed from" in output and "step 8, 32 samples, 1024 tokens" in output
    got = losses(run_dir)
    assert sorted(got) == list(range(9, 17))
    for step in range(9, 17):
        assert got[step] == want[step], (step, got[step], want[step])
    # Same samples at every step: the tokens consumed match the 2-rank run's, step by step.
    tokens = {r["step"]: r["tokens"] for r in records(run_dir)}
    assert tokens == {r["step"]: r["tokens"] for r in records(reference) if r["step"] > 8}
    state = json.loads((ckpt / "global_step16" / "graine_state.json").read_text())
    assert state["world_size"] == 1 and state["consumed_samples"] == 64
