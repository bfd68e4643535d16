"""Stage `export` on a real tiny run (corpus -> ... -> pretrain on 2 ranks, ZeRO 2): the release loads
offline with transformers, its logits equal graine's within 1e-5 in fp32, its tokenizer gives
SentencePiece's ids; bf16 and sharded exports of a chosen step; a new checkpoint makes it stale."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from core.errors import GraineError
from pipeline import runner
from tests.support import tiny_run
from training import export
from training.hf_compat import import_transformers
from training.model import BloomModel

pytest.importorskip("transformers")
transformers = import_transformers()

EXTRA = ("train.zero_stage=2", "train.train_tokens=1536", "checkpoint.keep_every=4")  # steps 4, 8, 12 kept
TEXT = "Hello world, bonjour le monde! ¿Qué tal? 12345 — Привет"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("export")
    tiny_run.prepare(base / "run", base / "corpus")
    runner.run(tiny_run.config(base / "run", base / "corpus", *EXTRA), ["pretrain"], executor="local")
    assert (base / "run" / "checkpoints" / "global_step12").is_dir()
    return base


@pytest.fixture
def run(trained, tmp_path) -> tuple[Path, Path]:
    shutil.copytree(trained / "run", tmp_path / "run", symlinks=True)
    return tmp_path / "run", trained / "corpus"


def cfg_of(run, *extra):
    run_dir, corpus = run
    return tiny_run.config(run_dir, corpus, *EXTRA, *extra)


def graine_logits(cfg, step: int, ids: torch.Tensor) -> torch.Tensor:
    """graine's model with the weights the training engine held (its fp32 module state at that step)."""
    from data_prep.tokenizer import tokenizer_info

    folder = Path(cfg.run_dir) / "checkpoints" / f"global_step{step}"
    module = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    model = BloomModel(cfg.model, tokenizer_info(Path(cfg.run_dir) / "tokenizer").vocab_size)
    model.load_state_dict(module)
    with torch.no_grad():
        return model.eval()(ids)


def load_release(folder: Path, dtype=torch.float32):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model.eval(), tokenizer


def test_release_loads_offline_and_logits_match_graine(run, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = cfg_of(run)
    runner.run(cfg, ["export"], executor="inline")
    out = run[0] / "export" / "global_step12"
    printed = capsys.readouterr().out
    assert "step 12 (1,536 tokens" in printed and str(out) in printed
    last = json.loads((run[0] / "export" / "last_export.json").read_text())
    assert last["path"] == "export/global_step12" and last["source"] == "checkpoints/global_step12"
    assert str(run[0]) not in (out / "graine_export.json").read_text()  # nothing names this run directory
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "graine_export.json", "tokenizer.json",
                                               "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"}
    model, tokenizer = load_release(out)
    assert type(model).__name__ == "BloomForCausalLM"

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == sp.encode(TEXT) and tokenizer.decode(ids) == TEXT
    batch = torch.tensor([ids, list(reversed(ids))])
    with torch.no_grad():
        theirs = model(batch).logits
    ours = graine_logits(cfg, 12, batch)
    assert theirs.shape == ours.shape == (2, len(ids), 1024)  # 1000 tokens padded to a multiple of 128
    assert (theirs - ours).abs().max().item() <= 1e-5
    # A different step's weights would not pass: the check can tell checkpoints apart.
    assert (graine_logits(cfg, 8, batch) - theirs).abs().max().item() > 1e-3

    record = json.loads((out / "graine_export.json").read_text())
    assert record["step"] == 12 and record["saved_world_size"] == 2 and record["dtype"] == "fp32"
    assert runner.run(cfg, ["export"], executor="inline")[0].action == "skip"  # complete and up to date


