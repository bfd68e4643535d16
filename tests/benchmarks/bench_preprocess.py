"""Preprocess benchmark: MB/s of text to token shards per core and with all cores; index build time.

Run: .venv/bin/python tests/benchmarks/bench_preprocess.py [--mb 20]
Tokenize tasks run as separate processes with one SentencePiece thread each (SLURM_CPUS_PER_TASK=1),
as they would in a Slurm array; the index is built on synthetic token data of 100M tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for tests.data_prep

from core.stage import TaskContext  # noqa: E402
from data_prep import preprocess, tokenizer  # noqa: E402
from data_prep.indexed_dataset import write_index  # noqa: E402
from data_prep.sample_index import BlendedSampleIndex  # noqa: E402
from tests.data_prep.test_tokenizer_corpus import make_config, make_documents, run_stage, write_clean  # noqa: E402


def run_task(run: str, rank: int, world: int) -> None:
    os.environ["SLURM_CPUS_PER_TASK"] = "1"
    cfg = make_config(Path(run), **{"preprocess.num_tasks": world})
    preprocess.tokenize_step(TaskContext(cfg=cfg, stage="preprocess", step="tokenize", rank=rank, world_size=world,
                                         out_dir=Path(run) / ".preprocess.staging",
                                         work_dir=Path(run) / ".preprocess.work"))


def tokenize_rate(run: Path, world: int, text_mb: float) -> float:
    cfg = make_config(run, **{"preprocess.num_tasks": world})
    run_stage(preprocess.STAGE, cfg, steps=("count",))
    t = time.perf_counter()
    with ProcessPoolExecutor(world) as pool:
        list(pool.map(run_task, [str(run)] * world, range(world), [world] * world))
    return text_mb / (time.perf_counter() - t)


def index_time(tmp: Path, tokens: int, seq_len: int) -> tuple[float, int]:
    rng = np.random.default_rng(0)
    datasets = {}
    (tmp / "train").mkdir()
    for k, share in enumerate((0.4, 0.3, 0.2, 0.1)):
        sizes = rng.integers(100, 1900, int(share * tokens / 1000)).astype(np.int32)
        np.zeros(int(sizes.sum()), np.uint16).tofile(tmp / "train" / f"d{k}.bin")
        write_index(tmp / "train" / f"d{k}.idx", sizes, np.uint16)
        datasets[f"d{k}"] = {"lang": f"d{k}", "weight": share, "train": {"path": f"train/d{k}", "tokens": int(sizes.sum())}}
    (tmp / "blend.json").write_text(json.dumps({"vocab_size": 8000, "datasets": datasets}))
    t = time.perf_counter()
    index = BlendedSampleIndex(tmp, seq_len, seed=1, cache=False)
    return time.perf_counter() - t, len(index)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=20, help="MB of generated text to tokenize")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        docs = make_documents(int(args.mb * 1e6 / 230), seed=7)
        write_clean(run, docs, num_shards=8)
        text_mb = sum(len(d["text"].encode()) for d in docs) / 1e6
        run_stage(tokenizer.STAGE, make_config(run, **{"tokenizer.sample_bytes": 2_000_000}))
        print(f"tokenize {text_mb:.1f} MB of generated text (vocab 8000), {cores} cores")
        print(f"{'tasks':>6} {'MB/s':>8} {'MB/s per core':>14}")
        for world in sorted({1, cores}):
            rate = tokenize_rate(run, world, text_mb)
            print(f"{world:>6} {rate:>8.2f} {rate / world:>14.2f}")
    print(f"{'tokens':>12} {'seq_len':>8} {'samples':>9} {'build s':>8}")
    for seq_len in (2048, 512):
        with tempfile.TemporaryDirectory() as tmp:
            secs, n = index_time(Path(tmp), 100_000_000, seq_len)
            print(f"{100_000_000:>12,} {seq_len:>8} {n:>9,} {secs:>8.2f}")


if __name__ == "__main__":
    main()
