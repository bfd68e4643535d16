"""Throughput of the clean stage on a generated corpus, one process (= one core) per step.

    python tests/benchmarks/bench_clean.py [--mb 200] [--sample-mb 40] [--repeat 3] [--workdir DIR]

Prints docs/s and MB/s (of raw input) per core for each step of the stage run as one task, for the
whole stage, and for the per-document work inside the filter step: normalisation + language id +
filters + exact hash (the issue's "normalisation + language id + filters + exact dedup"; the
cross-task grouping of exact hashes is the dedup step's), the same with PII redaction, MinHash
signatures, and each part alone. The per-document figures run on an evenly spread sample of the corpus, `--repeat`
times, and keep the best. Two columns: wall-clock and CPU time of this process; on a shared machine
the CPU column is the per-core figure (the load average is printed). Not a test: figures for the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from core.stage import TaskContext
from data_prep.clean import BATCH_DOCS, STAGE, CleanConfig, DocumentCleaner, exact_hash
from data_prep.clean_stats import new_stats
from data_prep.filters import remove_boilerplate
from data_prep.minhash import MinHasher, is_cjk
from data_prep.readers import Document, Fields, list_inputs, read_file
from data_prep.synthetic import KEPT_LANGUAGES, write_corpus
from pipeline.config import RunConfig


def generate(workdir: Path, mb: float) -> Path:
    corpus = workdir / "corpus"
    docs_per_language = max(int(mb * 1e6 / 10 / 1600), 20)  # ~1.6-1.7 kB of raw text per planted document
    marker = corpus / f".done-{docs_per_language}"
    if not marker.exists():
        shutil.rmtree(corpus, ignore_errors=True)
        start = time.perf_counter()
        write_corpus(corpus, seed=0, docs_per_language=docs_per_language)
        print(f"generated {docs_per_language} docs/language in {time.perf_counter() - start:.0f} s")
        marker.touch()
    return corpus


class Clock:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def sample_documents(files, sample_mb: float) -> list[Document]:
    """Every k-th document of the corpus, k chosen to keep about `sample_mb` of input files."""
    total = sum(f.size for f in files) / 1e6
    step = max(int(total / sample_mb), 1)
    docs = (d for f in files for d in read_file(f, Fields()) if isinstance(d, Document))
    return [d for i, d in enumerate(docs) if i % step == 0]


def best_of(repeat: int, fn) -> tuple[float, float]:
    clocks = []
    for _ in range(repeat):
        with Clock() as c:
            fn()
        clocks.append(c)
    return min(c.wall for c in clocks), min(c.cpu for c in clocks)


def per_document(cfg: CleanConfig, docs: list[Document], repeat: int) -> list[tuple]:
    """Rows for the filter step's per-document work, whole and by part, on `docs`."""
    raw_mb = sum(len(d.text.encode()) for d in docs) / 1e6
    cleaner, hasher = DocumentCleaner(cfg, new_stats()), MinHasher(cfg.dedup.num_perm, cfg.dedup.shingle_size)
    results = [r for start in range(0, len(docs), BATCH_DOCS) for r in cleaner.batch(docs[start:start + BATCH_DOCS])]
    kept = [(r["text"], lang) for r, lang, reason in results if not reason]

    def clean_all(cleaner: DocumentCleaner):  # as the filter step does it: batches of BATCH_DOCS, phase by phase
        for start in range(0, len(docs), BATCH_DOCS):
            for record, _, _ in cleaner.batch(docs[start:start + BATCH_DOCS]):
                exact_hash(record["text"])

    def signatures():
        for text, lang in kept:
            hasher.signature(text, cjk=lang in ("zh", "ja") or is_cjk(text))

    # Inputs of each part as the cleaner sees them, for timing the parts alone.
    text_docs = [d for d in docs if not d.code_lang]
    normalised = [cleaner.normalize(d.text) for d in text_docs]
    stripped = [remove_boilerplate(t)[0] for t in normalised]
    langs = [cleaner.langid(t) for t in stripped]
    judged = [(cleaner._quality(lang), t, s) for t, (lang, s) in zip(stripped, langs) if lang in cleaner.keep]
    outputs = [r["text"] for r, _, _ in results]
    kept_mb = sum(len(t.encode()) for t, _ in kept) / 1e6
    parts = [
        ("  normalise", len(text_docs), lambda: [cleaner.normalize(d.text) for d in text_docs]),
        ("  boilerplate lines", len(normalised), lambda: [remove_boilerplate(t) for t in normalised]),
        ("  language id", len(stripped), lambda: [cleaner.langid(t) for t in stripped]),
        ("  quality filters", len(judged), lambda: [f(t, s) for f, t, s in judged]),
        ("  PII redaction", len(outputs), lambda: [cleaner.pii(t) for t in outputs]),
        ("  exact hash", len(outputs), lambda: [exact_hash(t) for t in outputs]),
    ]
    no_pii = DocumentCleaner(dataclasses.replace(cfg, pii=False), new_stats())
    rows = [("normalise+langid+filters+exact hash", len(docs), raw_mb, *best_of(repeat, lambda: clean_all(no_pii))),
            ("normalise+langid+filters+PII+exact hash", len(docs), raw_mb, *best_of(repeat, lambda: clean_all(cleaner)))]
    rows += [(name, n, raw_mb, *best_of(repeat, fn)) for name, n, fn in parts]
    rows.append(("MinHash signatures (of kept text)", len(kept), kept_mb, *best_of(repeat, signatures)))
    return rows


