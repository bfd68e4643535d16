"""`graine checkpoint dump`: every parameter's fp32 weights and Adam moments, equal to what the live
optimizer held when the checkpoint was saved (gathered from the ZeRO partitions of both ranks in the
training processes themselves), whatever the ZeRO stage, in fp32 and bf16 training."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from checkpoints import manifest
from checkpoints.dump import STATES
from core.errors import CheckpointError
from pipeline.checkpoint_cli import checkpoint_command
from pipeline.config import load_config
from tests.support.hooked_worker import launch


def read_state(folder, state: str) -> dict[str, torch.Tensor]:
    index = folder / f"{state}.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else [f"{state}.safetensors"]
    out = {}
    for file in files:
        with safe_open(str(folder / file), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.mark.parametrize("zero,precision", [(1, "bf16"), (2, "fp32"), (3, "fp32")])
def test_dump_equals_the_live_optimizer(tmp_path, monkeypatch, zero, precision):
    """Read batches of 4 KB: most tensors are read as ranges of their elements (under ZeRO-3, from both
    ranks' partitions each)."""
    from checkpoints import safetensors_io

    monkeypatch.setattr(safetensors_io, "READ_BYTES", 4096)
    run_dir = tmp_path / "run"
    live_file = tmp_path / "live.pt"
    # 8 steps, saved at 4 and 8
    overrides = [f"train.zero_stage={zero}", f"train.precision={precision}", "train.train_tokens=1024"]
    result, output = launch(run_dir, overrides, optimizer_state=live_file)
    assert result == "done", output[-4000:]
    live = torch.load(live_file)
    cfg = load_config(None, [f"run_dir={run_dir}", "export.max_shard_gb=0.00002"])  # 20 KB: several shards

    assert checkpoint_command(cfg, "dump", "8") == 0
    out = run_dir / "dumps" / "global_step8"
    assert manifest.verify(out) is None and not list(out.parent.glob(".tmp-*"))
    info = json.loads((out / "dump.json").read_text())
    assert info["step"] == 8 and info["saved_world_size"] == 2 and info["optimizer"]["adam_step"] == 8
    assert set(info["parameters"]) == set(live)
    groups = info["optimizer"]["param_groups"]
    assert sorted(n for g in groups for n in g["params"]) == sorted(live)
    assert {g["weight_decay"] for g in groups} == {0.1, 0.0}
    assert all(info["parameters"][n]["group"] == i for i, g in enumerate(groups) for n in g["params"])
    for state in STATES:
        assert (out / f"{state}.safetensors.index.json").exists()  # sharded at 20 KB
        dumped = read_state(out, state)
        assert set(dumped) == set(live), state
        for name, values in live.items():
            assert list(dumped[name].shape) == info["parameters"][name]["shape"] == list(values[state].shape)
            assert dumped[name].dtype == torch.float32
            assert torch.equal(dumped[name], values[state].float()), (state, name)
    # Moments are not all zero, and differ from each other: a mix-up would not pass.
    assert any(v["exp_avg"].abs().max() > 0 for v in live.values())
    name = "h.0.mlp.dense_h_to_4h.weight"
    assert not torch.equal(read_state(out, "exp_avg")[name], read_state(out, "exp_avg_sq")[name])


def test_zero_0_checkpoint_is_refused_with_the_reason(tmp_path):
    run_dir = tmp_path / "run"
    result, output = launch(run_dir, ["train.zero_stage=0", "train.train_tokens=512"], nproc=1)
    assert result == "done", output[-4000:]
    cfg = load_config(None, [f"run_dir={run_dir}"])
    with pytest.raises(CheckpointError, match="zero_stage=0"):
        checkpoint_command(cfg, "dump", "latest")
    with pytest.raises(CheckpointError, match="zero_stage=0"):
        checkpoint_command(cfg, "universal", "4")
    assert not (run_dir / "dumps" / "global_step4").exists()
