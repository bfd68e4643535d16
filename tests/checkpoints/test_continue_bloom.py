"""Continue pretraining a Hugging Face BLOOM with its own tokenizer, end to end on a real tiny run:
clean -> tokenizer (tokenizer.from_pretrained: a byte-level BPE trained here with `tokenizers`) ->
preprocess (ids from the `tokenizers` batch path, EOD = its EOS) -> pretrain on 2 ranks from
`train.init_from: hf:` (a random BloomForCausalLM saved here by transformers) -> export, reloaded offline
by transformers with the adopted tokenizer's ids."""

from __future__ import annotations

import json

import pytest
import torch

from core import lineage
from data_prep import synthetic
from data_prep.indexed_dataset import IndexedDataset
from data_prep.shards import read_documents
from data_prep.tokenizer import tokenizer_hash
from pipeline import runner
from tests.support import hf_fixtures, tiny_run

transformers = pytest.importorskip("transformers")
TEXT = "Hello world, bonjour le monde! ¿Qué tal? 12345 — Привет"


def test_a_bloom_continues_with_its_adopted_tokenizer_and_exports(tmp_path):
    from tokenizers import Tokenizer

    corpus, run_dir = tmp_path / "corpus", tmp_path / "run"
    synthetic.main([str(corpus), "--docs-per-language", "40"])
    runner.run(tiny_run.config(run_dir, corpus), ["clean"], executor="inline")
    docs = list(read_documents(run_dir / "clean"))
    bpe = hf_fixtures.train_byte_bpe(tmp_path / "bpe", [d.text for d in docs], vocab_size=500)
    adopted = Tokenizer.from_file(str(bpe / "tokenizer.json"))
    assert 384 < adopted.get_vocab_size() <= 500  # model.pad_vocab_to_multiple=128 pads it to 512
    hf = hf_fixtures.save_bloom(tmp_path / "hf", vocab_size=512, num_layers=1)
    cfg = tiny_run.config(run_dir, corpus, f"tokenizer.from_pretrained={bpe}", f"train.init_from=hf:{hf}",
                          "train.train_tokens=256")

    runner.run(cfg, ["tokenizer", "preprocess"], executor="inline")
    tok_dir = run_dir / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok_dir / name).read_bytes() == (bpe / name).read_bytes(), name  # published unchanged
    assert not (tok_dir / "tokenizer.model").exists()
    report = json.loads((tok_dir / "report.json").read_text())
    assert report["model_type"] == "pretrained" and report["unknown_byte_rate"] == 0.0  # byte-level: no unknowns
    assert report["heldout"] and all(r["bytes_per_token"] > 1 and r["roundtrip_failures"] == 0
                                     for r in report["heldout"].values())
    assert "raw" in lineage.read_record(tok_dir)["inputs"]  # the adopted files' hashes
    blend = json.loads((run_dir / "shards" / "blend.json").read_text())
    assert blend["tokenizer_hash"] == tokenizer_hash(tok_dir) and blend["eod_id"] == 2 and blend["dtype"] == "uint16"
    # The shards hold the tokenizer's own ids, </s> after each document.
    want = sorted(tuple(adopted.encode(d.text, add_special_tokens=False).ids) + (2,) for d in docs)
    got = []
    for split in ("train", "valid"):
        for idx in (run_dir / "shards" / split).glob("*.idx"):
            data = IndexedDataset(idx.with_suffix(""))
            got += [tuple(int(t) for t in data[i]) for i in range(len(data))]
    assert sorted(got) == want

    runner.run(cfg, ["pretrain"], executor="local")
    record = lineage.read_record(run_dir / "pretrain")
    assert record["init_from"]["kind"] == "hf" and record["init_from"]["path"] == str(hf.resolve())
    runner.run(cfg, ["export"], executor="inline")

    release = run_dir / "export" / "global_step2"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(release), local_files_only=True)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == adopted.encode(TEXT, add_special_tokens=False).ids
    model = hf_fixtures.load_bloom(release)
    assert model.config.vocab_size == 512 and model.config.eos_token_id == 2
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 512) and torch.isfinite(logits).all()
    # Two steps of training moved the weights away from the source's, but not far.
    start = hf_fixtures.load_bloom(hf).transformer.word_embeddings.weight
    moved = (model.transformer.word_embeddings.weight - start).abs().max().item()
    assert 0 < moved < 0.1


def test_adopted_tokenizer_shards_do_not_depend_on_the_task_count(tmp_path):
    """preprocess with the `tokenizers` batch path keeps today's guarantee: 1 task or 3, the same bytes."""
    corpus = tmp_path / "corpus"
    synthetic.main([str(corpus), "--docs-per-language", "30"])
    bpe = None
    shards = {}
    for tasks in (1, 3):
        run_dir = tmp_path / f"run{tasks}"
        runner.run(tiny_run.config(run_dir, corpus), ["clean"], executor="inline")
        if bpe is None:
            bpe = hf_fixtures.train_byte_bpe(tmp_path / "bpe", [d.text for d in read_documents(run_dir / "clean")],
                                             vocab_size=500)
        cfg = tiny_run.config(run_dir, corpus, f"tokenizer.from_pretrained={bpe}", f"preprocess.num_tasks={tasks}")
        runner.run(cfg, ["tokenizer", "preprocess"], executor="inline")
        out = run_dir / "shards"
        shards[tasks] = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                         if p.is_file() and p.suffix in (".bin", ".idx")}
    assert shards[1] and shards[1].keys() == shards[3].keys()
    assert all(shards[1][name] == shards[3][name] for name in shards[1]), "shards differ between 1 and 3 tasks"
