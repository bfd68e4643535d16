"""Stage `clean`: raw documents -> normalised, language-identified, filtered, redacted, deduplicated shards.

Steps (each task writes only its own files, each under a temporary name renamed when complete):
  filter   N tasks  read a size-balanced share of the inputs (big uncompressed jsonl files in byte ranges);
                    normalise, identify the language, filter, redact PII; kept documents, their keys, exact
                    hashes, MinHash signatures and LSH band hashes go to work_dir/filter/<rank>/;
                    exclusions and rejects are written beside.
  dedup    N tasks  task r owns the hashes with hash % N == r: exact groups and verified LSH pairs -> edges.
  clusters 1 task   join the edges; keep the smallest key (first in input order) of each cluster.
  write    N tasks  drop the removed documents from filter task r's output: clean/part-<rank>.jsonl.zst.
  stats    1 task   merge per-task counts into clean/stats.json, clean/summary.txt and clean/rejects.jsonl;
                    fails (nothing published) when no document is kept, with the drop reasons.

An input that cannot be read to its end (truncated .gz/.zst, corrupt parquet) fails its filter task,
naming the file, unless clean.on_corrupt_file=skip; `clean.languages` is checked against the
language-id model's labels when a filter task starts and by the stage's `check`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep import clean_stats as report
from data_prep.dedup import (
    EXACT,
    SignatureIndex,
    TaskSignatures,
    exact_edges,
    lsh_candidates,
    resolve_clusters,
    verify,
)
from data_prep.filters import (
    CodeFilter,
    QualityFilter,
    check_overrides,
    code_params,
    params_for,
    remove_boilerplate,
)
from data_prep.jsonl import JsonlWriter, read_jsonl, write_json, write_npy
from data_prep.langid import LanguageIdentifier, check_languages
from data_prep.minhash import MinHasher, band_hashes, is_cjk
from data_prep.normalize import Normalizer
from data_prep.pii import PiiRedactor
from data_prep.readers import (
    BROKEN_FILE_REASONS,
    Document,
    Fields,
    InputFile,
    Reject,
    assign_files,
    list_inputs,
    read_slice,
    split_inputs,
)
from pipeline.config import CleanConfig, RunConfig
from pipeline.errors import DataError
from pipeline.stage import Stage, Step, TaskContext, one_task

REASON_NAMES = {EXACT: "exact_duplicate", 1: "near_duplicate"}
MINHASH_SEED = 1  # fixed: signatures are comparable across runs and configs
BATCH_DOCS = 512  # documents cleaned phase by phase (DocumentCleaner.batch); input order is kept


def num_tasks(cfg: RunConfig) -> int:
    return cfg.clean.num_tasks


def input_files(cfg: RunConfig) -> list[Path]:
    return [f.path for f in list_inputs(cfg.clean.inputs, cfg.clean.code_extensions)]


def check(cfg: RunConfig, world_size: int = 1, gpus: bool = False) -> None:
    """The clean config's checks that need the code of this stage (the language-id model): ConfigError."""
    check_overrides(cfg.clean.filters)
    check_languages(cfg.clean.languages)


def _task_dir(ctx: TaskContext, step: str, rank: int) -> Path:
    return ctx.work_dir / step / f"{rank:05d}"


