"""Stage `clean`: raw documents -> normalised, language-identified, filtered, redacted, deduplicated shards.

Every document has a global key (input file index << 32 | line: sorted input path, then position). The
published documents are in **key order**, cut into part files by cumulative size, so that `clean/` is
byte-identical whatever `clean.num_tasks` and whichever task processed what (the canonical order).

Steps (each task writes only its own files, each under a temporary name renamed when complete):
  filter   N tasks  task r reads the r-th contiguous, size-balanced run of the inputs in key order (big
                    uncompressed jsonl files cut into byte ranges); batches of documents go through the
                    document steps (data_prep/clean_steps.py): normalise, drop empty text, judge code,
                    remove boilerplate, identify the language (a declared one: measure agreement and
                    apply clean.declared_language_policy), keep clean.languages, the quality checks of
                    clean.quality_checks in their order (data_prep/quality/), redact PII; kept documents (in
                    key order), their keys, text sizes, exact hashes, MinHash signatures and LSH band hashes
                    go to work_dir/filter/<rank>/, excluded ones, rejects and the steps' counts beside.
                    Concatenated in rank order, the tasks' outputs are the corpus in key order.
  dedup    N tasks  task r owns the hashes with hash % N == r: exact groups and verified LSH pairs -> edges.
  clusters 1 task   join the edges; keep the smallest key (first in input order) of each cluster; cut the
                    kept documents, the duplicates and the excluded documents, each in key order, into
                    files by cumulative text size (`PART_BYTES`): the layout, which depends only on the data.
  write    N tasks  task r writes the r-th contiguous run of the layout's files: clean/part-<k>.jsonl.zst,
                    excluded/duplicates-<k>.jsonl.zst and excluded/filtered-<k>.jsonl.zst.
  stats    1 task   merge per-task counts into clean/stats.json, clean/summary.txt and clean/rejects.jsonl,
                    log them with the document steps' counts; fails (nothing published) when no document
                    is kept, with the drop reasons.

Per-run facts (task counts, jobs, hosts, times) are in the completion record, never in the outputs.
An input that cannot be read to its end (truncated .gz/.zst, corrupt parquet) fails its filter task,
naming the file, unless clean.on_corrupt_file=skip; `clean.languages` is checked against the
language-id model's labels when a filter task starts and by the stage's `check`.

The corpus is `clean.inputs` (one source with no declared language) and/or the catalogue `clean.sources`
(data_prep/catalogue.py): named sources, each maybe with a declared language, which wins over language id.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import zstandard

from core.config import RunConfigBase as RunConfig
from core.config import param
from core.errors import DataError
from core.fs import write_atomic, write_json
from core.stage import Stage, Step, TaskContext, one_task
from data_prep import clean_stats as report
from data_prep.catalogue import (
    SOURCE_FIELD,
    Policy,
    SourceConfig,
    check_sources,
    merged_filters,
    source_groups,
)
from data_prep.clean_steps import (
    CheckCode,
    DeclaredLanguagePolicy,
    DocumentStep,
    Draft,
    DropEmpty,
    IdentifyLanguage,
    Normalize,
    RedactPii,
    RemoveBoilerplate,
    RunQualityCheck,
    SelectLanguages,
)
from data_prep.code_languages import CODE_LANGUAGES, DEFAULT_CODE_EXTENSIONS, CodeLanguageFilter
from data_prep.dedup import (
    EXACT,
    DedupConfig,
    SignatureIndex,
    TaskSignatures,
    exact_edges,
    lsh_candidates,
    resolve_clusters,
    verify,
)
from data_prep.jsonl import JsonlWriter, LineWriter, dumps, read_jsonl, write_npy
from data_prep.langid import LanguageIdentifier, check_languages
from data_prep.languages import expand_languages
from data_prep.minhash import MinHasher, band_hashes, is_cjk
from data_prep.normalize import NormalizeConfig, Normalizer
from data_prep.pii import PiiRedactor
from data_prep.quality import (
    CHECKS,
    DEFAULT_CHECKS,
    Params,
    QualityFilter,
    check_overrides,
    check_quality_checks,
    params_for,
)
from data_prep.readers import (
    BROKEN_FILE_REASONS,
    Document,
    Fields,
    InputFile,
    InputSlice,
    Reject,
    list_catalogue,
    read_slice,
    split_inputs,
)


@dataclass(kw_only=True)
class CleanConfig:
    inputs: list[str] = param(default_factory=list, help="paths or globs of raw documents (jsonl, jsonl.gz, jsonl.zst, "
                              "parquet, txt): the shorthand for one source named 'inputs' with no declared language")
    sources: list[SourceConfig] = param(default_factory=list, help="the corpus as a catalogue of named sources, each "
                                        "{name, paths, lang, weight or multiplier, filters, declared_language_policy} "
                                        "(data_prep/catalogue.py)")
    declared_language_policy: Policy = param("keep", help="a declared-language document that language id gives to "
                                             "another language with probability >= clean.disagreement_threshold: "
                                             "keep it, flag it (kept, marked and counted) or drop it")
    disagreement_threshold: float = param(0.9, gt=0.0, le=1.0, help="probability of another label at which a "
                                          "declared language is a confident disagreement")
    text_field: str = param("text", help="field holding the document text")
    id_field: str = param("id", help="field holding the document id (generated from source and line when absent)")
    num_tasks: int = param(4, ge=1, le=100_000, shape=True, help="independent tasks (a Slurm array on a cluster)")
    languages: list[str] = param(default_factory=list, help="ISO 639-1 codes to keep (639-2/3 where none); 'bloom' "
                                 "stands for BLOOM's 46 languages (data_prep/languages.py); empty keeps every language")
    keep_other: bool = param(False, help="keep documents of unlisted languages under lang 'other' instead of excluding them")
    min_lang_score: float = param(0.5, ge=0.0, le=1.0, help="default minimum language-id probability")
    langid_chars: int = param(500, ge=50, help="characters of each document given to language id (its cost is linear)")
    boilerplate: bool = param(True, help="remove boilerplate lines (cookie banners, copyright footers, navigation)")
    code_extensions: list[str] = param(default_factory=lambda: list(DEFAULT_CODE_EXTENSIONS), help="file extensions "
                                       "routed to the code path (default: BLOOM's 13 programming languages and .sh); "
                                       "files without an extension go there when their content is code")
    code_field: str = param("", help="record field whose value, when present, names the programming language")
    normalize: NormalizeConfig = param(default_factory=NormalizeConfig)
    quality_checks: list[str] = param(default_factory=lambda: list(DEFAULT_CHECKS), help="the quality checks "
                                      "run on prose documents, in this order (one module each in data_prep/quality/); "
                                      "the first that fails names the drop reason")
    filters: dict[str, dict[str, float]] = param(default_factory=dict, help="per-language overrides of the quality checks' parameters, e.g. {fr: {min_words: 20}}")
    pii: bool = param(True, help="redact emails, IP addresses, phone numbers and secrets")
    dedup: DedupConfig = param(default_factory=DedupConfig)
    compression: Literal["zst", "gz"] = param("zst", help="compression of the clean/ shards")
    on_corrupt_file: Literal["error", "skip"] = param("error", help="an input that cannot be read to its end (truncated "
                                                      ".gz/.zst, corrupt parquet): error = fail the stage naming it; skip = keep "
                                                      "the records read before the error, list the file in rejects.jsonl, go on")

    def __post_init__(self) -> None:
        self.languages = expand_languages(self.languages)  # `bloom` -> its codes, at load: the saved config lists them
        check_quality_checks(self.quality_checks)
        check_overrides(self.filters)
        check_sources(self.sources, self.inputs)


REASON_NAMES = {EXACT: "exact_duplicate", 1: "near_duplicate"}
MINHASH_SEED = 1  # fixed: signatures are comparable across runs and configs
BATCH_DOCS = 512  # documents cleaned step by step (DocumentCleaner.batch); input order is kept
# Published files are cut from the key-ordered documents every PART_BYTES of text (UTF-8): a document
# whose text starts at cumulative offset o goes to piece o // PART_BYTES (empty pieces are skipped).
# A constant, not a setting: the cut must not depend on anything but the data.
PART_BYTES = 256 << 20


def num_tasks(cfg: RunConfig) -> int:
    return cfg.clean.num_tasks


def input_files(cfg: RunConfig) -> list[Path]:
    return [f.path for f in corpus_files(cfg.clean)]


def corpus_files(cfg: CleanConfig) -> list[InputFile]:
    """The files of clean.inputs and clean.sources, sorted and numbered together, each naming its source."""
    if not cfg.inputs and not cfg.sources:
        raise DataError("clean.inputs and clean.sources are empty; set clean.inputs to the raw corpus, e.g. "
                        "clean.inputs='[data/raw/**/*]', or describe it as clean.sources")
    return list_catalogue(source_groups(cfg.sources, cfg.inputs), cfg.code_extensions)


def check(cfg: RunConfig, world_size: int = 1, gpus: bool = False) -> None:
    """The clean config's checks that need the code of this stage (the language-id model): ConfigError."""
    check_quality_checks(cfg.clean.quality_checks)  # again: a config may be edited after it is built
    check_overrides(cfg.clean.filters)
    check_sources(cfg.clean.sources, cfg.clean.inputs)
    check_languages(cfg.clean.languages)


