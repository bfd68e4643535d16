"""Continued pretraining (`train.init_from`) in real processes: DeepSpeed on gloo, CPU, fp32.

Fixtures are built here, offline: small random BloomForCausalLM folders saved by transformers (fp32 in one
file, bf16 and fp16 in shards). The state right after the init is captured by tests.support.init_worker
(the full fp32 weights the optimizer holds, and the engine's logits) before the first step runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from checkpoints.layout import read_state
from checkpoints.universal import manifest_sha256
from core.errors import ConfigError
from pipeline.config import load_config
from tests.support import hf_fixtures, init_worker, train_harness
from tests.support.train_harness import SyntheticTokens, losses
from training import init_from
from training.export import consolidated_fp32
from training.hf_compat import import_transformers
from training.hf_mapping import from_hf_state_dict

pytest.importorskip("transformers")
transformers = import_transformers()

VOCAB = 96  # train_harness's synthetic tokens; the fixtures have as many rows (pad_vocab_to_multiple=32)
PROBE = [[5, 7, 9, 11, 3, 2, 50, 95, 0, 1], [94, 93, 8, 8, 8, 64, 32, 16, 4, 2]]
TWO_LAYERS = ["model.num_layers=2"]


def hf_loss_of_first_batch(model, run_dir: Path, batch: int = 4) -> float:
    """transformers' mean loss on the run's first global batch (the samples the harness's loader takes
    first: 0..batch-1), each sample's seq_len + 1 tokens given whole (transformers shifts the labels)."""
    saved = yaml.safe_load((run_dir / "checkpoints" / "global_step1" / "config.yaml").read_text())
    tokens = SyntheticTokens(4096, saved["train"]["seq_len"], saved["seed"], VOCAB)
    ids = torch.stack([torch.from_numpy(tokens[i]) for i in range(batch)])
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


@pytest.mark.parametrize("dtype, shards, zero, ranks", [("fp32", None, 1, 1), ("bf16", "20KB", 3, 2)],
                         ids=["fp32-single-zero1", "bf16-sharded-zero3-2ranks"])
def test_hf_init_gives_transformers_logits_and_first_loss(tmp_path, dtype, shards, zero, ranks):
    hf = hf_fixtures.save_bloom(tmp_path / "hf", vocab_size=VOCAB, dtype=dtype, max_shard_size=shards)
    assert (hf / "model.safetensors.index.json").is_file() == bool(shards)
    run_dir = tmp_path / "run"
    result, output = init_worker.launch(
        run_dir, [f"train.init_from=hf:{hf}", *TWO_LAYERS, f"train.zero_stage={zero}", "train.train_tokens=128"],
        nproc=ranks, capture=str(tmp_path / "cap.pt"), probe=PROBE)
    assert result == "done", output[-4000:]
    cap = torch.load(tmp_path / "cap.pt", weights_only=False)
    reference = hf_fixtures.load_bloom(hf)
    with torch.no_grad():
        want = reference(torch.tensor(PROBE)).logits
    assert (cap["logits"] - want).abs().max().item() <= 1e-5
    # The fp32 master weights are the source's values exactly (bf16 fixture: its bf16 values, widened).
    source = {f"transformer.{k}": v for k, v in reference.transformer.state_dict().items()}
    for name, value in from_hf_state_dict(source, cfg_model(TWO_LAYERS)).items():
        assert torch.equal(cap["weights"][name], value.float()), name
    # The first step's loss (before its update) is transformers' loss on the same batch.
    assert losses(run_dir)[1] == pytest.approx(hf_loss_of_first_batch(reference, run_dir), rel=1e-5, abs=1e-6)
    # Lineage: every checkpoint and the result name the source.
    state = read_state(run_dir / "checkpoints" / "global_step1")
    assert state.lineage["init_from"]["kind"] == "hf" and state.lineage["init_from"]["path"] == str(hf.resolve())
    assert state.lineage["init_from"] == cap["source"]
    assert json.loads((run_dir / "pretrain" / "result.json").read_text())["init_from"] == cap["source"]


def cfg_model(overrides):
    return load_config(None, train_harness.base_overrides(Path("/nonexistent")) + list(overrides)).model


