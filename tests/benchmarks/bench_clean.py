"""Throughput of the clean stage on a generated corpus, one process (= one core) per step.

    python tests/benchmarks/bench_clean.py [--mb 200] [--workdir /tmp/graine-bench-clean]

Prints docs/s and MB/s (of raw input) per core for each step, for the per-document work inside the
filter step (normalisation + language id + filters + exact hash; MinHash signatures), and for the
whole stage. Not a test: figures for the README.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from data_prep.clean import STAGE, DocumentCleaner, exact_hash
from data_prep.clean_stats import new_stats
from data_prep.minhash import MinHasher
from data_prep.readers import Document, Fields, list_inputs, read_file
from data_prep.synthetic import KEPT_LANGUAGES, write_corpus
from pipeline.config import CleanConfig, RunConfig
from pipeline.stage import TaskContext


def generate(workdir: Path, mb: float) -> Path:
    corpus = workdir / "corpus"
    docs_per_language = max(int(mb * 1e6 / 10 / 1750), 20)  # ~1.75 kB of raw input per planted document
    marker = corpus / f".done-{docs_per_language}"
    if not marker.exists():
        shutil.rmtree(corpus, ignore_errors=True)
        start = time.perf_counter()
        write_corpus(corpus, seed=0, docs_per_language=docs_per_language)
        print(f"generated {docs_per_language} docs/language in {time.perf_counter() - start:.0f} s")
        marker.touch()
    return corpus


def per_document(cfg: CleanConfig, files) -> list[tuple[str, float, float, float]]:
    docs = [d for f in files for d in read_file(f, Fields()) if isinstance(d, Document)]
    raw_mb = sum(len(d.text.encode()) for d in docs) / 1e6
    cleaner, hasher = DocumentCleaner(cfg, new_stats()), MinHasher(cfg.dedup.num_perm, cfg.dedup.shingle_size)
    start = time.perf_counter()
    texts = []
    for d in docs:
        record, _, reason = cleaner(d)
        exact_hash(record["text"])
        texts.append(record["text"])
    filters_s = time.perf_counter() - start
    start = time.perf_counter()
    for t in texts:
        hasher.signature(t)
    minhash_s = time.perf_counter() - start
    return [("normalise+langid+filters+PII+exact hash", len(docs), raw_mb, filters_s),
            ("MinHash signatures", len(docs), raw_mb, minhash_s)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200, help="approximate raw corpus size")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/graine-bench-clean"))
    args = parser.parse_args()
    corpus = generate(args.workdir, args.mb)
    cfg = RunConfig(run_dir=str(args.workdir / "run"))
    cfg.clean = CleanConfig(inputs=[str(corpus / "raw" / "**" / "*")], num_tasks=1, languages=list(KEPT_LANGUAGES))
    files = list_inputs(cfg.clean.inputs, cfg.clean.code_extensions)
    raw_mb = sum(f.size for f in files) / 1e6
    rows = []
    out, work = args.workdir / "run" / "clean", args.workdir / "run" / "work"
    shutil.rmtree(args.workdir / "run", ignore_errors=True)
    n_docs = None
    for step in STAGE.steps:
        start = time.perf_counter()
        step.run(TaskContext(cfg, "clean", step.name, 0, 1, out, work))
        rows.append((f"step {step.name}", n_docs, raw_mb, time.perf_counter() - start))
    stats = json.loads((out / "stats.json").read_text())
    n_docs, raw_mb = stats["totals"]["docs_in"], stats["totals"]["bytes_in"] / 1e6
    rows = [(name, n_docs, raw_mb, s) for name, _, _, s in rows]
    rows.append(("whole stage", n_docs, raw_mb, sum(r[3] for r in rows)))
    sample = files[: max(len(files) // 4, 1)]
    rows += per_document(cfg.clean, sample)
    print(f"\ncorpus: {raw_mb:.1f} MB of raw UTF-8 text, {n_docs:,} documents; 1 task = 1 core")
    print(f"{'what':<44}{'docs':>10}{'seconds':>10}{'docs/s':>10}{'MB/s/core':>11}")
    for name, docs, mb, seconds in rows:
        print(f"{name:<44}{docs:>10,}{seconds:>10.1f}{docs / seconds:>10,.0f}{mb / seconds:>11.2f}")


if __name__ == "__main__":
    main()
