"""Language sampling (p_l ∝ n_l^α) and the tokenizer's training sample.

The sample is a bottom-k sample by line hash: every line gets a key hash(seed, line) in [0, 1), and
each language keeps its lines of smallest key until its byte budget is spent. Identical lines get the
same key, so deduplication is free; the sample depends only on the seed and the corpus content, not on
shard boundaries; and memory stays near the sample size because pass 2 only keeps lines below a key
threshold computed from pass 1's byte counts. Documents of a catalogue (clean.sources) name their source:
shares.json then says how many sample bytes each source gave (`sources`), and held-out records keep it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core.fs import atomic_open
from core.progress import Progress
from data_prep.shards import CleanDocument

log = logging.getLogger("graine.sampling")

HELDOUT_BYTES_PER_LANG = 200_000  # enough for stable bytes/token figures, small enough to encode fast
OVERSAMPLE = 1.3  # pass-2 margin for lines lost to deduplication


def alpha_weights(sizes: dict[str, float], alpha: float) -> dict[str, float]:
    """p_l ∝ n_l^α over the languages with data (α=1: natural shares, α=0: uniform)."""
    powered = {k: float(v) ** alpha for k, v in sizes.items() if v > 0}
    total = sum(powered.values())
    return {k: v / total for k, v in sorted(powered.items())} if total else {}


def byte_budgets(sizes: dict[str, int], shares: dict[str, float], total: int) -> dict[str, int]:
    """Bytes per language: shares × total, capped by what a language has, the rest spread over the others."""
    budgets: dict[str, int] = {}
    open_langs = dict(shares)
    remaining = min(total, sum(sizes.values()))
    while open_langs:
        norm = sum(open_langs.values())
        capped = {k for k, p in open_langs.items() if p / norm * remaining >= sizes[k]}
        if not capped:
            budgets.update({k: int(p / norm * remaining) for k, p in open_langs.items()})
            break
        for k in sorted(capped):
            budgets[k] = sizes[k]
            remaining -= sizes[k]
            del open_langs[k]
    return budgets


def unit_hash(*parts: str | int) -> float:
    """A seeded hash in [0, 1): the same input gives the same value on every machine."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(h.digest(), "little") / 2.0**64


def is_heldout(doc: CleanDocument, seed: int, fraction: float) -> bool:
    return fraction > 0 and unit_hash(seed, "heldout", doc.id) < fraction


def lines_of(text: str) -> Iterable[str]:
    # Sentences for SentencePiece are lines: newlines are encoded as their own token (see tokenizer.py).
    return (line for line in text.split("\n") if line.strip())


# Makes the Progress of one pass over the corpus: (total documents or None, unit, what) -> Progress
# (TaskContext.progress in the stage).
ProgressFactory = Callable[..., Progress]


def tracked(docs: Iterable[CleanDocument], progress: ProgressFactory | None, what: str, total: int | None = None
            ) -> Iterable[CleanDocument]:
    """`docs`, counted (documents and UTF-8 bytes) by a Progress when a factory is given."""
    if progress is None:
        yield from docs
        return
    with progress(total=total, unit="docs", what=what) as p:
        for doc in docs:
            p.update(1, len(doc.text.encode("utf-8", "surrogatepass")))
            yield doc


@dataclass
class SampleResult:
    shares: dict  # the content of sample/shares.json
    sample_path: Path
    heldout_path: Path


def count_bytes(docs: Iterable[CleanDocument], seed: int, heldout_fraction: float) -> dict[str, int]:
    """Pass 1: line bytes per language, held-out documents excluded."""
    sizes: dict[str, int] = {}
    for doc in docs:
        if is_heldout(doc, seed, heldout_fraction):
            continue
        n = sum(len(line.encode("utf-8", "surrogatepass")) for line in lines_of(doc.text))
        sizes[doc.lang] = sizes.get(doc.lang, 0) + n
    return sizes


def collect(docs: Iterable[CleanDocument], thresholds: dict[str, float], seed: int, heldout_fraction: float):
    """Pass 2: candidate lines under each language's key threshold, deduplicated; held-out documents."""
    # line -> (key, lang, line, source); first occurrence wins. Lines are unique, so the source never
    # decides their order.
    candidates: dict[str, tuple[float, str, str, str]] = {}
    heldout: dict[str, list[dict]] = {}
    heldout_bytes: dict[str, int] = {}
    for doc in docs:
        if is_heldout(doc, seed, heldout_fraction):
            if heldout_bytes.get(doc.lang, 0) < HELDOUT_BYTES_PER_LANG:
                heldout.setdefault(doc.lang, []).append(_heldout_record(doc))
                heldout_bytes[doc.lang] = heldout_bytes.get(doc.lang, 0) + len(doc.text.encode("utf-8", "surrogatepass"))
            continue
        theta = thresholds.get(doc.lang, 0.0)
        for line in lines_of(doc.text):
            key = unit_hash(seed, line)
            if key < theta and line not in candidates:
                candidates[line] = (key, doc.lang, line, str(doc.record.get("source_name", "")))
    return candidates, heldout


def _heldout_record(doc: CleanDocument) -> dict:
    record = {"lang": doc.lang, "text": doc.text}
    if "source_name" in doc.record:
        record["source_name"] = doc.record["source_name"]
    return record


def select(candidates, budgets: dict[str, int]) -> list[tuple[float, str, str, str]]:
    """Each language's lines of smallest key until its budget is spent."""
    per_lang: dict[str, list[tuple[float, str, str, str]]] = {}
    for item in candidates.values():
        per_lang.setdefault(item[1], []).append(item)
    chosen = []
    for lang, items in per_lang.items():
        used = 0
        for item in sorted(items):
            size = len(item[2].encode("utf-8", "surrogatepass"))
            if used + size > budgets.get(lang, 0):
                break
            used += size
            chosen.append(item)
    return sorted(chosen)