def test_bf16_sharded_export_of_a_chosen_step_keeps_the_earlier_one(run):
    runner.run(cfg_of(run), ["export"], executor="inline")
    first = (run[0] / "export" / "global_step12" / "model.safetensors").read_bytes()
    cfg = cfg_of(run, "export.step=8", "export.dtype=bf16", "export.max_shard_gb=0.00005")  # 50 KB shards
    with pytest.raises(GraineError, match="stale"):  # its config changed: asked to force
        runner.run(cfg, ["export"], executor="inline")
    runner.run(cfg, ["export"], executor="inline", force=True)
    out = run[0] / "export" / "global_step8"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((out / s).is_file() for s in shards)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model, tokenizer = load_release(out, dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([tokenizer(TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        theirs = model(ids).logits.float()
    ours = graine_logits(cfg, 8, ids)
    assert (theirs - ours).abs().max().item() <= 0.03 * ours.abs().max().item()  # bf16 rounding
    # The earlier export of step 12 is still there, byte for byte, and still loads.
    assert (run[0] / "export" / "global_step12" / "model.safetensors").read_bytes() == first
    load_release(run[0] / "export" / "global_step12")


def test_new_checkpoint_makes_the_export_stale(run):
    runner.run(cfg_of(run), ["export"], executor="inline")
    manifest_before = export.checkpoint_manifest(cfg_of(run))
    assert manifest_before == [run[0] / "checkpoints" / "global_step12" / "manifest.json"]
    # Four more steps: a new latest checkpoint (train.train_tokens changed, so pretrain is forced).
    longer = cfg_of(run, "train.train_tokens=2048")
    runner.run(longer, ["pretrain"], executor="local", force=True)
    assert export.checkpoint_manifest(longer) == [run[0] / "checkpoints" / "global_step16" / "manifest.json"]
    plan = runner.plan_stage(longer, export.STAGE, force=False)
    assert plan.action == "refuse" and "stale" in plan.reason and "raw inputs" in plan.reason
    runner.run(longer, ["export"], executor="inline", force=True)
    assert json.loads((run[0] / "export" / "last_export.json").read_text())["step"] == 16


def test_a_missing_step_names_the_available_ones(run):
    with pytest.raises(GraineError, match=r"export.step=7: .*global_step7 does not exist; .*: 4, 8, 12"):
        runner.run(cfg_of(run, "export.step=7"), ["export"], executor="inline")


def test_checkpoint_list_shows_validity_marks_and_tokens(run, capsys):
    from pipeline.checkpoint_cli import checkpoint_command

    runner.run(cfg_of(run), ["export"], executor="inline")
    victim = run[0] / "checkpoints" / "global_step4" / "graine_state.json"
    victim.write_text(victim.read_text() + " ")  # one byte more than the manifest says
    assert checkpoint_command(cfg_of(run, "checkpoint.keep_every=8"), "list", None) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {int(m.group(1)): line for line in lines if (m := re.match(r"\s*(\d+)\s+[\d.]+ [KMGT]?B ", line))}
    assert sorted(rows) == [4, 8, 12]
    assert "INVALID (graine_state.json has" in rows[4]
    assert rows[8].rstrip().endswith("valid  [release]") and "1,024" in rows[8]
    assert rows[12].rstrip().endswith("valid  [latest, export]") and "1,536" in rows[12]


def test_a_bf16_trained_zero3_checkpoint_exports_and_dumps_its_fp32_masters(trained, tmp_path, monkeypatch):
    """bf16 training under ZeRO-3 on 2 ranks: the export (fp32) holds the fp32 master weights, equal to
    DeepSpeed's zero_to_fp32 and to what `graine checkpoint dump` writes, and transformers runs it."""
    from safetensors.torch import load_file

    from pipeline.checkpoint_cli import checkpoint_command
    from training.hf_mapping import to_hf_state_dict

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "run", run_dir, symlinks=True)
    for done in ("checkpoints", "pretrain", "logs", "export"):
        shutil.rmtree(run_dir / done, ignore_errors=True)
    cfg = tiny_run.config(run_dir, trained / "corpus", "train.zero_stage=3", "train.precision=bf16",
                          "train.train_tokens=1024")
    runner.run(cfg, ["pretrain"], executor="local")
    runner.run(cfg, ["export"], executor="inline")
    out = run_dir / "export" / "global_step8"
    assert json.loads((out / "graine_export.json").read_text())["saved_world_size"] == 2
    exported = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in exported.values()} == {torch.float32}

    assert_equals_zero_to_fp32(exported, run_dir / "checkpoints" / "global_step8")
    assert checkpoint_command(cfg, "dump", "8") == 0
    dumped = load_file(str(run_dir / "dumps" / "global_step8" / "fp32.safetensors"))
    from_dump = to_hf_state_dict(dumped, export.saved_model_config(run_dir / "checkpoints" / "global_step8"))
    del from_dump["lm_head.weight"]
    assert exported.keys() == from_dump.keys()
    for name, value in exported.items():
        assert torch.equal(value, from_dump[name]), name
    # fp32 masters, not the bf16 copy: some value is not representable in bf16.
    assert any(not torch.equal(v, v.bfloat16().float()) for v in exported.values())

    model, tokenizer = load_release(out)
    ids = torch.tensor([tokenizer(TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def assert_equals_zero_to_fp32(exported: dict, folder: Path) -> None:
    """The export's tensors (read shard by shard from the partitions) equal DeepSpeed's zero_to_fp32."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from training.hf_mapping import to_hf_state_dict

    theirs = to_hf_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name),
                              export.saved_model_config(folder))
    del theirs["lm_head.weight"]
    assert exported.keys() == theirs.keys()
    for name, value in exported.items():
        assert torch.equal(value, theirs[name].float()), name


def test_a_sharded_export_streams_the_zero2_partitions_of_two_ranks(run, monkeypatch):
    """Shards of 20 KB (many), each read from both ranks' partitions, every tensor above 4 KB as ranges of
    its elements: the same tensors as zero_to_fp32."""
    from safetensors.torch import load_file

    from checkpoints import safetensors_io

    monkeypatch.setattr(safetensors_io, "READ_BYTES", 4096)
    cfg = cfg_of(run, "export.max_shard_gb=0.00002")
    runner.run(cfg, ["export"], executor="inline", force=True)
    out = run[0] / "export" / "global_step12"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3
    from checkpoints.zero_stream import ZeroCheckpoint

    zero = ZeroCheckpoint(run[0] / "checkpoints" / "global_step12")
    assert zero.world == 2 and any(len(zero._pieces(zero.places[n])) == 2 for n in zero.names)  # across ranks
    exported = {k: v for f in files for k, v in load_file(str(out / f)).items()}
    assert_equals_zero_to_fp32(exported, run[0] / "checkpoints" / "global_step12")


def test_weights_read_from_the_partitions_hold_no_mapping_of_the_checkpoint(run):
    """The fp32 partitions are saved as Parameters (requires_grad): a copy of a slice of a loaded one
    carries the autograd graph back to the whole (memory-mapped) partition, which the export once held
    twice over that way. The reader reads the bytes at the partitions' file offsets instead: the tensors
    it returns are plain, and no rank file is mapped while they live."""
    from checkpoints.zero_stream import ZeroCheckpoint

    folder = run[0] / "checkpoints" / "global_step12"
    zero = ZeroCheckpoint(folder)
    for state in ("fp32", "exp_avg"):
        got = zero.read(zero.names, state)
        assert all(not t.requires_grad and t.grad_fn is None for t in got.values()), state
        mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if str(folder) in line]
        assert mapped == [], mapped
        del got


def test_without_offsets_from_torch_the_partitions_are_found_in_their_mapping(run, monkeypatch):
    """torch < 2.6 records no file offsets on meta tensors: they are then read from the file's memory
    mapping, and must be the same."""
    from checkpoints import zero_stream

    folder = run[0] / "checkpoints" / "global_step12"
    zero = zero_stream.ZeroCheckpoint(folder)
    monkeypatch.setattr(zero_stream, "_meta_offset", lambda t: None)
    again = zero_stream.ZeroCheckpoint(folder)
    assert again.stored == zero.stored and len(zero.stored) == 2
    assert {s for rank in zero.stored for s in rank.values() if not isinstance(s, str)}  # located, not absent
    want, got = zero.read(zero.names, "exp_avg_sq"), again.read(again.names, "exp_avg_sq")
    assert all(torch.equal(want[n], got[n]) for n in zero.names)