# ------------------------------------------------------------------------------------ documents
class DocumentCleaner:
    """One document in, (output record or None, language, drop reason) out; counts go to `stats`."""

    def __init__(self, cfg: CleanConfig, stats: dict):
        check_overrides(cfg.filters)
        check_languages(cfg.languages)
        self.cfg, self.stats = cfg, stats
        self.normalize = Normalizer(cfg.normalize)
        self.langid = LanguageIdentifier(cfg.langid_chars)
        self.pii = PiiRedactor()
        self.code_filter = CodeFilter(code_params(cfg.filters))
        self.quality: dict[str, QualityFilter] = {}
        self.keep = set(cfg.languages)

    def _quality(self, lang: str) -> QualityFilter:
        if lang not in self.quality:
            params = params_for(lang, self.cfg.filters, self.cfg.min_lang_score)
            self.quality[lang] = QualityFilter(lang, params)
        return self.quality[lang]

    def __call__(self, doc: Document) -> tuple[dict, str, str]:
        return self.batch([doc])[0]

    def batch(self, docs: list[Document]) -> list[tuple[dict, str, str]]:
        """Each phase runs over the whole batch before the next one starts: the language-id model and
        the filters stay in the CPU caches (measured ~25% faster than one document at a time)."""
        texts = [self.normalize(d.text, code=bool(d.code_lang)) for d in docs]
        langs, scores, reasons = ["und"] * len(docs), [0.0] * len(docs), [""] * len(docs)
        prose = []
        for i, (doc, text) in enumerate(zip(docs, texts)):
            if not text.strip():
                reasons[i] = "empty_text"
            elif doc.code_lang:
                langs[i], reasons[i] = "code", self.code_filter(text)[1]
            else:
                prose.append(i)
                if self.cfg.boilerplate:
                    texts[i], removed = remove_boilerplate(text)
                    self.stats["boilerplate_lines"] += removed
        for i in prose:
            langs[i], scores[i] = self.langid(texts[i])
        for i in prose:
            langs[i], reasons[i] = self._judge(texts[i], langs[i], scores[i])
        if self.cfg.pii:
            texts = [self.pii(t) for t in texts]
        return [(self._record(d, t, lang, score), lang, reason)
                for d, t, lang, score, reason in zip(docs, texts, langs, scores, reasons)]

    def _judge(self, text: str, lang: str, score: float) -> tuple[str, str]:
        """(language as recorded, drop reason or "") of a prose document."""
        if self.keep and lang not in self.keep:
            if not self.cfg.keep_other:
                return lang, "language_not_kept"
            lang = "other"
        return lang, self._quality(lang)(text, score)[1]

    @staticmethod
    def _record(doc: Document, text: str, lang: str, score: float) -> dict:
        record = {"id": doc.id, "text": text, "lang": lang, "lang_score": score, "source": doc.source}
        if doc.code_lang:
            record["code_lang"] = doc.code_lang
        record.update((k, v) for k, v in doc.meta.items() if k not in record)
        return record


def exact_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


# ----------------------------------------------------------------------------------------- filter
def run_filter(ctx: TaskContext) -> None:
    cfg = ctx.cfg.clean
    slices = assign_files(split_inputs(list_inputs(cfg.inputs, cfg.code_extensions), ctx.world_size),
                          ctx.world_size)[ctx.rank]
    out = _task_dir(ctx, "filter", ctx.rank)
    stats = report.new_stats()
    cleaner = DocumentCleaner(cfg, stats)
    hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.shingle_size, seed=MINHASH_SEED)
    keys, hashes, sigs = [], [], []
    paths = {s.file.source: s.file.path for s in slices}
    with JsonlWriter(out / "docs.jsonl.zst") as kept, \
            JsonlWriter(ctx.out_dir / "excluded" / f"filtered-{ctx.rank:05d}.jsonl.zst") as excluded, \
            JsonlWriter(out / "rejects.jsonl") as rejects:

        def flush(batch: list[Document]) -> None:
            for doc, (record, lang, reason) in zip(batch, cleaner.batch(batch)):
                report.count_doc(stats, lang, doc.text, record["text"], reason)
                if reason:
                    excluded.write({**record, "reason": reason})
                    continue
                kept.write(record)
                keys.append(doc.key)
                hashes.append(exact_hash(record["text"]))
                if cfg.dedup.near:
                    sigs.append(hasher.signature(record["text"], cjk=lang in ("zh", "ja") or is_cjk(record["text"])))
            batch.clear()

        pending: list[Document] = []
        bar = tqdm(slices, desc=f"clean/filter {ctx.rank}", unit="file", disable=None)
        for piece in bar:
            stats["files"] += piece.start == 0  # a file split into byte ranges counts once
            for item in read_slice(piece, Fields(cfg.text_field, cfg.id_field, cfg.code_field)):
                if isinstance(item, Reject):
                    if item.reason in BROKEN_FILE_REASONS:
                        _broken_file(ctx, paths[item.source], item)
                    report.count_reject(stats, item)
                    rejects.write({"file": item.source, "line": item.line, "reason": item.reason, "detail": item.detail})
                    continue
                pending.append(item)
                if len(pending) == BATCH_DOCS:
                    flush(pending)
            bar.set_postfix(kept=kept.count, excluded=excluded.count, rejected=rejects.count)
        flush(pending)
    _save_signatures(out, cfg, keys, hashes, sigs)
    stats["normalize"].update(cleaner.normalize.counts)
    stats["pii"].update(cleaner.pii.counts)
    write_json(out / "stats.json", stats)
    ctx.log.info("clean/filter %d: %d files or ranges, kept %d, excluded %d, rejected %d", ctx.rank, len(slices),
                 kept.count, excluded.count, rejects.count)