def write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write `lines` as they are (no newline added) to `path`, durably; lone surrogates are kept, not refused."""
    with atomic_open(path, "w", newline="\n", errors="surrogatepass") as f:
        f.writelines(lines)


def fill_budgets(read_docs, sizes: dict[str, int], targets: dict[str, float], total: int, seed: int,
                 heldout_fraction: float, max_passes: int = 6, progress: ProgressFactory | None = None,
                 num_docs: int | None = None):
    """Pass 2 (repeated while needed): candidates under each language's key threshold.

    Duplicates make a language's unique bytes fall short of what pass 1 counted; such a language gets a
    higher threshold on the next pass, and one that has no more unique lines is capped at what it has,
    its budget going to the others, so the shares stay p_l ∝ n_l^α wherever the data allows.
    """
    sizes = dict(sizes)
    budgets = byte_budgets(sizes, targets, total)
    thresholds = {k: min(1.0, OVERSAMPLE * budgets[k] / sizes[k] + 1e-3) for k in budgets if sizes[k]}
    for n in range(max_passes):
        docs = tracked(read_docs(), progress, f"tokenizer sample: sampling (pass {n + 2})", num_docs)
        candidates, heldout = collect(docs, thresholds, seed, heldout_fraction)
        avail: dict[str, int] = {}
        for _key, lang, line, _source in candidates.values():
            avail[lang] = avail.get(lang, 0) + len(line.encode("utf-8", "surrogatepass"))
        short = {k for k in budgets if avail.get(k, 0) < budgets[k]}
        if not short:
            break
        for k in short:
            if thresholds[k] >= 1.0:
                sizes[k] = avail.get(k, 0)  # every unique line is already in
            else:
                thresholds[k] = min(1.0, thresholds[k] * OVERSAMPLE * budgets[k] / max(avail.get(k, 0), 1))
        budgets = byte_budgets(sizes, targets, total)
        for k in budgets:
            if sizes[k]:
                thresholds[k] = max(thresholds[k], min(1.0, OVERSAMPLE * budgets[k] / sizes[k] + 1e-3))
    return candidates, heldout, budgets


def build_sample(read_docs: Callable[[], Iterable[CleanDocument]], out: Path, *, alpha: float, sample_bytes: int,
                 seed: int, heldout_fraction: float, check_memory: Callable[[int], None] | None = None,
                 progress: ProgressFactory | None = None) -> SampleResult:
    """Write `out/sample.txt` (one line a sentence), `out/heldout.jsonl` and `out/shares.json`.

    `progress` makes the Progress of each pass over the corpus (the first one counts the documents, so
    the later ones know their total)."""
    out.mkdir(parents=True, exist_ok=True)
    counted = [0]

    def counting(docs: Iterable[CleanDocument]) -> Iterable[CleanDocument]:
        for doc in docs:
            counted[0] += 1
            yield doc

    sizes = count_bytes(counting(tracked(read_docs(), progress, "tokenizer sample: counting (pass 1)")), seed,
                        heldout_fraction)
    total = min(sample_bytes, sum(sizes.values()))
    if check_memory is not None:
        check_memory(total)  # fail before the expensive passes, not after them
    targets = alpha_weights(sizes, alpha)
    candidates, heldout, budgets = fill_budgets(read_docs, sizes, targets, total, seed, heldout_fraction,
                                                progress=progress, num_docs=counted[0])
    chosen = select(candidates, budgets)
    got: dict[str, list[int]] = {k: [0, 0] for k in sizes}
    by_source: dict[str, dict[str, int]] = {}
    for _, lang, line, source in chosen:
        size = len(line.encode("utf-8", "surrogatepass"))
        got[lang][0] += size
        got[lang][1] += 1
        if source:
            entry = by_source.setdefault(source, {"bytes": 0, "lines": 0})
            entry["bytes"] += size
            entry["lines"] += 1
    sample_total = sum(b for b, _ in got.values()) or 1
    shares = {"alpha": alpha, "seed": seed, "sample_bytes": sample_bytes, "bytes": sample_total,
              "lines": len(chosen), "languages": {
                  k: {"corpus_bytes": sizes[k], "target_share": round(targets.get(k, 0.0), 6),
                      "share": round(got[k][0] / sample_total, 6), "bytes": got[k][0], "lines": got[k][1],
                      # true when the language has fewer unique bytes than its share asks for
                      "capped": budgets.get(k, 0) < round(targets.get(k, 0.0) * total) - 1}
                  for k in sorted(sizes)}}
    if by_source:
        shares["sources"] = dict(sorted(by_source.items()))
    sample_path, heldout_path = out / "sample.txt", out / "heldout.jsonl"
    write_lines(sample_path, (line + "\n" for _, _, line, _ in chosen))
    write_lines(heldout_path, (json.dumps(r, ensure_ascii=False) + "\n" for k in sorted(heldout) for r in heldout[k]))
    write_lines(out / "shares.json", [json.dumps(shares, indent=2, ensure_ascii=False)])
    for k, v in shares["languages"].items():
        log.info("sample %-14s target %5.1f%%  got %5.1f%%  (%d bytes%s)", k, 100 * v["target_share"],
                 100 * v["share"], v["bytes"], ", capped: too few unique lines" if v["capped"] else "")
    return SampleResult(shares, sample_path, heldout_path)