def _task_dir(ctx: TaskContext, step: str, rank: int) -> Path:
    return ctx.work_dir / step / f"{rank:05d}"


# ------------------------------------------------------------------------------------ documents
class DocumentCleaner:
    """Batches of documents through the document steps built from the config: per document (output
    record, language, drop reason). Counts go to `stats`; each step's, per language, to `step_counts`.
    With a catalogue, records name their source; those of a declared language say how language id agrees."""

    def __init__(self, cfg: CleanConfig, stats: dict):
        check_quality_checks(cfg.quality_checks)
        check_overrides(cfg.filters)
        check_languages(cfg.languages)
        self.cfg, self.stats = cfg, stats
        self.normalize = Normalizer(cfg.normalize)
        self.langid = LanguageIdentifier(cfg.langid_chars)
        self.pii = PiiRedactor()
        self.keep = set(cfg.languages)
        self.sources = {s.name: s for s in cfg.sources}
        self.declared = {s.name: s.lang for s in cfg.sources if s.lang and s.lang not in CODE_LANGUAGES}  # prose
        self.params_by_lang: dict[tuple[str, str], Params] = {}
        self.code_filters: dict[str, CodeLanguageFilter] = {}
        self.steps = self._steps()
        self.step_counts: dict[str, dict] = {}

    def _steps(self) -> list[DocumentStep]:
        cfg = self.cfg
        steps = [Normalize(self.normalize), DropEmpty(), CheckCode(self.code_filter)]
        if cfg.boilerplate:
            steps.append(RemoveBoilerplate(self.stats))
        steps.append(IdentifyLanguage(self.langid))
        if self.declared:
            steps.append(DeclaredLanguagePolicy(self.policy, cfg.disagreement_threshold, self.stats))
        if self.keep:
            steps.append(SelectLanguages(self.keep, cfg.keep_other))
        steps += [RunQualityCheck(CHECKS[name], self.params) for name in cfg.quality_checks]
        if cfg.pii:
            steps.append(RedactPii(self.pii))
        return steps

    def params(self, lang: str, source: str = "") -> Params:
        """The quality checks' parameters for `lang` (the table, then clean.filters, then the source's filters)."""
        if (lang, source) not in self.params_by_lang:
            filters = merged_filters(self.cfg.filters, self.sources.get(source))
            self.params_by_lang[lang, source] = params_for(lang, filters, self.cfg.min_lang_score)
        return self.params_by_lang[lang, source]

    def code_filter(self, source: str) -> CodeLanguageFilter:
        if source not in self.code_filters:
            self.code_filters[source] = CodeLanguageFilter(merged_filters(self.cfg.filters, self.sources.get(source)))
        return self.code_filters[source]

    def policy(self, source: str) -> str:
        return self.sources[source].declared_language_policy or self.cfg.declared_language_policy

    def _quality(self, lang: str) -> QualityFilter:
        """The configured checks for one language, one document at a time (tests/benchmarks/bench_clean.py
        times them through it)."""
        return QualityFilter(lang, self.params(lang), self.cfg.quality_checks)

    def __call__(self, doc: Document) -> tuple[dict, str, str]:
        return self.batch([doc])[0]

    def batch(self, docs: list[Document]) -> list[tuple[dict, str, str]]:
        """Each step runs over the whole batch before the next one starts: the language-id model and
        the checks stay in the CPU caches (measured ~25% faster than one document at a time)."""
        drafts = [Draft(doc, doc.text, declared=self.declared.get(doc.source_name, "")) for doc in docs]
        changes: list[tuple[Draft, str, bool, int]] = []  # (document, step, dropped, characters)
        for step in self.steps:
            todo = [d for d in drafts if step.takes(d)]
            before = [d.text for d in todo]
            for d, reason, text in zip(todo, step(todo) if todo else [], before):
                if reason and not d.reason:
                    d.reason = reason
                    changes.append((d, step.name, True, len(text)))
                elif d.text is not text and d.text != text:
                    changes.append((d, step.name, False, len(text) - len(d.text)))
        for d, name, dropped, chars in changes:  # under the language finally recorded, as stats.json counts
            report.count_step(self.step_counts, name, d.lang, dropped, chars)
        return [(self._record(d), d.lang, d.reason) for d in drafts]

    def _record(self, d: Draft) -> dict:
        doc = d.doc
        record = {"id": doc.id, "text": d.text, "lang": d.lang, "lang_score": d.lang_score, "source": doc.source}
        if self.sources:  # a catalogue: every record names its source (without one, outputs are as before it)
            record[SOURCE_FIELD] = doc.source_name
        if d.lid_top:
            record.update(lid_top=d.lid_top, lid_top_score=d.lid_top_score)
        if d.flag:
            record["lang_flag"] = d.flag
        if doc.code_lang:
            record["code_lang"] = doc.code_lang
        record.update((k, v) for k, v in doc.meta.items() if k not in record)
        return record


