"""A real run directory (generated corpus -> clean -> tokenizer -> preprocess, with completion records)
in a few seconds, and the overrides of a tiny BLOOM for the real `pretrain` stage on it.

Shared by the export test and the real-Slurm pretrain test (`from tests.support import tiny_run`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import runner
from pipeline.config import RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def overrides(run_dir: Path, corpus: Path, *extra: str) -> list[str]:
    """16 steps of 4 samples x 32 tokens on 2 ranks, a checkpoint every 4; a 1-layer, 32-wide model."""
    return [f"run_dir={run_dir}", f"clean.inputs=[{corpus}/raw/**/*]", "clean.num_tasks=1", "preprocess.num_tasks=1",
            "tokenizer.vocab_size=1000", "tokenizer.character_coverage=0.99", "tokenizer.sample_bytes=200000",
            "model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "train.seq_len=32",
            "train.micro_batch_size=2", "train.global_batch_size=4", "train.train_tokens=2048", "train.lr=3e-3",
            "train.warmup_tokens=256", "train.decay_tokens=2048", "train.log_interval=1", "train.eval_interval=0",
            "train.devices_per_node=2", "checkpoint.interval=4", *extra]


def config(run_dir: Path, corpus: Path, *extra: str) -> RunConfig:
    return load_config(REPO / "configs" / "demo.yaml", overrides(run_dir, corpus, *extra))


def prepare(run_dir: Path, corpus: Path) -> RunConfig:
    """Generate the corpus (40 documents per language) and run the data stages inline."""
    from data_prep import synthetic

    if not (corpus / "raw").is_dir():
        synthetic.main([str(corpus), "--docs-per-language", "40"])
    cfg = config(run_dir, corpus)
    runner.run(cfg, ["clean", "tokenizer", "preprocess"], executor="inline")
    return cfg
