"""Counts of the clean stage: per task, merged into clean/stats.json, and rendered as a readable summary.

Invariant (checked by the tests): for every language, docs_in = docs_out + sum(dropped); and every
record that could not be read is in `rejected` (by reason), never in a language's docs_in.
With a catalogue (clean.sources), `sources` counts the same per source (docs_in = docs_out + sum(dropped)),
and for a source with a declared language how language id agreed: `lid_top` (documents by the model's top
label), `confident_other` (another label at least clean.disagreement_threshold) and `flagged`. Only
integers: stats.json stays identical whatever the number of tasks. Without a catalogue it has no `sources`.
The document steps' own counts (`count_step`: what each step dropped or cut, per language) are kept
beside, in each filter task's steps.json, and logged at the end of the stage (`render_steps`).
"""

from __future__ import annotations

from typing import Any

from data_prep.readers import Reject


def new_stats() -> dict[str, Any]:
    return {"files": 0, "rejected": {}, "languages": {}, "pii": {}, "normalize": {}, "boilerplate_lines": 0}


def _lang(stats: dict, lang: str) -> dict:
    return stats["languages"].setdefault(lang, {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "dropped": {}})


def count_reject(stats: dict, reject: Reject) -> None:
    stats["rejected"][reject.reason] = stats["rejected"].get(reject.reason, 0) + 1


def _count(entry: dict, bytes_in: int, bytes_out: int, reason: str) -> None:
    """One document into a language's or a source's counts: in, then dropped (by reason) or out."""
    entry["docs_in"] += 1
    entry["bytes_in"] += bytes_in
    if reason:
        entry["dropped"][reason] = entry["dropped"].get(reason, 0) + 1
    else:
        entry["docs_out"] += 1
        entry["bytes_out"] += bytes_out


def count_doc(stats: dict, lang: str, bytes_in: int, bytes_out: int, reason: str) -> None:
    """A document (`bytes_in` of raw text, `bytes_out` cleaned, UTF-8) under its language."""
    _count(_lang(stats, lang), bytes_in, bytes_out, reason)


def count_source(stats: dict, record: dict, bytes_in: int, bytes_out: int, reason: str) -> None:
    """A document of a catalogue source, counted under its source (record[source_name])."""
    entry = source_entry(stats, record["source_name"])
    _count(entry, bytes_in, bytes_out, reason)
    if "lid_top" in record:  # a declared language: how the model agreed
        top = entry.setdefault("lid_top", {})
        top[record["lid_top"]] = top.get(record["lid_top"], 0) + 1
        entry["flagged"] = entry.get("flagged", 0) + ("lang_flag" in record)


def source_entry(stats: dict, source: str) -> dict:
    """The counts of one catalogue source (created on first use: a run without a catalogue has none)."""
    return stats.setdefault("sources", {}).setdefault(
        source, {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "dropped": {}})


def count_step(steps: dict, step: str, lang: str, dropped: bool, chars: int) -> None:
    """A document that `step` dropped (`chars`: its characters) or whose text it changed (`chars`: the
    characters it cut, negative when it lengthened the text, as a PII tag longer than the value may),
    under the document's language as finally recorded."""
    entry = steps.setdefault(step, {}).setdefault(lang, {})
    docs, size = ("dropped", "dropped_chars") if dropped else ("edited", "cut_chars")
    entry[docs] = entry.get(docs, 0) + 1
    entry[size] = entry.get(size, 0) + chars


def count_duplicate(stats: dict, lang: str, text: str, reason: str, source: str | None = None) -> None:
    """A document counted as kept by the filter step turned out to be a duplicate (of a catalogue's `source`)."""
    entries = [_lang(stats, lang)]
    if source is not None:
        entries.append(source_entry(stats, source))
    for entry in entries:
        entry["docs_out"] -= 1
        entry["bytes_out"] -= len(text.encode("utf-8"))
        entry["dropped"][reason] = entry["dropped"].get(reason, 0) + 1


def merge(parts: list[dict]) -> dict:
    """Sum nested dictionaries of counts."""
    out: dict = {}
    for part in parts:
        _add(out, part)
    return out


def _add(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict):
            _add(into.setdefault(key, {}), value)
        else:
            into[key] = into.get(key, 0) + value


def finalize(stats: dict) -> dict:
    """Add totals over languages. Nothing about the run (task count, hosts, times) goes in: stats.json is an
    output, identical whatever the number of tasks; those facts are in the completion record."""
    totals = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "dropped": {}}
    for entry in stats.get("languages", {}).values():
        for key in ("docs_in", "bytes_in", "docs_out", "bytes_out"):
            totals[key] += entry[key]
        _add(totals["dropped"], entry["dropped"])
    stats = {**new_stats(), **stats}
    stats["totals"] = totals
    stats["totals"]["rejected"] = sum(stats["rejected"].values())
    return stats