def run_stage(cfg: RunConfig, workdir: Path) -> list[tuple]:
    out, work = workdir / "run" / "clean", workdir / "run" / "work"
    shutil.rmtree(workdir / "run", ignore_errors=True)
    clocks = []
    for step in STAGE.steps:
        with Clock() as c:
            step.run(TaskContext(cfg, "clean", step.name, 0, 1, out, work))
        clocks.append((f"step {step.name}", c))
    totals = json.loads((out / "stats.json").read_text())["totals"]
    n_docs, raw_mb = totals["docs_in"], totals["bytes_in"] / 1e6
    rows = [(name, n_docs, raw_mb, c.wall, c.cpu) for name, c in clocks]
    rows.append(("whole stage", n_docs, raw_mb, sum(r[3] for r in rows), sum(r[4] for r in rows)))
    return rows


def print_table(rows: list[tuple]) -> None:
    print(f"{'what':<44}{'docs':>10}{'MB':>9}{'wall s':>9}{'CPU s':>9}{'docs/s':>9}"
          f"{'MB/s wall':>11}{'MB/s CPU':>10}")
    for name, docs, mb, wall, cpu in rows:
        print(f"{name:<44}{docs:>10,}{mb:>9.1f}{wall:>9.1f}{cpu:>9.1f}{docs / cpu:>9,.0f}"
              f"{mb / wall:>11.2f}{mb / cpu:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200, help="approximate raw corpus size")
    parser.add_argument("--sample-mb", type=float, default=40, help="MB of input files sampled for the per-document rows")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each per-document row; the best is kept")
    parser.add_argument("--skip-stage", action="store_true", help="only the per-document rows")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/graine-bench-clean"))
    args = parser.parse_args()
    corpus = generate(args.workdir, args.mb)
    cfg = RunConfig(run_dir=str(args.workdir / "run"))
    cfg.clean = CleanConfig(inputs=[str(corpus / "raw" / "**" / "*")], num_tasks=1, languages=list(KEPT_LANGUAGES))
    files = list_inputs(cfg.clean.inputs, cfg.clean.code_extensions)
    load = os.getloadavg()[0]
    stage = [] if args.skip_stage else run_stage(cfg, args.workdir)
    docs = sample_documents(files, args.sample_mb)
    rows = per_document(cfg.clean, docs, args.repeat)
    print(f"\ncorpus: {len(files):,} files, {sum(f.size for f in files) / 1e6:.1f} MB on disk (some compressed); "
          f"1 task = 1 core; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores")
    if stage:
        print("\nthe stage, one task (MB of raw UTF-8 text read)")
        print_table(stage)
    print(f"\nper document, {len(docs):,} documents spread over the corpus, best of {args.repeat} "
          "(parts: each alone over the sample; MB/s of the raw text of the whole sample)")
    print_table(rows)


if __name__ == "__main__":
    main()
