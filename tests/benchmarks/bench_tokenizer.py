"""Tokenizer benchmark: SentencePiece training time and peak memory against sample size; encode tokens/s.

Run: .venv/bin/python tests/benchmarks/bench_tokenizer.py [--sizes 1,4,16] (MB of generated text).
Each training runs in a child process so its peak RSS (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for tests.data_prep

# Run with the repository root as the working directory (`python -c` puts it first on sys.path).
CHILD = """
import json, resource, time
from pathlib import Path
from tests.data_prep.test_tokenizer_corpus import make_config, make_documents, run_stage, write_clean
from data_prep import tokenizer
run = Path({run!r})
cfg = make_config(run, **{{"tokenizer.vocab_size": {vocab}, "tokenizer.sample_bytes": {nbytes},
                          "tokenizer.model_type": "{model}"}})
t0 = time.perf_counter()
run_stage(tokenizer.STAGE, cfg, steps=("sample",))
t1 = time.perf_counter()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_stage(tokenizer.STAGE, cfg, steps=("train",))
t2 = time.perf_counter()
print(json.dumps({{"sample_s": t1 - t0, "train_s": t2 - t1, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": base / 1024,
                  "sample_bytes": (run / ".tokenizer.staging/sample/sample.txt").stat().st_size}}))
"""


def corpus(run: Path, mb: float) -> None:
    from tests.data_prep.test_tokenizer_corpus import make_documents, write_clean

    docs = make_documents(int(mb * 1e6 / 230), seed=5)  # ~230 bytes a generated document
    write_clean(run, docs, num_shards=4)


def train_row(mb: float, vocab: int, model: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        corpus(Path(tmp), mb * 1.3)
        code = CHILD.format(run=tmp, vocab=vocab, nbytes=int(mb * 1e6), model=model)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        return json.loads(out.stdout.strip().splitlines()[-1])


def encode_rate(mb: float) -> tuple[float, float]:
    """(tokens/s, MB/s) of single-thread SentencePiece encode on generated documents."""
    from data_prep import tokenizer
    from tests.data_prep.test_tokenizer_corpus import make_config, make_documents, run_stage, write_clean

    with tempfile.TemporaryDirectory() as tmp:
        docs = make_documents(int(mb * 1e6 / 230), seed=6)
        write_clean(Path(tmp), docs)
        out = run_stage(tokenizer.STAGE, make_config(tmp, **{"tokenizer.vocab_size": 4000,
                                                             "tokenizer.sample_bytes": 1_000_000}))
        sp = tokenizer.load_tokenizer(out)
        texts = [d["text"] for d in docs]
        t = time.perf_counter()
        n = sum(len(x) for x in sp.encode(texts, num_threads=1))
        dt = time.perf_counter() - t
        return n / dt, sum(len(x.encode()) for x in texts) / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1,4,16", help="sample sizes in MB")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--model", default="bpe", choices=["bpe", "unigram"])
    args = ap.parse_args()
    print(f"SentencePiece {args.model}, vocab {args.vocab}, generated multilingual corpus")
    print(f"{'sample MB':>10} {'sample s':>9} {'train s':>8} {'peak MB':>8} {'MB/sample MB':>13}")
    for mb in map(float, args.sizes.split(",")):
        r = train_row(mb, args.vocab, args.model)
        print(f"{r['sample_bytes'] / 1e6:>10.2f} {r['sample_s']:>9.2f} {r['train_s']:>8.2f} {r['peak_mb']:>8.0f} "
              f"{(r['peak_mb'] - r['before_mb']) / (r['sample_bytes'] / 1e6):>13.1f}")
    tps, mbps = encode_rate(4)
    print(f"encode (1 thread): {tps:,.0f} tokens/s per core, {mbps:.2f} MB/s per core")
    print(f"(resource check: this process peaked at {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