def exact_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


# ----------------------------------------------------------------------------------------- filter
def filter_slices(cfg: CleanConfig, world: int) -> list[list[InputSlice]]:
    """What each filter task reads: the r-th contiguous, size-balanced run of the inputs in key order."""
    return contiguous(split_inputs(corpus_files(cfg), world), world)


def contiguous(slices: list[InputSlice], world: int) -> list[list[InputSlice]]:
    """Cut slices into `world` runs in key order: a slice goes to the task whose equal share of the total
    size holds its middle byte. Concatenated in rank order, the runs are the inputs in key order."""
    ordered = sorted(slices, key=lambda s: s.index)
    total = sum(s.size for s in ordered)
    tasks: list[list[InputSlice]] = [[] for _ in range(world)]
    before = 0
    for s in ordered:
        owner = min(world - 1, (2 * before + s.size) * world // (2 * total)) if total else 0
        tasks[owner].append(s)
        before += s.size
    return tasks


def run_filter(ctx: TaskContext) -> None:
    cfg = ctx.cfg.clean
    slices = filter_slices(cfg, ctx.world_size)[ctx.rank]
    out = _task_dir(ctx, "filter", ctx.rank)
    stats = report.new_stats()
    cleaner = DocumentCleaner(cfg, stats)
    hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.shingle_size, seed=MINHASH_SEED)
    keys, sizes, hashes, sigs, excluded_sizes = [], [], [], [], []
    # Files read in byte ranges: [documents read, broken] per file, so that the stats step can say
    # "empty_file" of one with no record exactly as a task reading it whole does.
    ranges: dict[str, list[int]] = {}
    paths = {s.file.source: s.file.path for s in slices}
    with JsonlWriter(out / "docs.jsonl.zst") as kept, JsonlWriter(out / "excluded.jsonl.zst") as excluded, \
            JsonlWriter(out / "rejects.jsonl") as rejects:

        def flush(batch: list[Document]) -> None:
            read = _bytes_in(stats)
            for doc, (record, lang, reason) in zip(batch, cleaner.batch(batch)):
                raw, size = len(doc.text.encode("utf-8")), len(record["text"].encode("utf-8"))  # once each
                report.count_doc(stats, lang, raw, size, reason)
                if SOURCE_FIELD in record:
                    report.count_source(stats, record, raw, size, reason)
                if reason:
                    excluded.write({**record, "reason": reason})
                    excluded_sizes.append(size)
                    continue
                kept.write(record)
                keys.append(doc.key)
                sizes.append(size)
                hashes.append(exact_hash(record["text"]))
                if cfg.dedup.near:
                    sigs.append(hasher.signature(record["text"], cjk=lang in ("zh", "ja") or is_cjk(record["text"])))
            batch.clear()
            progress.update(0, _bytes_in(stats) - read)  # the bytes the stats counted: no second encode

        pending: list[Document] = []
        progress = ctx.progress(unit="docs")  # documents read and their text bytes; no total before reading
        for piece in slices:
            stats["files"] += piece.start == 0  # a file split into byte ranges counts once
            split = ranges.setdefault(piece.file.source, [0, 0]) if piece.end is not None else None
            for item in read_slice(piece, Fields(cfg.text_field, cfg.id_field, cfg.code_field)):
                if isinstance(item, Reject):
                    if item.reason in BROKEN_FILE_REASONS:
                        _broken_file(ctx, paths[item.source], item)
                        if split is not None:
                            split[1] = 1
                    report.count_reject(stats, item)
                    rejects.write({"file": item.source, "line": item.line, "reason": item.reason, "detail": item.detail})
                    continue
                if split is not None:
                    split[0] += 1
                progress.update(1)
                pending.append(item)
                if len(pending) == BATCH_DOCS:
                    flush(pending)
        flush(pending)
        progress.close()
    write_npy(out / "sizes.npy", np.array(sizes, dtype=np.uint64))
    write_npy(out / "excluded_sizes.npy", np.array(excluded_sizes, dtype=np.uint64))
    write_json(out / "ranges.json", ranges)
    _save_signatures(out, cfg, keys, hashes, sigs)
    stats["normalize"].update(cleaner.normalize.counts)
    stats["pii"].update(cleaner.pii.counts)
    write_json(out / "stats.json", stats)
    write_json(out / "steps.json", {"order": [step.name for step in cleaner.steps], "counts": cleaner.step_counts})
    ctx.log.info("clean/filter %d: %d files or ranges, kept %d, excluded %d, rejected %d", ctx.rank, len(slices),
                 kept.count, excluded.count, rejects.count)