def render(stats: dict, num_tasks: int | None = None) -> str:
    """The table printed at the end of the stage and by `graine status` (with the task count, which the
    completion record holds), and written to summary.txt (without: an output must not depend on it)."""
    t = stats["totals"]
    tasks = f", {num_tasks} tasks" if num_tasks else ""
    lines = [f"clean: {t['docs_out']:,} of {t['docs_in']:,} documents kept "
             f"({t['bytes_out'] / 1e6:.1f} of {t['bytes_in'] / 1e6:.1f} MB), {t['rejected']:,} unreadable records"
             + tasks,
             f"{'lang':<8}{'docs in':>10}{'kept':>10}{'MB out':>9}  top drop reasons"]
    langs = sorted(stats["languages"].items(), key=lambda kv: (-kv[1]["docs_out"], kv[0]))
    for lang, e in langs:
        reasons = sorted(e["dropped"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        lines.append(f"{lang:<8}{e['docs_in']:>10,}{e['docs_out']:>10,}{e['bytes_out'] / 1e6:>9.2f}  "
                     + ", ".join(f"{r} {n}" for r, n in reasons))
    if t["dropped"]:
        lines.append("dropped: " + ", ".join(f"{r} {n}" for r, n in sorted(t["dropped"].items())))
    if stats.get("sources"):
        lines.append(render_sources(stats["sources"]))
    if stats["rejected"]:
        lines.append("unreadable: " + ", ".join(f"{r} {n}" for r, n in sorted(stats["rejected"].items()))
                     + " (see rejects.jsonl)")
    if stats["pii"]:
        lines.append("PII redacted: " + ", ".join(f"{k} {n}" for k, n in sorted(stats["pii"].items())))
    return "\n".join(lines)


def render_sources(sources: dict) -> str:
    """Per source: documents in and kept, and for a declared language the model's agreement."""
    lines = [f"{'source':<16}{'docs in':>10}{'kept':>10}{'MB out':>9}  language id on declared languages"]
    for name, e in sorted(sources.items()):
        agreement = ""
        if e.get("lid_top"):
            top = sorted(e["lid_top"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            agreement = (f"top labels {', '.join(f'{k} {n}' for k, n in top)}; confident other "
                         f"{e.get('confident_other', 0)}, flagged {e.get('flagged', 0)}")
        lines.append(f"{name:<16}{e['docs_in']:>10,}{e['docs_out']:>10,}{e['bytes_out'] / 1e6:>9.2f}  {agreement}".rstrip())
    return "\n".join(lines)


def render_steps(steps: dict, order: list[str]) -> str:
    """The document steps' counts, one row a step in the order they ran, with the languages it dropped most."""
    lines = [f"{'document step':<22}{'dropped':>9}{'chars':>12}{'edited':>9}{'chars cut':>12}  top languages dropped"]
    for name in order:
        by_lang = steps.get(name, {})
        total = merge(list(by_lang.values()))
        top = sorted(((lang, e["dropped"]) for lang, e in by_lang.items() if e.get("dropped")), key=lambda kv: (-kv[1], kv[0]))
        lines.append((f"{name:<22}{total.get('dropped', 0):>9,}{total.get('dropped_chars', 0):>12,}"
                      f"{total.get('edited', 0):>9,}{total.get('cut_chars', 0):>12,}  "
                      + ", ".join(f"{lang} {n}" for lang, n in top[:3])).rstrip())
    return "\n".join(lines)


def nothing_kept(stats: dict) -> str:
    """Why a clean stage kept no document, for its error: the drop reasons on the first line (the line a
    failed task's report shows), what to change, then the summary table."""
    t = stats["totals"]
    dropped = sorted(t["dropped"].items(), key=lambda kv: (-kv[1], kv[0]))
    rejected = sorted(stats["rejected"].items(), key=lambda kv: (-kv[1], kv[0]))
    parts = []
    if dropped:
        parts.append("dropped: " + ", ".join(f"{r} {n:,}" for r, n in dropped))
    if rejected:
        parts.append("unreadable: " + ", ".join(f"{r} {n:,}" for r, n in rejected))
    head = f"clean kept 0 of {t['docs_in']:,} documents ({'; '.join(parts) or 'no record in the inputs'})"
    found = sorted(stats["languages"].items(), key=lambda kv: (-kv[1]["docs_in"], kv[0]))
    if dropped and dropped[0][0] == "language_not_kept":
        hint = ("none is in clean.languages; the languages found: "
                + ", ".join(f"{lang} {e['docs_in']:,}" for lang, e in found[:8]))
    elif dropped:
        hint = "check clean.filters, clean.min_lang_score and clean.languages against the table below"
    else:
        hint = "no record could be read: check clean.inputs, clean.text_field and rejects.jsonl"
    return f"{head}; {hint}; nothing is published\n{render(stats)}"
