"""Checkpoints are untrusted input (issue 12): a pickle planted in any file of a checkpoint, with the
manifest rewritten to match, runs nothing on any path that loads it (resume through DeepSpeed, resume
through a universal conversion, `graine checkpoint universal`, `graine checkpoint dump`, the export),
and the refusal names the file and the global and says how to trust it. Legitimate checkpoints of every
ZeRO stage, fp32 and bf16, still resume bit for bit; an explicitly trusted checkpoint loads."""

from __future__ import annotations

import datetime
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoints import manifest, safe_load
from checkpoints.checkpointer import rng_state, set_rng_state
from checkpoints.layout import write_latest
from checkpoints.universal import convert
from pipeline.checkpoint_cli import checkpoint_command
from pipeline.config import load_config
from tests.checkpoints.test_universal import config_file
from tests.support.train_harness import REPO, env, launch, losses

GRAINE = [sys.executable, "-m", "pipeline.cli"]
ZERO2 = ["train.zero_stage=2", "train.train_tokens=1024"]  # 8 steps, checkpoints 4 and 8
LONGER = ["train.zero_stage=2", "train.train_tokens=1536"]  # resumes from 8


class Payload:
    """Unpickling it runs `touch MARKER`: os.system is pickled as the global posix.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecPayload(Payload):
    """The same through a builtin: builtins.exec writing the marker."""

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def plant(path: Path, value, key: str = "graine_test_planted") -> None:
    """Add `value` to the dict saved in the (legitimate) torch file `path`, then reseal the manifest of
    the checkpoint folder holding it, as an attacker would."""
    data = torch.load(path, map_location="cpu", weights_only=False)  # our own, untampered file
    data[key] = value
    torch.save(data, path)
    manifest.seal(safe_load.checkpoint_folder_of(path))


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for old in dst.glob("result-rank*.json"):
        old.unlink()
    return dst


@pytest.fixture(scope="module")
def zero2(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("safe") / "run"
    result, output = launch(run_dir, ZERO2)
    assert result == "done", output[-4000:]
    assert (run_dir / "checkpoints" / "global_step8" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    return run_dir


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PAYLOAD-RAN"
    yield path
    assert not path.exists(), "a planted pickle ran"


# ----------------------------------------------------------------------------------- the check itself
def torch_zip(path: Path, pickle_bytes: bytes) -> Path:
    """A torch zip file whose data.pkl is `pickle_bytes`, byte for byte."""
    writer = torch._C.PyTorchFileWriter(str(path))
    writer.write_record("data.pkl", pickle_bytes, len(pickle_bytes))
    writer.write_record("byteorder", b"little", 6)
    writer.write_end_of_file()
    return path


def crafted(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}".encode()

    def text(s: bytes) -> bytes:  # SHORT_BINUNICODE
        return b"\x8c" + bytes([len(s)]) + s

    return {
        # STACK_GLOBAL whose names come back from the memo, not from the strings just before it
        "memo": b"\x80\x04" + text(b"posix") + b"\x940" + text(b"system") + b"\x940h\x00h\x01\x93" + text(cmd) + b"\x85R.",
        "inst": b"(S'" + cmd + b"'\niposix\nsystem\n.",  # protocol 0
        "global": b"\x80\x02cposix\nsystem\nq\x00X" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R.",
        "py2_name": b"\x80\x02c__builtin__\nexec\nX\x04\x00\x00\x00None\x85R.",
        "dotted": b"\x80\x04" + text(b"torch") + text(b"_utils._rebuild_tensor_v2") + b"\x93)R.",
        "ext": b"\x80\x02\x82\x01.",
    }


def test_crafted_and_foreign_files_are_refused_naming_the_global(tmp_path, marker):
    files = {name: torch_zip(tmp_path / f"{name}.pt", data) for name, data in crafted(marker).items()}
    files.update({name: tmp_path / f"{name}.pt" for name in ("nested", "exec", "proto4", "legacy", "raw", "script")})
    torch.save({"w": torch.ones(2), "x": Payload(marker)}, files["nested"])
    torch.save([ExecPayload(marker)], files["exec"])
    torch.save({"x": Payload(marker)}, files["proto4"], pickle_protocol=4)
    torch.save({"x": Payload(marker)}, files["legacy"], _use_new_zipfile_serialization=False)
    files["raw"].write_bytes(pickle.dumps(Payload(marker)))
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), files["script"])
    expect = {"memo": "posix.system", "inst": "posix.system", "global": "posix.system", "nested": "posix.system",
              "proto4": "posix.system", "py2_name": "builtins.exec", "exec": "builtins.exec",
              "dotted": "'_utils._rebuild_tensor_v2' in module 'torch'", "ext": "opcode EXT1",
              "legacy": "not in torch's zip format", "raw": "not in torch's zip format", "script": "TorchScript"}
    for name, path in files.items():
        why = safe_load.check_file(path)
        assert why is not None and expect[name] in why, (name, why)
        with pytest.raises(safe_load.UnsafeCheckpointError, match=f"{path} .*Pass --trust-checkpoint"):
            safe_load.load(path)
    # The payloads are live: unchecked, torch.load(weights_only=False) runs them.
    for name in ("memo", "nested", "proto4"):
        subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(files[name])!r}, weights_only=False)"],
                       capture_output=True, env=env())
        assert marker.exists(), name
        marker.unlink()


def test_legitimate_files_pass_and_rng_needs_no_allow_list(zero2):
    folder = zero2 / "checkpoints" / "global_step8"
    assert safe_load.check_folder(folder) is None
    files = safe_load.pickle_files(folder)
    assert {f.name for f in files} >= {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                       "rank00000.pt", "rank00001.pt"}
    for path in files:
        safe_load.load(path)
    # graine's own files need nothing beyond torch's default weights_only set.
    state = torch.load(folder / "rng" / "rank00000.pt", weights_only=True)
    assert set(state) >= {"python", "numpy", "torch"}
    # DeepSpeed's optimizer states need exactly the DeepSpeed entries of the allow-list.
    with pytest.raises(pickle.UnpicklingError, match="deepspeed"):
        torch.load(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=True)


def test_old_rng_files_with_numpy_arrays_still_load(tmp_path):
    (tmp_path / "rng").mkdir()
    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old, tmp_path / "rng" / "rank00000.pt")  # what graine wrote before
    want = draws()
    set_rng_state(safe_load.load(tmp_path / "rng" / "rank00000.pt"))
    assert draws() == want
    # The new format round-trips too.
    torch.save(rng_state(), tmp_path / "rng" / "rank00001.pt")
    want = draws()
    set_rng_state(torch.load(tmp_path / "rng" / "rank00001.pt", weights_only=True))
    assert draws() == want
    # numpy's globals are allowed in RNG files only.
    torch.save(old, tmp_path / "elsewhere.pt")
    assert "numpy" in safe_load.check_file(tmp_path / "elsewhere.pt")
    assert safe_load.check_file(tmp_path / "rng" / "rank00000.pt") is None


# --------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("rel", ["rng/rank00000.pt", "rng/rank00001.pt", "mp_rank_00_model_states.pt",
                                 "zero_pp_rank_1_mp_rank_00_optim_states.pt"])
def test_resume_refuses_a_planted_pickle(zero2, tmp_path, marker, rel):
    run_dir = copy_run(zero2, tmp_path / "run")
    folder = run_dir / "checkpoints" / "global_step8"
    victim = folder / rel
    plant(victim, Payload(marker))
    assert manifest.verify(folder) is None  # the manifest matches: only the check stands in the way
    result, output = launch(run_dir, LONGER)
    assert result.startswith("error: UnsafeCheckpointError"), output[-4000:]
    assert f"{victim} would import posix.system" in result
    assert f"--trust-checkpoint {folder}" in result and "if you trust its author" in result
    assert not (run_dir / "checkpoints" / "global_step12").exists()


def test_a_pickle_in_place_of_the_json_state_runs_nothing(zero2, tmp_path, marker):
    run_dir = copy_run(zero2, tmp_path / "run")
    folder = run_dir / "checkpoints" / "global_step8"
    (folder / "graine_state.json").write_bytes(pickle.dumps(Payload(marker), protocol=0))
    manifest.seal(folder)
    result, output = launch(run_dir, LONGER)
    assert result.startswith("error: CheckpointError"), output[-4000:]
    assert "graine_state.json cannot be read as graine's checkpoint state" in result
    assert not marker.exists()


def test_a_trusted_checkpoint_loads(zero2, tmp_path):
    run_dir = copy_run(zero2, tmp_path / "run")
    folder = run_dir / "checkpoints" / "global_step8"
    plant(folder / "rng" / "rank00000.pt", datetime.date(2024, 1, 1))  # harmless, but not on the allow-list
    result, output = launch(run_dir, LONGER)
    assert result.startswith("error: UnsafeCheckpointError") and "datetime.date" in result, output[-4000:]
    result, output = launch(run_dir, LONGER, extra_env={safe_load.TRUST_ENV: str(folder)})
    assert result == "done", output[-4000:]
    assert "resumed from" in output and "step 8" in output and max(losses(run_dir)) == 12


def test_trust_is_explicit_per_path(tmp_path, monkeypatch):
    monkeypatch.delenv(safe_load.TRUST_ENV, raising=False)
    ckpt = tmp_path / "checkpoints"
    assert not safe_load.is_trusted(ckpt / "global_step8" / "x.pt")
    safe_load.trust([str(ckpt / "global_step8")])
    assert safe_load.is_trusted(ckpt / "global_step8" / "rng" / "rank00000.pt")
    assert not safe_load.is_trusted(ckpt / "global_step80" / "x.pt")
    assert not safe_load.is_trusted(ckpt / "global_step8_universal" / "x.pt")
    from pipeline.cli import build_parser

    for argv in (["run", "pretrain"], ["task", "pretrain", "train"], ["checkpoint", "dump", "8"]):
        args, _ = build_parser().parse_known_args([*argv, "--trust-checkpoint", "a", "--trust-checkpoint", "b"])
        assert args.trust_checkpoint == ["a", "b"]


# --------------------------------------------------------------------------- conversion, dump, export
def test_universal_conversion_refuses_then_trusts(zero2, tmp_path, marker):
    run_dir = copy_run(zero2, tmp_path / "run")
    folder = run_dir / "checkpoints" / "global_step8"
    victim = folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    original = victim.read_bytes()
    plant(victim, Payload(marker))
    cmd = [*GRAINE, "checkpoint", "universal", "8", "-c", str(config_file(run_dir, ZERO2))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{victim} would import posix.system" in proc.stderr and f"--trust-checkpoint {folder}" in proc.stderr
    assert not (run_dir / "checkpoints" / "global_step8_universal").exists()
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))

    victim.write_bytes(original)
    plant(folder / "rng" / "rank00001.pt", datetime.date(2024, 1, 1))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, timeout=120)
    assert proc.returncode == 1 and "datetime.date" in proc.stderr, proc.stdout + proc.stderr
    proc = subprocess.run([*cmd, "--trust-checkpoint", str(folder)], capture_output=True, text=True, env=env(),
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert manifest.verify(run_dir / "checkpoints" / "global_step8_universal") is None


def test_dump_and_universal_resume_refuse_planted_pickles(zero2, tmp_path, marker):
    run_dir = copy_run(zero2, tmp_path / "run")
    folder = run_dir / "checkpoints" / "global_step8"
    cfg = load_config(None, [f"run_dir={run_dir}"])
    model_states = folder / "mp_rank_00_model_states.pt"
    original = model_states.read_bytes()
    plant(model_states, Payload(marker))
    with pytest.raises(safe_load.UnsafeCheckpointError, match=f"{model_states} would import posix.system"):
        checkpoint_command(cfg, "dump", "8")
    assert not (run_dir / "dumps").exists() or not list((run_dir / "dumps").iterdir())

    # A published universal conversion is loaded by DeepSpeed on resume (1 rank); the dump reads the
    # checkpoint's own partitions, so it still works and the planted copy is never unpickled.
    model_states.write_bytes(original)
    manifest.seal(folder)
    universal = convert(folder)
    victim = universal / "zero" / "h.0.mlp.dense_h_to_4h.weight" / "fp32.pt"
    data = torch.load(victim, weights_only=False)
    torch.save({**data, "planted": ExecPayload(marker)}, victim)
    manifest.seal(universal)
    assert checkpoint_command(cfg, "dump", "8") == 0 and not marker.exists()
    result, output = launch(run_dir, LONGER, nproc=1)
    assert result.startswith("error: UnsafeCheckpointError"), output[-4000:]
    assert f"{victim} would import builtins.exec" in result and f"--trust-checkpoint {universal}" in result


def test_export_refuses_planted_pickles(zero2, tmp_path, marker):
    from training.export import consolidated_fp32, fp32_weights

    run_dir = copy_run(zero2, tmp_path / "run")
    folder = run_dir / "checkpoints" / "global_step8"
    victim = folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    plant(victim, Payload(marker))
    with pytest.raises(safe_load.UnsafeCheckpointError, match=f"{victim} would import posix.system"):
        consolidated_fp32(folder)
    with pytest.raises(safe_load.UnsafeCheckpointError, match=f"{victim} would import posix.system"):
        fp32_weights(folder)  # the export's streaming reader
    assert consolidated_fp32(run_dir / "checkpoints" / "global_step4")  # an untouched one still exports
    assert fp32_weights(run_dir / "checkpoints" / "global_step4").names

    # Without ZeRO, graine reads the model states itself (weights_only=True).
    zero0 = tmp_path / "zero0"
    result, output = launch(zero0, ["train.zero_stage=0", "train.train_tokens=512"], nproc=1)
    assert result == "done", output[-4000:]
    folder = zero0 / "checkpoints" / "global_step4"
    assert set(consolidated_fp32(folder)) >= {"word_embeddings.weight"}
    plant(folder / "mp_rank_00_model_states.pt", Payload(marker))
    with pytest.raises(safe_load.UnsafeCheckpointError, match="mp_rank_00_model_states.pt would import posix.system"):
        consolidated_fp32(folder)
    with pytest.raises(safe_load.UnsafeCheckpointError, match="posix.system"):
        safe_load.load(folder / "mp_rank_00_model_states.pt")


# ------------------------------------------------------------------------- legitimate resumes, bit exact
@pytest.mark.slow
@pytest.mark.parametrize("zero,precision", [(0, "fp32"), (1, "bf16"), (2, "fp32"), (3, "bf16")])
def test_every_zero_stage_still_resumes_bit_exactly(tmp_path, zero, precision):
    over = [f"train.zero_stage={zero}", f"train.precision={precision}", "train.train_tokens=1024"]
    reference = tmp_path / "ref"
    result, output = launch(reference, over)
    assert result == "done", output[-4000:]
    want = losses(reference)
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "global_step8")
    write_latest(run_dir / "checkpoints", "global_step4")
    (run_dir / "logs" / "metrics.jsonl").unlink()
    result, output = launch(run_dir, over)
    assert result == "done" and "resumed from" in output, output[-4000:]
    got = losses(run_dir)
    assert sorted(got) == [5, 6, 7, 8]
    assert all(got[s] == want[s] for s in got), (got, want)
    assert safe_load.check_folder(run_dir / "checkpoints" / "global_step8") is None