def _bytes_in(stats: dict) -> int:
    return sum(entry["bytes_in"] for entry in stats["languages"].values())


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
    n = ctx.cfg.clean.num_tasks
    edges = np.concatenate([np.load(_task_dir(ctx, "dedup", r) / "edges.npy") for r in range(n)])
    removed, kept = resolve_clusters(edges[:, :2])
    tasks = load_signatures(ctx)
    keys = np.concatenate([t.keys for t in tasks])  # the filter tasks' documents, in rank order = key order
    if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
        raise DataError("the clean filter tasks' documents are not in key order (a work folder from another "
                        "version?); re-run the clean stage with --force")
    exact = np.concatenate([t.exact for t in tasks])
    rows, kept_rows = np.searchsorted(keys, removed), np.searchsorted(keys, kept)
    reason = np.where(exact[rows] == exact[kept_rows], EXACT, 1) if len(removed) else np.zeros(0, np.uint64)
    # (row in the documents stream, key of the document kept instead, reason), by row.
    write_npy(ctx.work_dir / "clusters" / "removed.npy", np.column_stack([rows, kept, reason]).astype(np.uint64))
    write_json(ctx.work_dir / "clusters" / "layout.json", layout(ctx, rows, [len(t.keys) for t in tasks]))
    ctx.log.info("clean/clusters: %d documents removed as duplicates", len(removed))


