"""Text measures of the quality checks (BigScience/ROOTS style), their per-language table, the code
filter and line-level boilerplate removal.

The checks themselves are data_prep/quality/, one module each. Ratios follow the BigScience filtering
definitions: character repetition is the share of character n-gram occurrences taken by the
sqrt(#distinct) most frequent n-grams; word repetition is the share of word n-gram occurrences whose
n-gram occurs more than once. Scripts without spaces (zh, ja) are split into characters; their word
bounds count characters and their stopword and flagged-word ratios count characters covered by listed
words. The checks' parameters per language are the table of data_prep/languages.py;
`clean.filters.<lang>.<param>` overrides them.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources

import numpy as np

from data_prep.minhash import code_points, rolling_hashes

CJK_LANGS = frozenset({"zh", "ja", "yue", "wuu"})
PUNCT = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum()) + \
    "«»“”„‘’…–—¿¡。，、；：！？（）《》「」『』【】·•|،؛؟।॥"
# Punctuation, symbols and digits (emoji included) but not whitespace or letters of any script.
_SPECIAL = re.compile("[!-/:-@\\[-`{-~\u00a1-\u00bf\u00d7\u00f7\u2010-\u205e\u2100-\u2bff\u3000-\u303f"
                      "\uff01-\uff0f\uff1a-\uff20\U0001f000-\U0001faff0-9\ufffd]")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_P = re.escape(PUNCT)
# PUNCT at either end of a whitespace-separated token (after a space or the start, or running to a
# space or the end): removing it before splitting gives the words that stripping each token would,
# and a token of PUNCT only disappears. The pattern starts with a character class, which the regex
# engine skips to: ~2x faster than a Python strip per token.
_TOKEN_EDGE_PUNCT = re.compile(f"[{_P}](?:(?<=\\s.)[{_P}]*|(?<=^.)[{_P}]*|[{_P}]*(?!\\S))")
# zh/ja words: one CJK character, or a run of other non-space characters stripped of PUNCT at both
# ends (it starts and ends outside PUNCT).
_CJK_WORD = re.compile(f"[{_CJK}]|[^\\s{_P}{_CJK}](?:[^\\s{_CJK}]*[^\\s{_P}{_CJK}])?")


@dataclass(frozen=True)
class CodeParams:
    min_chars: float = 50
    max_bytes: float = 1_000_000
    max_line_length: float = 1000  # minified or generated files
    max_mean_line_length: float = 100
    min_alnum: float = 0.25  # share of letters and digits among all characters


@functools.cache
def _word_list(name: str) -> dict[str, frozenset[str]]:
    data = json.loads(resources.files("data_prep.resources").joinpath(name).read_text(encoding="utf-8"))
    return {lang: frozenset(w.lower() for w in words) for lang, words in data.items() if lang != "_about"}


def stopwords(lang: str) -> frozenset[str]:
    return _word_list("stopwords.json").get(lang, frozenset())


def flagged_words(lang: str) -> frozenset[str]:
    return _word_list("flagged_words.json").get(lang, frozenset())


# ------------------------------------------------------------------------------------------- words
def split_words(text: str, lang: str) -> list[str]:
    """Lower-cased words without surrounding punctuation; characters for zh/ja."""
    if lang in CJK_LANGS:  # one regex: stripping each character in Python took twice as long
        return _CJK_WORD.findall(text.lower())
    return _TOKEN_EDGE_PUNCT.sub("", text.lower()).split()


def char_repetition_ratio(text: str, n: int) -> float:
    cps = code_points(text)
    if len(cps) < n:
        return 0.0
    # Equal n-grams are runs in the sorted hashes; their lengths are the counts.
    hashes = np.sort(rolling_hashes(cps, n))
    starts = np.flatnonzero(np.concatenate(([True], hashes[1:] != hashes[:-1])))
    counts = np.sort(np.diff(np.append(starts, len(hashes))))
    top = int(np.sqrt(len(counts)))
    return float(counts[len(counts) - top:].sum() / len(hashes))


def word_repetition_ratio(words: list[str], n: int) -> float:
    if len(words) < n:
        return 0.0
    total = len(words) - n + 1
    if len(set(zip(*(words[i:] for i in range(n))))) == total:  # no repeat: the common case, and cheaper
        return 0.0
    counts = Counter(zip(*(words[i:] for i in range(n))))
    return sum(c for c in counts.values() if c > 1) / total


def special_ratio(text: str) -> float:
    return len(_SPECIAL.findall(text)) / max(len(text) - text.count(" "), 1)


def list_ratio(words: list[str], text: str, listed: frozenset[str], lang: str) -> float:
    """Share of words (characters for zh/ja) that belong to a word list."""
    if lang in CJK_LANGS:
        covered = sum(text.count(w) * len(w) for w in listed)
        return covered / max(sum(map(len, words)), 1)
    return sum(map(listed.__contains__, words)) / max(len(words), 1)


# -------------------------------------------------------------------------------------------- code
class CodeFilter:
    """Checks for source files: size, minified or generated content, share of alphanumerics."""

    def __init__(self, params: CodeParams):
        self.p = params

    def __call__(self, text: str) -> tuple[bool, str]:
        p = self.p
        if len(text.strip()) < p.min_chars:
            return False, "code_too_short"
        if len(text.encode("utf-8")) > p.max_bytes:
            return False, "code_too_large"
        lengths = [len(line) for line in text.split("\n")]
        if max(lengths) > p.max_line_length or sum(lengths) / len(lengths) > p.max_mean_line_length:
            return False, "code_long_lines"
        if sum(c.isalnum() for c in text) / len(text) < p.min_alnum:
            return False, "code_low_alnum"
        return True, ""


# ------------------------------------------------------------------------------------- boilerplate
@functools.lru_cache(maxsize=1)
def _boilerplate() -> re.Pattern[str]:
    data = json.loads(resources.files("data_prep.resources").joinpath("boilerplate.json").read_text("utf-8"))
    return re.compile("|".join(f"(?:{p})" for p in data["patterns"]), re.IGNORECASE)


def remove_boilerplate(text: str) -> tuple[str, int]:
    """Drop lines that are web boilerplate or hold no letter or digit; returns (text, lines removed)."""
    pattern = _boilerplate()
    kept, removed = [], 0
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped and (not any(c.isalnum() for c in stripped)
                         or (len(stripped) < 200 and pattern.fullmatch(stripped))):
            removed += 1
            continue
        kept.append(line)
    return ("\n".join(kept).strip() if removed else text), removed
