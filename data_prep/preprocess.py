"""Stage `preprocess`: clean/ documents → token datasets in Megatron's mmap format, merged, with blend weights.

Steps:
- `count` (1 task): documents per clean shard, so the global document order (shards by name, lines in
  order: clean's canonical key order, the same whatever clean.num_tasks) can be cut into equal contiguous
  slices whatever the number of tasks.
- `tokenize` (`preprocess.num_tasks` tasks): task r encodes documents [r·N/W, (r+1)·N/W), appends
  `</s>` (the end-of-document id) and writes one part per dataset (language, or language and source)
  and split into `work_dir/tasks/<rank>.tmp/`, renamed to `work_dir/tasks/<rank>/` only when whole.
- `merge` (1 task): concatenates the parts of each dataset in rank order into
  `shards/<split>/<dataset>.bin/.idx`, never re-tokenising; since slices are contiguous and the split is
  decided per document by a seeded hash of its id, the result is byte-identical for any number of tasks.
  Then `shards/blend.json`: every dataset's documents, tokens, largest token id (so the sample index
  checks the vocabulary without reading tokens), file hashes and sampling weight.

With `preprocess.split_by_source`, a dataset is a language and a source: the catalogue source of clean's
records (`source_name`; a record without it is of the clean.inputs source, `inputs`), or whatever field
`preprocess.source_field` names. A catalogue source's `weight` (its share of the blend) or `multiplier`
(a factor on its datasets' α-sampled weights) is applied to its datasets' blend weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.config import param
from core.errors import ConfigError, DataError
from core.fs import fsync_dir, write_json
from core.stage import Stage, Step, TaskContext
from data_prep.catalogue import DEFAULT_SOURCE, SOURCE_FIELD, SourceConfig
from data_prep.indexed_dataset import IndexedDatasetWriter as Writer
from data_prep.indexed_dataset import dtype_for_vocab, merge_datasets
from data_prep.sampling import alpha_weights, unit_hash
from data_prep.shards import count_lines, list_shards, read_shard
from data_prep.tokenizer import job_cpus, load_tokenizer, tokenizer_info


@dataclass(kw_only=True)
class PreprocessConfig:
    num_tasks: int = param(4, ge=1, le=100_000, shape=True, help="tokenisation tasks (a Slurm array on a cluster)")
    alpha: float = param(0.3, ge=0.0, le=1.0, help="blend weights over languages: p_l ∝ n_l^alpha")
    multipliers: dict[str, float] = param(default_factory=dict, help="explicit per-dataset weight multipliers")
    split_by_source: bool = param(False, help="one dataset per language and source instead of per language")
    validation_fraction: float = param(0.01, ge=0.0, le=0.5, help="share of documents held out for validation")
    source_field: str = param(SOURCE_FIELD, help="clean/ record field naming the source, for split_by_source: "
                              "the catalogue's source name (clean.sources), or e.g. source (the input file)")


SPLITS = ("train", "valid")
BATCH_DOCS = 512  # documents per SentencePiece batch call: amortises the call, bounds memory


def doc_source(record: dict, field: str) -> str:
    """The source a clean record belongs to: records of a run without catalogue have no source_name, and
    are all of the clean.inputs source."""
    value = record.get(field)
    if value:
        return str(value)
    return DEFAULT_SOURCE if field == SOURCE_FIELD else "none"


def blend_identity(cfg) -> list | None:
    """The catalogue sources' weights and multipliers: the blend reads them, clean's hash leaves them out
    (changing a weight re-runs preprocess, not clean). None without any: the hash of a run without them
    is what it was before catalogues."""
    weighted = [[s.name, s.weight, s.multiplier] for s in cfg.clean.sources if s.weight is not None or s.multiplier is not None]
    return weighted or None


def validate(cfg) -> None:
    """A catalogue source's weight or multiplier applies to datasets of that source only: ConfigError unless
    preprocess makes them (split_by_source on the source name)."""
    p = cfg.preprocess
    for i, src in enumerate(cfg.clean.sources):
        if (src.weight is not None or src.multiplier is not None) and not (p.split_by_source and p.source_field == SOURCE_FIELD):
            what = "weight" if src.weight is not None else "multiplier"
            raise ConfigError(f"clean.sources[{i}].{what} needs one dataset per source: set preprocess.split_by_source"
                              f"=true (with preprocess.source_field={SOURCE_FIELD}), or remove the {what}")


def dataset_name(lang: str, source: str | None) -> str:
    """A file-safe dataset name: `code:python` → `code_python`, with source `en__web`."""
    def safe(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", s) or "none"
    return safe(lang) if source is None else f"{safe(lang)}__{safe(source)}"


# -------------------------------------------------------------------------------------------- count
def count_step(ctx: TaskContext) -> None:
    shards = list_shards(ctx.input_dir("clean"))
    counts = []
    with ctx.progress(total=len(shards), unit="shards", what="preprocess: counting documents") as progress:
        for p in shards:
            counts.append({"name": p.name, "lines": count_lines(p)})
            progress.update(1, p.stat().st_size)
    total = sum(c["lines"] for c in counts)
    write_json(ctx.work_dir / "documents.json", {"shards": counts, "total": total}, indent=2)


def task_slice(rank: int, world: int, total: int) -> tuple[int, int]:
    return rank * total // world, (rank + 1) * total // world


def read_document_range(clean: Path, counts: dict, start: int, stop: int):
    """Documents of global lines [start, stop), opening only the shards that overlap."""
    first = 0
    for shard in counts["shards"]:
        end = first + shard["lines"]
        if first < stop and end > start:
            yield from read_shard(clean / shard["name"], first, max(start - first, 0), min(stop, end) - first)
        first = end


def load_counts(ctx: TaskContext) -> dict:
    path = ctx.work_dir / "documents.json"
    if not path.is_file():
        raise DataError(f"{path} is missing: the preprocess count step did not finish; re-run the stage")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------- tokenize
class PartWriters:
    """One writer per (split, dataset) of a task, created on first use."""

    def __init__(self, root: Path, dtype):
        self.root, self.dtype = root, dtype
        self.writers: dict[tuple[str, str], Writer] = {}
        self.meta: dict[str, dict] = {}

    def add(self, split: str, name: str, lang: str, source: str | None, docs: list[list[int]], nbytes: int):
        key = (split, name)
        if key not in self.writers:
            self.writers[key] = Writer(self.root / split / name, self.dtype)
            self.meta.setdefault(name, {"lang": lang, "source": source})
        max_id = self.writers[key].add_documents(docs)
        m = self.meta[name].setdefault(split, {"documents": 0, "tokens": 0, "text_bytes": 0, "max_id": -1})
        m["max_id"] = max(m["max_id"], max_id)
        m["documents"] += len(docs)
        m["tokens"] += sum(len(d) for d in docs)
        m["text_bytes"] += nbytes

    def finalize(self) -> None:
        for w in self.writers.values():
            w.finalize()


def encode_batch(sp, batch, writers: PartWriters, cfg, eod: int, threads: int) -> tuple[int, int]:
    """Tokenise and write a batch of documents; (tokens written, text bytes) for the progress."""
    p = cfg.preprocess
    ids = sp.encode([d.text for d in batch], num_threads=threads)
    groups: dict[tuple, tuple[list, int]] = {}
    for doc, toks in zip(batch, ids):
        source = doc_source(doc.record, p.source_field) if p.split_by_source else None
        split = "valid" if unit_hash(cfg.seed, "valid", doc.id) < p.validation_fraction else "train"
        key = (split, dataset_name(doc.lang, source), doc.lang, source)
        docs, nbytes = groups.get(key, ([], 0))
        toks.append(eod)
        docs.append(toks)
        groups[key] = (docs, nbytes + len(doc.text.encode("utf-8", "surrogatepass")))
    for (split, name, lang, source), (docs, nbytes) in groups.items():
        writers.add(split, name, lang, source, docs, nbytes)
    return sum(len(t) for t in ids), sum(nbytes for _, nbytes in groups.values())


def tokenize_step(ctx: TaskContext) -> None:
    counts = load_counts(ctx)
    start, stop = task_slice(ctx.rank, ctx.world_size, counts["total"])
    tasks = ctx.work_dir / "tasks"
    final, staging = tasks / f"{ctx.rank:05d}", tasks / f"{ctx.rank:05d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # what a killed attempt left behind
    tok_dir = ctx.input_dir("tokenizer")
    sp, info = load_tokenizer(tok_dir), tokenizer_info(tok_dir)
    writers = PartWriters(staging, dtype_for_vocab(info.vocab_size))
    threads = job_cpus()
    batch = []
    docs = read_document_range(ctx.input_dir("clean"), counts, start, stop)
    # Lines of the range, blank ones included: a few more than the documents read when clean/ has blanks.
    with ctx.progress(total=stop - start, unit="docs") as progress:
        for doc in docs:
            batch.append(doc)
            if len(batch) == BATCH_DOCS:
                tokens, nbytes = encode_batch(sp, batch, writers, ctx.cfg, info.eod_id, threads)
                progress.update(len(batch), nbytes, tokens=tokens)
                batch = []
        if batch:
            tokens, nbytes = encode_batch(sp, batch, writers, ctx.cfg, info.eod_id, threads)
            progress.update(len(batch), nbytes, tokens=tokens)
    writers.finalize()
    manifest = {"rank": ctx.rank, "world_size": ctx.world_size, "start": start, "stop": stop,
                "tokenizer_hash": info.hash, "datasets": writers.meta}
    write_json(staging / "manifest.json", manifest, indent=2)
    # A task's parts appear all at once: the rename is the task's commit point.
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    fsync_dir(final.parent)
    ctx.log.info("preprocess task %d: documents [%d, %d) → %d datasets", ctx.rank, start, stop, len(writers.meta))


# -------------------------------------------------------------------------------------------- merge
def load_manifests(ctx: TaskContext) -> list[dict]:
    world = ctx.cfg.preprocess.num_tasks
    manifests = []
    for rank in range(world):
        path = ctx.work_dir / "tasks" / f"{rank:05d}" / "manifest.json"
        if not path.is_file():
            raise DataError(f"{path} is missing: tokenize task {rank} of {world} has not completed; "
                            "re-run the preprocess stage")
        manifests.append(json.loads(path.read_text()))
    return manifests


def blend_weights(datasets: dict, alpha: float, multipliers: dict[str, float],
                  sources: dict[str, SourceConfig] | None = None) -> dict[str, float]:
    """α-sampling over languages by training tokens, split within a language by tokens, × multipliers
    (preprocess.multipliers and the catalogue sources'); then each source with a `weight` gets that share
    of the blend, its datasets in proportion, and the other datasets share the rest."""
    sources = sources or {}
    tokens = {n: d.get("train", {}).get("tokens", 0) for n, d in datasets.items()}
    per_lang: dict[str, int] = {}
    for name, d in datasets.items():
        per_lang[d["lang"]] = per_lang.get(d["lang"], 0) + tokens[name]
    p_lang = alpha_weights(per_lang, alpha)
    raw = {n: p_lang.get(d["lang"], 0.0) * tokens[n] / max(per_lang[d["lang"]], 1) * multipliers.get(n, 1.0)
           * (getattr(sources.get(d["source"]), "multiplier", None) or 1.0) for n, d in datasets.items()}
    share = {n: sources[d["source"]].weight for n, d in datasets.items()
             if d["source"] in sources and sources[d["source"]].weight is not None}
    groups: dict[object, float] = {}  # a weighted source's raw total; None: every other dataset's
    for n, d in datasets.items():
        group = d["source"] if n in share else None
        groups[group] = groups.get(group, 0.0) + raw[n]
    rest = 1.0 - sum(sources[s].weight for s, total in groups.items() if s is not None and total)
    shares = {n: share.get(n, rest) for n in datasets}
    weights = {n: shares[n] * raw[n] / groups[datasets[n]["source"] if n in share else None]
               if raw[n] else 0.0 for n in datasets}
    total = sum(weights.values())  # 1, unless no dataset is left outside the weighted sources
    return {n: (w / total if total else 0.0) for n, w in weights.items()}


def merge_step(ctx: TaskContext) -> None:
    cfg, out = ctx.cfg, ctx.out_dir
    manifests = load_manifests(ctx)
    info = tokenizer_info(ctx.input_dir("tokenizer"))
    stale = [m["rank"] for m in manifests if m["tokenizer_hash"] != info.hash]
    if stale:
        raise DataError(f"tokenize task(s) {stale} used another tokenizer than {ctx.input_dir('tokenizer')}; "
                        "re-run the preprocess stage from scratch")
    unknown = sorted(set(cfg.preprocess.multipliers) - {n for m in manifests for n in m["datasets"]})
    if unknown:
        raise DataError(f"preprocess.multipliers names {unknown}, which are not datasets; valid: "
                        f"{sorted({n for m in manifests for n in m['datasets']})}")
    datasets: dict[str, dict] = {}
    for m in manifests:
        for name, meta in m["datasets"].items():
            datasets.setdefault(name, {"lang": meta["lang"], "source": meta["source"]})
    progress = ctx.progress(total=len(datasets), unit="datasets", what="preprocess: merging")
    for name in sorted(datasets):
        for split in SPLITS:
            parts = [ctx.work_dir / "tasks" / f"{m['rank']:05d}" / split / name
                     for m in manifests if split in m["datasets"].get(name, {})]
            if parts:
                merged = merge_datasets(parts, out / split / name)
                metas = [m["datasets"][name][split] for m in manifests if split in m["datasets"].get(name, {})]
                datasets[name][split] = {"path": f"{split}/{name}", "text_bytes": sum(x["text_bytes"] for x in metas),
                                         "max_id": max(x["max_id"] for x in metas), **merged}
        progress.update(1)
    progress.close()
    sources = {s.name: s for s in cfg.clean.sources} if cfg.preprocess.split_by_source else {}
    weights = blend_weights(datasets, cfg.preprocess.alpha, cfg.preprocess.multipliers, sources)
    for name, d in datasets.items():
        d["weight"] = round(weights[name], 12)
        d["multiplier"] = cfg.preprocess.multipliers.get(name, 1.0)
        if d["source"] in sources and (sources[d["source"]].weight or sources[d["source"]].multiplier):
            src = sources[d["source"]]
            d["source_weight" if src.weight is not None else "source_multiplier"] = src.weight or src.multiplier
    write_json(out / "blend.json", {
        "format": "megatron-mmap-indexed-dataset-v1", "tokenizer_hash": info.hash, "vocab_size": info.vocab_size,
        "eod_id": info.eod_id, "dtype": str(dtype_for_vocab(info.vocab_size)), "alpha": cfg.preprocess.alpha,
        "seed": cfg.seed, "split": {"validation_fraction": cfg.preprocess.validation_fraction,
                                    "rule": "valid when unit_hash(seed, 'valid', id) < validation_fraction"},
        "totals": {s: {k: sum(d.get(s, {}).get(k, 0) for d in datasets.values()) for k in ("documents", "tokens")}
                   for s in SPLITS},
        "datasets": datasets}, indent=2)


def summary(out: Path) -> str:
    try:
        blend = json.loads((Path(out) / "blend.json").read_text())
    except (OSError, ValueError):
        return "no blend.json"
    t = blend["totals"]
    top = sorted(blend["datasets"].items(), key=lambda kv: -kv[1]["weight"])[:5]
    weights = ", ".join(f"{n} {d['weight']:.2f}" for n, d in top)
    return (f"{len(blend['datasets'])} datasets, train {t['train']['tokens']:,} tokens, "
            f"valid {t['valid']['tokens']:,}; weights {weights}")


STAGE = Stage(
    name="preprocess",
    needs=("clean", "tokenizer"),
    sections=("seed", "preprocess"),
    identity=blend_identity,
    steps=(Step("count", count_step), Step("tokenize", tokenize_step, num_tasks=lambda cfg: cfg.preprocess.num_tasks),
           Step("merge", merge_step)),
    description="tokenise clean/ into Megatron mmap datasets per language, merge, and write blend weights",
    summary=summary,
    output="shards",
    validate=validate,
    config={"preprocess": PreprocessConfig},
)