# ----------------------------------------------------------------------------------------- layout
# Two streams of rows, each the concatenation of the filter tasks' files in rank order (= key order):
# "docs" (documents the filters kept: the published ones and the duplicates) and "excluded".
STREAMS = {"docs": "docs.jsonl.zst", "excluded": "excluded.jsonl.zst"}


def cut(rows: np.ndarray, sizes: np.ndarray, stream_rows: int) -> list[tuple[int, int, int]]:
    """(first row, end row, documents) of each piece of the selected `rows` (ascending) of a stream: the
    document whose text starts at cumulative offset o, over the selected documents, is in piece
    o // PART_BYTES. A piece ends where the next one starts (rows between are not selected)."""
    if len(rows) == 0:
        return []
    size = sizes[rows].astype(np.uint64)
    piece = (np.cumsum(size) - size) // np.uint64(PART_BYTES)
    firsts = np.flatnonzero(np.concatenate([[True], piece[1:] != piece[:-1]]))
    starts = rows[firsts]
    ends = np.concatenate([starts[1:], [stream_rows]])
    counts = np.diff(np.concatenate([firsts, [len(rows)]]))
    return [(int(a), int(b), int(c)) for a, b, c in zip(starts, ends, counts)]


def layout(ctx: TaskContext, removed_rows: np.ndarray, doc_counts: list[int]) -> dict:
    """The published files, each a row range of a stream and which of its rows it takes: depends only on
    the documents (their order and sizes), never on the number of tasks."""
    n = ctx.cfg.clean.num_tasks
    dirs = [_task_dir(ctx, "filter", r) for r in range(n)]
    sizes = np.concatenate([np.load(d / "sizes.npy") for d in dirs])
    if len(sizes) != sum(doc_counts):
        raise DataError("the clean filter tasks' sizes.npy and keys.npy disagree; re-run the clean stage with --force")
    excluded = [np.load(d / "excluded_sizes.npy") for d in dirs]
    excluded_sizes = np.concatenate(excluded)
    is_dup = np.zeros(len(sizes), dtype=bool)
    is_dup[removed_rows.astype(np.int64)] = True
    families = [("part-{:05d}.jsonl." + ctx.cfg.clean.compression, "docs", "kept", np.flatnonzero(~is_dup), sizes),
                ("excluded/duplicates-{:05d}.jsonl.zst", "docs", "duplicates", np.flatnonzero(is_dup), sizes),
                ("excluded/filtered-{:05d}.jsonl.zst", "excluded", "all", np.arange(len(excluded_sizes)),
                 excluded_sizes)]
    files = []
    for pattern, stream, select, rows, sz in families:
        for k, (start, end, count) in enumerate(cut(rows, sz, len(sz))):
            files.append({"path": pattern.format(k), "stream": stream, "select": select, "start": start,
                          "end": end, "documents": count})
    rows = {"docs": [int(c) for c in doc_counts], "excluded": [int(len(e)) for e in excluded]}
    return {"part_bytes": PART_BYTES, "rows": rows, "files": files}