def test_fp16_shards_load_lazily_under_their_graine_names(tmp_path):
    hf = hf_fixtures.save_bloom(tmp_path / "hf", vocab_size=VOCAB, dtype="fp16", max_shard_size="20KB")
    loaders = from_hf_state_dict(init_from.LazyHFTensors(hf), cfg_model(TWO_LAYERS))
    reference = hf_fixtures.load_bloom(hf).transformer.state_dict()
    assert set(loaders) == set(reference)
    for name, load in loaders.items():
        assert torch.equal(load(), reference[name].float()), name


def test_model_shape_is_checked_or_taken_from_the_source(tmp_path):
    hf = hf_fixtures.save_bloom(tmp_path / "hf", vocab_size=VOCAB, num_layers=2, hidden_size=32, num_heads=2)
    base = train_harness.base_overrides(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model.num_layers=1 but the source has 2.*model.size=from_init"):
        init_from.check(load_config(None, [*base, f"train.init_from=hf:{hf}"]))
    cfg = load_config(None, [*base, "model.size=from_init", "model.num_layers=0", "model.hidden_size=0",
                             "model.num_heads=0", f"train.init_from=hf:{hf}"])
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_heads, cfg.model.vocab_size) == (2, 32, 2, 96)
    init_from.check(cfg)
    with pytest.raises(ConfigError, match="config.json cannot be read"):
        load_config(None, [*base, "model.size=from_init", f"train.init_from=hf:{tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="train.init_optimizer=true needs a graine run"):
        load_config(None, [*base, f"train.init_from=hf:{hf}", "train.init_optimizer=true"])


@pytest.fixture(scope="module")
def zero2_source(tmp_path_factory) -> Path:
    """A graine run of 4 steps saved by 2 ranks with ZeRO-2 (checkpoint global_step4)."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    result, output = train_harness.launch(run_dir, ["train.zero_stage=2", "train.train_tokens=512"], nproc=2)
    assert result == "done", output[-4000:]
    return run_dir


@pytest.fixture(scope="module")
def continued(zero2_source, tmp_path_factory) -> tuple[Path, Path]:
    """A 1-rank ZeRO-1 run of 1 step initialised from zero2_source; (its run dir, the capture file)."""
    base = tmp_path_factory.mktemp("continued")
    result, output = init_worker.launch(base / "run", [f"train.init_from={zero2_source}", "train.zero_stage=1",
                                                       "train.train_tokens=128"],
                                        nproc=1, capture=str(base / "cap.pt"), probe=PROBE)
    assert result == "done", output[-4000:]
    return base / "run", base / "cap.pt"


def test_init_from_a_two_rank_zero2_checkpoint_gives_its_weights_at_step_0(zero2_source, continued):
    run_dir, capture = continued
    folder = zero2_source / "checkpoints" / "global_step4"
    want = consolidated_fp32(folder)
    cap = torch.load(capture, weights_only=False)
    assert set(cap["weights"]) == set(want)
    for name, value in want.items():
        assert torch.equal(cap["weights"][name], value), name
    source = read_state(run_dir / "checkpoints" / "global_step1").lineage["init_from"]
    assert source == {"spec": str(zero2_source), "kind": "graine", "path": str(folder.resolve()), "step": 4,
                      "manifest_sha256": manifest_sha256(folder)}
    # The new run counts its own steps and its own data from 0.
    assert read_state(run_dir / "checkpoints" / "global_step1").consumed_samples == 4


def test_a_damaged_source_is_refused_before_loading(zero2_source, tmp_path):
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(zero2_source / "checkpoints" / "global_step4", copy / "checkpoints" / "global_step4")
    (copy / "checkpoints" / "latest").write_text("global_step4\n")
    state = copy / "checkpoints" / "global_step4" / "graine_state.json"
    state.write_text(state.read_text().replace('"step": 4', '"step": 5'))
    result, output = init_worker.launch(tmp_path / "run", [f"train.init_from={copy}@4", "train.train_tokens=128"],
                                        nproc=1)
    assert result.startswith("error: ConfigError") and "is not a valid checkpoint" in result, output[-3000:]
    assert not (tmp_path / "run" / "checkpoints" / "global_step1").exists()


def test_resume_ignores_init_from_and_a_changed_one_is_refused_unless_forced(zero2_source, continued, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(continued[0], run_dir)
    first = consolidated_fp32(run_dir / "checkpoints" / "global_step1")
    same = [f"train.init_from={zero2_source}", "train.zero_stage=1"]
    # The same source, a longer run: it resumes from its own step 1 and does not load the source again.
    result, output = init_worker.launch(run_dir, [*same, "train.train_tokens=256"], nproc=1)
    assert result == "done", output[-4000:]
    assert "is not loaded again" in output and "initialised from" not in output
    assert sorted(losses(run_dir)) == [1, 2]
    assert read_state(run_dir / "checkpoints" / "global_step2").lineage["init_from"]["step"] == 4
    # Another source on a run with checkpoints: refused before a step, naming both.
    other = f"{zero2_source}@4"
    with pytest.raises(ConfigError, match=rf"changed from '{zero2_source}'.*to '{other}'.*--force"):
        init_from.check_unchanged(run_dir / "checkpoints", other)
    result, output = init_worker.launch(run_dir, [f"train.init_from={other}", "train.zero_stage=1",
                                                  "train.train_tokens=384"], nproc=1)
    assert result.startswith("error: ConfigError") and str(zero2_source) in result and other in result, result
    assert sorted(losses(run_dir)) == [1, 2]
    # --force (GRAINE_FORCE=1 in the job): resumes from its own checkpoint, still loading neither source.
    result, output = init_worker.launch(run_dir, [f"train.init_from={other}", "train.zero_stage=1",
                                                  "train.train_tokens=384"], nproc=1,
                                        extra_env={init_from.FORCE_ENV: "1"})
    assert result == "done", output[-4000:]
    assert "--force was given" in output and "initialised from" not in output
    assert sorted(losses(run_dir)) == [1, 2, 3]
    assert not torch.equal(consolidated_fp32(run_dir / "checkpoints" / "global_step3")["h.0.mlp.dense_h_to_4h.weight"],
                           first["h.0.mlp.dense_h_to_4h.weight"])


def test_init_optimizer_takes_the_adam_moments(tmp_path):
    """Same rank count (DeepSpeed's own load): the source's weights and moments are the run's at step 0."""
    from tests.support import hooked_worker

    source = tmp_path / "source"
    result, output = hooked_worker.launch(source, ["train.train_tokens=256"], nproc=1,
                                          optimizer_state=tmp_path / "live.pt")
    assert result == "done", output[-4000:]
    live = torch.load(tmp_path / "live.pt", weights_only=False)
    result, output = init_worker.launch(tmp_path / "run", [f"train.init_from={source}", "train.init_optimizer=true",
                                                           "train.train_tokens=128"],
                                        nproc=1, capture=str(tmp_path / "cap.pt"), probe=PROBE)
    assert result == "done", output[-4000:]
    assert "Adam moments taken from" in output
    cap = torch.load(tmp_path / "cap.pt", weights_only=False)
    for name, state in live.items():
        assert torch.equal(cap["weights"][name], state["fp32"]), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].abs().sum() > 0 and torch.equal(cap["moments"][name][key], state[key]), (name, key)


def test_the_bloom_560m_example_config_loads_from_a_local_download(tmp_path, monkeypatch):
    """configs/continue-bloom-560m.yaml against a $WORK holding bloom-560m's config.json and a tokenizer."""
    from transformers import BloomConfig

    from tests.support.train_harness import REPO

    folder = tmp_path / "models" / "bloom-560m"
    BloomConfig(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16).save_pretrained(str(folder))
    monkeypatch.setenv("WORK", str(tmp_path))
    cfg = load_config(REPO / "configs" / "continue-bloom-560m.yaml", [f"run_dir={tmp_path / 'run'}"])
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_heads, m.vocab_size) == (24, 1024, 16, 250880)
    assert m.padded_vocab_size(250680) == 250880
    assert init_from.parse(cfg.train.init_from).path == folder
    with pytest.raises(ConfigError, match="tokenizer.json does not exist"):  # the tokenizer is not there yet
        from data_prep.pretrained_tokenizer import source_files

        source_files(cfg.tokenizer.from_pretrained)
