"""The steps of the clean stage's per-document work, each run over a batch of documents in turn.

A step is a callable `step(batch: list[Draft]) -> list[str]`: for each document of the batch, the
reason to drop it, or "" to keep it. Steps that transform text (normalisation, boilerplate removal,
PII redaction) edit the `text` of the documents they are given; language id sets `lang` and
`lang_score` (for a source with a declared language: the declared one, and the model's agreement with it,
see data_prep/catalogue.py). A step is given the documents still kept that it applies to (`documents`: prose, code
or all), and the dropped ones too when `dropped_too` is set. `DocumentCleaner` (data_prep/clean.py)
builds the list from the config, one `RunQualityCheck` per name in `clean.quality_checks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from data_prep import clean_stats as report
from data_prep.code_languages import CodeLanguageFilter
from data_prep.filters import remove_boilerplate
from data_prep.langid import LanguageIdentifier
from data_prep.normalize import Normalizer
from data_prep.pii import PiiRedactor
from data_prep.quality import Params, QualityCheck, Text
from data_prep.readers import Document


@dataclass(slots=True, eq=False)
class Draft:
    """A document on its way through the steps: its text so far, language, and drop reason once dropped."""

    doc: Document
    text: str
    lang: str = "und"
    lang_score: float | None = 0.0  # None: a declared language the model has no label for
    reason: str = ""
    view: Text | None = None
    declared: str = ""  # the source's declared language ("" when identified)
    lid_top: str = ""  # declared documents: the model's top label, its probability, and the best
    lid_top_score: float = 0.0  # probability of a label other than the declared one
    other_score: float = 0.0
    flag: str = ""

    @property
    def code(self) -> bool:
        return bool(self.doc.code_lang)

    def as_text(self) -> Text:
        """The document as the quality checks see it; the same one for every check while the text and
        language stay, so that its words are split once."""
        if self.view is None or self.view.text is not self.text or self.view.lang != self.lang:
            self.view = Text(self.text, self.lang, self.lang_score)
        return self.view


class DocumentStep:
    name: str  # the key of its counts (clean_stats.count_steps)
    documents: ClassVar[Literal["prose", "code", "all"]] = "all"
    dropped_too: ClassVar[bool] = False

    def takes(self, draft: Draft) -> bool:
        if draft.reason and not self.dropped_too:
            return False
        if self.documents == "all":
            return True
        return draft.code if self.documents == "code" else not draft.code

    def __call__(self, batch: list[Draft]) -> list[str]:
        raise NotImplementedError


class Normalize(DocumentStep):
    name = "normalize"

    def __init__(self, normalizer: Normalizer):
        self.normalizer = normalizer

    def __call__(self, batch: list[Draft]) -> list[str]:
        for d in batch:
            d.text = self.normalizer(d.text, code=d.code)
        return [""] * len(batch)


class DropEmpty(DocumentStep):
    name = "empty_text"

    def __call__(self, batch: list[Draft]) -> list[str]:
        return ["" if d.text.strip() else "empty_text" for d in batch]


class CheckCode(DocumentStep):
    """Source files: recorded under the language 'code', judged by the code filter with the parameters of
    their code_lang (data_prep/code_languages.py; code_* reasons)."""

    name = "code"
    documents = "code"

    def __init__(self, code_filter: Callable[[str], CodeLanguageFilter]):
        self.code_filter = code_filter  # the filter of a source (its own `filters.code`, else clean.filters')

    def __call__(self, batch: list[Draft]) -> list[str]:
        for d in batch:
            d.lang = "code"
        return [self.code_filter(d.doc.source_name)(d.text, d.doc.code_lang)[1] for d in batch]


class RemoveBoilerplate(DocumentStep):
    name = "boilerplate"
    documents = "prose"

    def __init__(self, stats: dict):
        self.stats = stats  # counts the lines removed under boilerplate_lines

    def __call__(self, batch: list[Draft]) -> list[str]:
        for d in batch:
            d.text, removed = remove_boilerplate(d.text)
            self.stats["boilerplate_lines"] += removed
        return [""] * len(batch)


class IdentifyLanguage(DocumentStep):
    name = "langid"
    documents = "prose"

    def __init__(self, langid: LanguageIdentifier):
        self.langid = langid

    def __call__(self, batch: list[Draft]) -> list[str]:
        for d in batch:
            if d.declared:
                self._agreement(d)
            else:
                d.lang, d.lang_score = self.langid(d.text)
        return [""] * len(batch)

    def _agreement(self, d: Draft) -> None:
        """A declared language wins: the model only says how much it agrees (every label's probability)."""
        probs = self.langid.probabilities(d.text)
        d.lang, d.lang_score = d.declared, probs.get(d.declared) if probs else 0.0
        d.lid_top, d.lid_top_score = max(probs.items(), key=lambda kv: kv[1]) if probs else ("und", 0.0)
        d.other_score = max((p for label, p in probs.items() if label != d.declared), default=0.0)


class DeclaredLanguagePolicy(DocumentStep):
    """What a declared document that the model confidently gives to another language becomes: `keep`,
    `flag` (kept, `lang_flag` in its record) or `drop_if_confident_other` (clean.declared_language_policy,
    per source overridable)."""

    name = "declared_language_disagrees"
    documents = "prose"

    def __init__(self, policy: Callable[[str], str], threshold: float, stats: dict):
        self.policy, self.threshold = policy, threshold
        self.stats = stats  # counts the confident disagreements per source, whatever the policy

    def takes(self, draft: Draft) -> bool:
        return bool(draft.declared) and super().takes(draft)

    def __call__(self, batch: list[Draft]) -> list[str]:
        reasons = []
        for d in batch:
            policy = self.policy(d.doc.source_name)
            confident_other = d.other_score >= self.threshold
            if confident_other:
                entry = report.source_entry(self.stats, d.doc.source_name)
                entry["confident_other"] = entry.get("confident_other", 0) + 1
            if confident_other and policy == "flag":
                d.flag = "confident_other"
            reasons.append(self.name if confident_other and policy == "drop_if_confident_other" else "")
        return reasons


class SelectLanguages(DocumentStep):
    """Drop a document whose language is not in clean.languages, or record it under 'other' (clean.keep_other)."""

    name = "language_not_kept"
    documents = "prose"

    def __init__(self, keep: set[str], keep_other: bool):
        self.keep, self.keep_other = keep, keep_other

    def takes(self, draft: Draft) -> bool:
        return not draft.declared and super().takes(draft)  # a declared language is kept as declared

    def __call__(self, batch: list[Draft]) -> list[str]:
        reasons = []
        for d in batch:
            if d.lang in self.keep:
                reasons.append("")
            elif self.keep_other:
                d.lang = "other"  # recorded so, and judged with the quality parameters of 'other'
                reasons.append("")
            else:
                reasons.append("language_not_kept")
        return reasons


# Checks that judge the language id's confidence: a declared language is not the model's guess, so they
# skip its documents (the model may have no label for it at all).
LANGUAGE_ID_CHECKS = frozenset({"low_lang_score"})


class RunQualityCheck(DocumentStep):
    """One quality check (data_prep/quality/), with the parameters of each document's language and source."""

    documents = "prose"

    def __init__(self, check: QualityCheck, params: Callable[[str, str], Params]):
        self.name, self.check, self.params = check.name, check, params

    def takes(self, draft: Draft) -> bool:
        return not (draft.declared and self.name in LANGUAGE_ID_CHECKS) and super().takes(draft)

    def __call__(self, batch: list[Draft]) -> list[str]:
        keep, params = self.check.keep, self.params
        return ["" if keep(d.as_text(), params(d.lang, d.doc.source_name)) else self.name for d in batch]


class RedactPii(DocumentStep):
    """The excluded documents are published too (excluded/filtered-*): they are redacted as well."""

    name = "pii"
    dropped_too = True

    def __init__(self, redactor: PiiRedactor):
        self.redactor = redactor

    def __call__(self, batch: list[Draft]) -> list[str]:
        for d in batch:
            d.text = self.redactor(d.text)
        return [""] * len(batch)