def _broken_file(ctx: TaskContext, path: Path, reject: Reject) -> None:
    """A file read only in part: fail the task (clean.on_corrupt_file=error) or say what is lost (skip)."""
    if ctx.cfg.clean.on_corrupt_file == "error":
        raise DataError(f"clean input {path} is {reject.detail}; replace it, remove it from clean.inputs, or set "
                        "clean.on_corrupt_file=skip to keep the records read before the error and go on")
    ctx.log.warning("clean/filter %d: %s is %s; its records read before the error are kept "
                    "(clean.on_corrupt_file=skip)", ctx.rank, path, reject.detail)


def _save_signatures(out: Path, cfg: CleanConfig, keys: list, hashes: list, sigs: list) -> None:
    num_perm = cfg.dedup.num_perm if cfg.dedup.near else 0
    sig_array = np.stack(sigs) if sigs else np.zeros((len(keys) if num_perm == 0 else 0, num_perm), np.uint32)
    bands = band_hashes(sig_array, cfg.dedup.bands, cfg.dedup.rows) if cfg.dedup.near else \
        np.zeros((len(keys), 0), np.uint64)
    write_npy(out / "sigs.npy", sig_array)
    write_npy(out / "bands.npy", bands)
    write_npy(out / "exact.npy", np.array(hashes, dtype=np.uint64))
    write_npy(out / "keys.npy", np.array(keys, dtype=np.uint64))  # written last: marks the set complete


def load_signatures(ctx: TaskContext) -> list[TaskSignatures]:
    tasks = []
    for rank in range(ctx.cfg.clean.num_tasks):
        d = _task_dir(ctx, "filter", rank)
        tasks.append(TaskSignatures(keys=np.load(d / "keys.npy"), exact=np.load(d / "exact.npy"),
                                    bands=np.load(d / "bands.npy", mmap_mode="r"),
                                    sigs=np.load(d / "sigs.npy", mmap_mode="r")))
    return tasks


# ------------------------------------------------------------------------------------------ dedup
def run_dedup(ctx: TaskContext) -> None:
    cfg = ctx.cfg.clean.dedup
    tasks = load_signatures(ctx)
    keys = np.concatenate([t.keys for t in tasks])
    edges = [np.zeros((0, 3), dtype=np.uint64)]
    if cfg.exact:
        exact = exact_edges(keys, np.concatenate([t.exact for t in tasks]), ctx.rank, ctx.world_size)
        edges.append(np.column_stack([exact, np.full(len(exact), EXACT, np.uint64)]))
    if cfg.near and len(keys):
        candidates = lsh_candidates(keys, np.concatenate([np.asarray(t.bands) for t in tasks]), ctx.rank, ctx.world_size)
        near = verify(candidates, SignatureIndex(tasks), cfg.threshold)
        edges.append(np.column_stack([near, np.ones(len(near), np.uint64)]))
        ctx.log.info("clean/dedup %d: %d LSH candidates, %d verified", ctx.rank, len(candidates), len(near))
    write_npy(_task_dir(ctx, "dedup", ctx.rank) / "edges.npy", np.concatenate(edges).astype(np.uint64))


def run_clusters(ctx: TaskContext) -> None:
    edges = np.concatenate([np.load(_task_dir(ctx, "dedup", r) / "edges.npy") for r in range(ctx.cfg.clean.num_tasks)])
    removed, kept = resolve_clusters(edges[:, :2])
    tasks = load_signatures(ctx)
    keys = np.concatenate([t.keys for t in tasks])
    exact = np.concatenate([t.exact for t in tasks])
    order = np.argsort(keys)
    lookup = lambda k: exact[order[np.searchsorted(keys[order], k)]]  # noqa: E731
    reason = np.where(lookup(removed) == lookup(kept), EXACT, 1).astype(np.uint64) if len(removed) else removed
    write_npy(ctx.work_dir / "clusters" / "removed.npy", np.column_stack([removed, kept, reason]).astype(np.uint64))
    ctx.log.info("clean/clusters: %d documents removed as duplicates", len(removed))