class RowReader:
    """Rows [start, end) of a stream (one jsonl line a row), as bytes; reading forward reuses the open file."""

    def __init__(self, paths: list[Path], counts: list[int]):
        self.paths = paths
        self.offsets = np.cumsum([0, *counts])
        self.file, self.row, self.fh = -1, 0, None

    def _open(self, k: int) -> None:
        self.close()
        raw = zstandard.ZstdDecompressor().stream_reader(open(self.paths[k], "rb"), closefd=True)
        self.fh, self.file, self.row = io.BufferedReader(raw, 1 << 20), k, int(self.offsets[k])

    def _next(self) -> bytes:
        line = self.fh.readline()
        if not line.endswith(b"\n"):
            raise DataError(f"{self.paths[self.file]} ends before its row {self.row - self.offsets[self.file]}; "
                            "re-run the clean stage with --force")
        self.row += 1
        return line

    def rows(self, start: int, end: int):
        row = start
        while row < end:
            k = int(np.searchsorted(self.offsets, row, side="right")) - 1
            if k != self.file or row < self.row:
                self._open(k)
            while self.row < row:  # skipped without parsing
                self._next()
            stop = min(end, int(self.offsets[k + 1]))
            while self.row < stop:
                yield self.row, self._next()
            row = stop

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# ------------------------------------------------------------------------------------------ write
def run_write(ctx: TaskContext) -> None:
    """The r-th contiguous run of the layout's files; kept and excluded lines are copied as they are."""
    cfg = ctx.cfg.clean
    plan = json.loads((ctx.work_dir / "clusters" / "layout.json").read_text())
    files = plan["files"]
    mine = files[ctx.rank * len(files) // ctx.world_size:(ctx.rank + 1) * len(files) // ctx.world_size]
    removed = np.load(ctx.work_dir / "clusters" / "removed.npy")
    dup_rows = removed[:, 0].astype(np.int64)
    sources = {f.index: f.source for f in corpus_files(cfg)}
    readers = {name: RowReader([_task_dir(ctx, "filter", r) / STREAMS[name] for r in range(len(counts))], counts)
               for name, counts in plan["rows"].items()}
    stats = report.new_stats()  # the duplicates' counts, added to the filter tasks' by the stats step
    progress = ctx.progress(total=sum(f["end"] - f["start"] for f in mine), unit="rows")
    for f in mine:
        start, end = f["start"], f["end"]
        lo, hi = np.searchsorted(dup_rows, [start, end])
        dup_at = {int(r): lo + i for i, r in enumerate(dup_rows[lo:hi])}  # row -> index in removed
        with LineWriter(ctx.out_dir / f["path"]) as out:
            for row, line in readers[f["stream"]].rows(start, end):
                progress.update(1, len(line))
                if f["select"] == "all" or (f["select"] == "kept" and row not in dup_at):
                    out.write(line)
                elif f["select"] == "duplicates" and row in dup_at:
                    record = json.loads(line)
                    _, kept_key, code = removed[dup_at[row]]
                    reason = REASON_NAMES[int(code)]
                    out.write((dumps({**record, "reason": reason, "duplicate_of":
                                      f"{sources[int(kept_key) >> 32]}:{int(kept_key) & 0xFFFFFFFF}"}) + "\n").encode())
                    report.count_duplicate(stats, record["lang"], record["text"], reason, record.get(SOURCE_FIELD))
        if out.count != f["documents"]:
            raise DataError(f"clean/write: {f['path']} got {out.count} documents, the layout says {f['documents']}; "
                            "re-run the clean stage with --force")
        ctx.log.info("clean/write %d: %s, %d documents", ctx.rank, f["path"], out.count)
    progress.close()
    for reader in readers.values():
        reader.close()
    write_json(ctx.work_dir / "stats" / f"{ctx.rank:05d}.json", stats)


def run_stats(ctx: TaskContext) -> None:
    n = ctx.cfg.clean.num_tasks
    dirs = [_task_dir(ctx, "filter", r) for r in range(n)]
    parts = [json.loads((d / "stats.json").read_text()) for d in dirs]
    parts += [json.loads((ctx.work_dir / "stats" / f"{r:05d}.json").read_text()) for r in range(n)]
    rejects = [r for d in dirs for r in read_jsonl(d / "rejects.jsonl")]
    ranges: dict[str, list[int]] = {}
    for d in dirs:
        for source, (docs, broken) in json.loads((d / "ranges.json").read_text()).items():
            entry = ranges.setdefault(source, [0, 0])
            entry[0], entry[1] = entry[0] + docs, max(entry[1], broken)
    empty = [s for s, (docs, broken) in sorted(ranges.items()) if docs == 0 and not broken]
    rejects += [{"file": s, "line": 0, "reason": "empty_file", "detail": "no record in the file"} for s in empty]
    if empty:
        parts.append({"rejected": {"empty_file": len(empty)}})
    stats = report.finalize(report.merge(parts))
    with JsonlWriter(ctx.out_dir / "rejects.jsonl") as out:
        for record in sorted(rejects, key=lambda r: (r["file"], r["line"], r["reason"])):
            out.write(record)
    write_json(ctx.out_dir / "stats.json", stats)
    write_atomic(ctx.out_dir / "summary.txt", report.render(stats) + "\n")
    steps = [json.loads((d / "steps.json").read_text()) for d in dirs]
    # Not in stats.json (its bytes are those from before the steps): in the log, after the summary.
    ctx.log.info("clean summary\n%s\n%s", report.render(stats, n),
                 report.render_steps(report.merge([t["counts"] for t in steps]), steps[0]["order"]))
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
    from core.lineage import read_record

    tasks = ((read_record(Path(published_dir)) or {}).get("num_tasks") or {}).get("filter")
    return report.render(json.loads(path.read_text()), tasks)


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
    config={"clean": CleanConfig},
)

__all__ = ["STAGE", "DocumentCleaner", "InputFile", "check", "run_locally", "summary"]
