"""The source catalogue of the clean stage: `clean.sources`, the corpus described as named sources.

An entry is `{name, paths, lang, weight | multiplier, filters, declared_language_policy}`. `clean.inputs`
is the shorthand for one source named `inputs` (DEFAULT_SOURCE) with no declared language. Every file
belongs to exactly one source, and so does every document: clean writes the source's name into each
record (`source_name`) when the run has a catalogue, counts per source in stats.json (`sources`), and
preprocess makes one dataset per language and source of it (`preprocess.split_by_source`), scaled by the
source's weight or multiplier. A run with only `clean.inputs` writes neither, as before the catalogue;
its documents are read as the source `inputs`.

A declared language wins over language id: its documents are recorded under it whatever the model says
(lid.176 has no label for many of BLOOM's languages, e.g. Wolof), are never dropped by clean.languages or
the language-score check, and language id only measures agreement: the declared language's probability
(`lang_score`) and the model's top label (`lid_top`, `lid_top_score`). `declared_language_policy` says what
a confident disagreement does (another label's probability >= clean.disagreement_threshold): keep it,
flag it (`lang_flag` in the record, counted), or drop it (reason `declared_language_disagrees`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from core.config import param
from core.errors import ConfigError
from data_prep.code_languages import CODE_LANGUAGES
from data_prep.langid import check_languages
from data_prep.quality import check_overrides

DEFAULT_SOURCE = "inputs"  # the name of the clean.inputs shorthand's source
SOURCE_FIELD = "source_name"  # the clean record field naming the document's source
Policy = Literal["keep", "flag", "drop_if_confident_other"]
DISAGREES = "declared_language_disagrees"  # the drop reason of drop_if_confident_other
# A name becomes part of dataset file names (`fr__wiki`) and of stats keys: letters, digits, . _ -
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(kw_only=True)
class SourceConfig:
    name: str = param("", help="the source's name: in each clean record (source_name), stats and dataset names")
    paths: list[str] = param(default_factory=list, help="paths or globs of the source's raw documents")
    lang: str = param("", help="declared language of the source: an ISO 639 code of its prose (a lid.176 label or a "
                      "language of data_prep/languages.py), or a programming language of data_prep/code_languages.py "
                      "(every file of the source is then code of it); empty: identified per document")
    # Read by preprocess's blend only, so out of clean's hash (preprocess hashes them: blend_identity).
    weight: float | None = param(None, gt=0.0, le=1.0, hashed=False, help="the source's share of the preprocess blend")
    multiplier: float | None = param(None, gt=0.0, hashed=False, help="factor on the blend weights of the source's datasets")
    filters: dict[str, dict[str, float]] = param(default_factory=dict, help="per-language overrides of "
                                                 "clean.filters for this source's documents")
    declared_language_policy: Policy | None = param(None, help="overrides clean.declared_language_policy")


def check_sources(sources: list[SourceConfig], inputs: list[str]) -> None:
    """ConfigError naming the entry's key and the fix for a bad catalogue (no model or file is read)."""
    names = [DEFAULT_SOURCE] if inputs else []
    shares = 0.0
    for i, src in enumerate(sources):
        key = f"clean.sources[{i}]"
        if not _NAME.fullmatch(src.name):
            raise ConfigError(f"{key}.name={src.name!r} must be 1-64 letters, digits, '.', '_' or '-' starting "
                              "with a letter or digit (it names files and datasets); e.g. name: wiki_fr")
        if src.name in names:
            why = " (the name of clean.inputs' source)" if src.name == DEFAULT_SOURCE and inputs else ""
            raise ConfigError(f"{key}.name={src.name!r} is taken{why}; give each source its own name")
        names.append(src.name)
        if not src.paths or not all(str(p).strip() for p in src.paths):
            raise ConfigError(f"{key}.paths is empty; list the source's files or globs, e.g. paths: [data/wiki/fr/*.jsonl]")
        if src.lang and src.lang not in CODE_LANGUAGES:
            try:
                check_languages([src.lang], f"{key}.lang")
            except ConfigError as exc:
                raise ConfigError(f"{exc}; a source of code declares its programming language instead, one of "
                                  f"{', '.join(CODE_LANGUAGES)}") from None
        if src.weight is not None and src.multiplier is not None:
            raise ConfigError(f"{key} sets both weight and multiplier; keep one (weight: its share of the blend, "
                              "multiplier: a factor on its α-sampled weight)")
        shares += src.weight or 0.0
        check_overrides(src.filters, f"{key}.filters")
    if shares > 1.0 + 1e-9:
        raise ConfigError(f"the weights of clean.sources sum to {shares:g}, more than 1; they are shares of the "
                          "blend: lower them")


def source_groups(sources: list[SourceConfig], inputs: list[str]) -> list[tuple[str, list[str], str]]:
    """(name, patterns, config key, declared programming language or "") of every source, for
    readers.list_catalogue."""
    groups = [(DEFAULT_SOURCE, list(inputs), "clean.inputs", "")] if inputs else []
    return groups + [(s.name, list(s.paths), f"clean.sources[{i}].paths", s.lang if s.lang in CODE_LANGUAGES else "")
                     for i, s in enumerate(sources)]


def merged_filters(base: dict[str, dict[str, float]], source: SourceConfig | None) -> dict[str, dict[str, float]]:
    """clean.filters with a source's own overrides on top, language by language."""
    if source is None or not source.filters:
        return base
    return {lang: {**base.get(lang, {}), **source.filters.get(lang, {})} for lang in {*base, *source.filters}}