# ------------------------------------------------------------------------------------------ write
def run_write(ctx: TaskContext) -> None:
    cfg = ctx.cfg.clean
    src = _task_dir(ctx, "filter", ctx.rank)
    stats = json.loads((src / "stats.json").read_text())
    removed = np.load(ctx.work_dir / "clusters" / "removed.npy")
    keys = np.load(src / "keys.npy")
    pos = np.searchsorted(removed[:, 0], keys)
    hit = (pos < len(removed)) & (removed[np.minimum(pos, len(removed) - 1), 0] == keys) if len(removed) else \
        np.zeros(len(keys), bool)
    sources = {f.index: f.source for f in list_inputs(cfg.inputs, cfg.code_extensions)}
    with JsonlWriter(ctx.out_dir / f"part-{ctx.rank:05d}.jsonl.{cfg.compression}") as out, \
            JsonlWriter(ctx.out_dir / "excluded" / f"duplicates-{ctx.rank:05d}.jsonl.zst") as dups:
        for row, record in enumerate(tqdm(read_jsonl(src / "docs.jsonl.zst"), total=len(keys),
                                          desc=f"clean/write {ctx.rank}", unit="doc", disable=None)):
            if not hit[row]:
                out.write(record)
                continue
            _, kept_key, code = removed[pos[row]]
            reason = REASON_NAMES[int(code)]
            dups.write({**record, "reason": reason,
                        "duplicate_of": f"{sources[int(kept_key) >> 32]}:{int(kept_key) & 0xFFFFFFFF}"})
            report.count_duplicate(stats, record["lang"], record["text"], reason)
    write_json(ctx.work_dir / "stats" / f"{ctx.rank:05d}.json", stats)
    ctx.log.info("clean/write %d: %d documents written, %d duplicates removed", ctx.rank, out.count, dups.count)


def run_stats(ctx: TaskContext) -> None:
    n = ctx.cfg.clean.num_tasks
    parts = [json.loads((ctx.work_dir / "stats" / f"{r:05d}.json").read_text()) for r in range(n)]
    stats = report.finalize(report.merge(parts), n)
    rejects = [r for rank in range(n) for r in read_jsonl(_task_dir(ctx, "filter", rank) / "rejects.jsonl")]
    with JsonlWriter(ctx.out_dir / "rejects.jsonl") as out:
        for record in sorted(rejects, key=lambda r: (r["file"], r["line"], r["reason"])):
            out.write(record)
    write_json(ctx.out_dir / "stats.json", stats)
    text = report.render(stats)
    (ctx.out_dir / "summary.txt").write_text(text + "\n", encoding="utf-8")
    ctx.log.info("clean summary\n%s", text)
    if stats["totals"]["docs_out"] == 0:  # the tokenizer would fail next, with a message about its sample
        raise DataError(report.nothing_kept(stats))


def run_locally(cfg: RunConfig, out_dir: Path, work_dir: Path) -> None:
    """Every step's tasks in order, in this process: for tests and the benchmark (no markers, no publication)."""
    for step in STAGE.steps:
        world = step.num_tasks(cfg)
        for rank in range(world):
            step.run(TaskContext(cfg, STAGE.name, step.name, rank, world, Path(out_dir), Path(work_dir)))


def summary(published_dir: Path) -> str:
    path = Path(published_dir) / "stats.json"
    if not path.is_file():
        return f"no stats.json in {published_dir}"
    return report.render(json.loads(path.read_text()))


STAGE = Stage(
    name="clean",
    needs=(),
    sections=("clean",),
    steps=(
        Step("filter", run_filter, num_tasks),
        Step("dedup", run_dedup, num_tasks),
        Step("clusters", run_clusters, one_task),
        Step("write", run_write, num_tasks),
        Step("stats", run_stats, one_task),
    ),
    description="normalise, identify languages, filter, redact PII and deduplicate the raw corpus",
    summary=summary,
    external_inputs=input_files,
    check=check,
)

__all__ = ["STAGE", "DocumentCleaner", "InputFile", "check", "run_locally", "summary"]
