"""What a quality check is, the registry of checks by name, and their per-language parameters.

A check is a predicate over one prose document, `keep(doc: Text, p) -> bool`, registered with
`@quality_check(name, **params)`: True keeps the document, False drops it with the check's name as
the reason (counted in stats.json). `params` are the per-language parameters it reads, with their
defaults; `p` holds those of every check for the document's language: the defaults, then the row
of the language table (data_prep/languages.py), then `clean.filters.default`, then `clean.filters.<lang>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, SimpleNamespace

from core.errors import ConfigError
from data_prep.filters import CJK_LANGS, CodeParams, split_words
from data_prep.languages import language_params

# clean.quality_checks by default: the order of the checks before they were separate, cheapest first.
DEFAULT_CHECKS = ("low_lang_score", "too_few_words", "too_many_words", "special_characters", "word_repetition",
                  "char_repetition", "too_few_stopwords", "flagged_words")


# The per-language parameters of every check (`p.min_words`): a namespace, since a check added in its own
# module brings its own.
Params = SimpleNamespace


class Text:
    """A prose document as the quality checks see it: its words are split once, by the first check
    that asks, and shared by the others (a check that never asks, like the language score, costs none)."""

    __slots__ = ("text", "lang", "lang_score", "_words", "_n_words")

    def __init__(self, text: str, lang: str, lang_score: float):
        self.text, self.lang, self.lang_score = text, lang, lang_score
        self._words: list[str] | None = None
        self._n_words: int | None = None

    @property
    def words(self) -> list[str]:
        """Lower-cased words without surrounding punctuation; characters for zh/ja."""
        if self._words is None:
            self._words = split_words(self.text, self.lang)
        return self._words

    @property
    def n_words(self) -> int:
        """Words, or characters of words for scripts without spaces (CJK_LANGS)."""
        if self._n_words is None:
            self._n_words = sum(map(len, self.words)) if self.lang in CJK_LANGS else len(self.words)
        return self._n_words


@dataclass(frozen=True)
class QualityCheck:
    name: str  # its name in clean.quality_checks and the drop reason it records
    keep: Callable[[Text, Params], bool]
    params: Mapping[str, float]  # the per-language parameters it reads, with their defaults


CHECKS: dict[str, QualityCheck] = {}


def quality_check(name: str, **params: float) -> Callable:
    """Register the decorated predicate as the quality check `name` reading `params` (with defaults)."""

    def register(keep: Callable[[Text, Params], bool]) -> Callable:
        if name in CHECKS:
            raise ValueError(f"two quality checks are named {name!r} ({CHECKS[name].keep.__module__} and "
                             f"{keep.__module__}); rename one")
        for param, default in params.items():
            other = next((c for c in CHECKS.values() if c.params.get(param, default) != default), None)
            if other is not None:
                raise ValueError(f"quality check {name!r} declares {param}={default}, {other.name!r} "
                                 f"{param}={other.params[param]}; a parameter has one default")
        CHECKS[name] = QualityCheck(name, keep, MappingProxyType(dict(params)))
        return keep

    return register


def check_names() -> list[str]:
    """The registered checks: the default ones in their order, then the others as registered."""
    return [*(name for name in DEFAULT_CHECKS if name in CHECKS), *(name for name in CHECKS if name not in DEFAULT_CHECKS)]


def check_quality_checks(names: list[str], key: str = "clean.quality_checks") -> None:
    """ConfigError naming the key, the bad name and the valid ones, unless each name is a registered
    check listed once."""
    valid = check_names()
    for i, name in enumerate(names):
        if name not in CHECKS:
            raise ConfigError(f"{key} holds {name!r}, which is not a quality check; valid names: "
                              f"{', '.join(valid)} (one module each in data_prep/quality/)")
        if name in names[:i]:
            raise ConfigError(f"{key} lists {name!r} twice; a check runs once: remove one")


def param_names() -> list[str]:
    """Every parameter of the registered checks (in the order of check_names)."""
    return list(dict.fromkeys(p for name in check_names() for p in CHECKS[name].params))


def params_for(lang: str, overrides: dict[str, dict[str, float]], default_min_lang_score: float) -> Params:
    """The checks' defaults and `clean.min_lang_score`, then the table row of `lang`, then
    `clean.filters.default`, then `clean.filters.<lang>`."""
    values = {p: v for name in check_names() for p, v in CHECKS[name].params.items()}
    values.update({"min_lang_score": default_min_lang_score, **language_params(lang)})
    values.update(overrides.get("default", {}))
    values.update(overrides.get(lang, {}))
    return Params(**values)


def check_overrides(overrides: dict[str, dict[str, float]], key: str = "clean.filters") -> None:
    """Reject unknown parameter names in `clean.filters` (or a source's `filters`, at `key`) before any task starts."""
    text_names = param_names()
    code_names = [f.name for f in dataclasses.fields(CodeParams)]
    for lang, values in overrides.items():
        valid = code_names if lang == "code" else text_names
        for name in values:
            if name not in valid:
                raise ConfigError(f"unknown key '{key}.{lang}.{name}'; valid keys: {', '.join(valid)}")


class QualityFilter:
    """The checks `names` (default: DEFAULT_CHECKS), in order, for one language: (keep, reason) of a
    document, the reason being the name of the first check that drops it. The clean stage runs each
    check over a batch instead (data_prep/clean_steps.py); this is one document through all of them."""

    def __init__(self, lang: str, params: Params, names: list[str] | tuple[str, ...] = DEFAULT_CHECKS):
        self.lang, self.p = lang, params
        self.checks = [CHECKS[name] for name in names]

    def __call__(self, text: str, lang_score: float) -> tuple[bool, str]:
        doc = Text(text, self.lang, lang_score)
        for check in self.checks:
            if not check.keep(doc, self.p):
                return False, check.name
        return True, ""
