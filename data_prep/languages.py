"""The natural languages graine knows by name: BLOOM's 46 and the others with parameters of their own.

One row per language code: its name, BLOOM model card group, scripts (ISO 15924), whether fastText's
lid.176 has it as a label, and its row of quality-check parameters (`clean.filters.<lang>` overrides
them; data_prep/quality/base.py: params_for). Word segmentation and the word lists are not columns
but read from where the checks take them, so the table cannot disagree with what runs: character-based
for the scripts without spaces (`filters.CJK_LANGS`), the stopword and flagged-word lists of
data_prep/resources/. A check whose list a language lacks passes every document of it (said in the
row's note), since a made-up list would drop good text.

BLOOM's model card counts 46 natural languages, Chinese twice (simplified and traditional). graine
has one code for Chinese, `zh`, with scripts Hans and Hant: lid.176 returns `zh` for both and the
checks treat both alike, so `clean.languages: bloom` expands to 45 codes that are the card's 46
languages (`BLOOM_CARD_COUNT`, the sum of the rows' scripts).

Codes are ISO 639-1, or ISO 639-2/3 where none exists (fon, nso, tum), as lid.176's labels are.
`python -m data_prep.languages` prints the table as markdown (the README's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from data_prep.filters import CJK_LANGS, flagged_words, stopwords

BLOOM = "bloom"  # the value of clean.languages that stands for BLOOM's languages
BLOOM_CARD_COUNT = 46  # natural languages on BLOOM's model card (zh simplified and traditional as two)
GROUPS = ("Niger-Congo", "Indic", "other")  # the model card's grouping


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, or 639-2/3 where none: documents' `lang` and the key of clean.filters
    name: str
    group: str  # the BLOOM model card's group (GROUPS); "" for a language outside BLOOM
    scripts: tuple[str, ...]  # ISO 15924
    lid176: bool  # a label of lid.176 (tests/data_prep/test_languages.py checks it against the model)
    params: Mapping[str, float] = field(default_factory=dict)  # its row of the quality checks' parameters
    note: str = ""  # why the row differs from the defaults, or which check cannot judge it

    @property
    def bloom(self) -> bool:
        return bool(self.group)

    @property
    def segmentation(self) -> str:
        """How the quality checks split words: `character` (word counts are characters) or `whitespace`."""
        return "character" if self.code in CJK_LANGS else "whitespace"

    @property
    def has_stopwords(self) -> bool:
        return bool(stopwords(self.code))

    @property
    def has_flagged_words(self) -> bool:
        return bool(flagged_words(self.code))


# lid.176 has no label for these: its score says nothing about them, so the language-score check is
# off (their documents come from sources that declare the language, clean.sources).
_UNSEEN = {"min_lang_score": 0.0}
_UNSEEN_NOTE = "not a lid.176 label: language-score check off (declare the source's language)"
# Bantu languages written conjunctively (subject, object and tense prefixes joined to the verb), and
# the agglutinative Dravidian languages and Basque: fewer, longer words per sentence.
_FEW_WORDS = 15
_CONJUNCTIVE = "conjunctive writing: fewer, longer words (min_words 15)"
_AGGLUTINATIVE = "agglutinative: fewer, longer words (min_words 15)"


def _lang(code: str, name: str, group: str, script: str | tuple[str, ...], lid176: bool = True,
          note: str = "", **params: float) -> Language:
    scripts = (script,) if isinstance(script, str) else script
    if not lid176:
        params = {**_UNSEEN, **params}
        note = "; ".join(filter(None, [_UNSEEN_NOTE, note]))
    return Language(code, name, group, scripts, lid176, MappingProxyType(params), note)


NC, IN, OT = GROUPS
_ROWS = (
    # Niger-Congo: all written in Latin script; most are not lid.176 labels.
    _lang("ak", "Akan", NC, "Latn", lid176=False),
    _lang("bm", "Bambara", NC, "Latn", lid176=False),
    _lang("fon", "Fon", NC, "Latn", lid176=False),
    _lang("ig", "Igbo", NC, "Latn", lid176=False),
    _lang("ki", "Kikuyu", NC, "Latn", lid176=False, note=_CONJUNCTIVE, min_words=_FEW_WORDS),
    _lang("lg", "Luganda", NC, "Latn", lid176=False, note=_CONJUNCTIVE, min_words=_FEW_WORDS),
    _lang("ln", "Lingala", NC, "Latn", lid176=False),
    _lang("nso", "Northern Sotho", NC, "Latn", lid176=False),
    _lang("ny", "Chi Chewa", NC, "Latn", lid176=False, note=_CONJUNCTIVE, min_words=_FEW_WORDS),
    _lang("rn", "Kirundi", NC, "Latn", lid176=False, note=_CONJUNCTIVE, min_words=_FEW_WORDS),
    _lang("rw", "Kinyarwanda", NC, "Latn", lid176=False, note=_CONJUNCTIVE, min_words=_FEW_WORDS),
    _lang("sn", "Chi Shona", NC, "Latn", lid176=False, note=_CONJUNCTIVE, min_words=_FEW_WORDS),
    _lang("st", "Sesotho", NC, "Latn", lid176=False),
    _lang("sw", "Swahili", NC, "Latn", min_stopwords=0.1, min_lang_score=0.4,
          note="lid.176 gives clean Swahili prose ~0.45: min_lang_score 0.4"),
    _lang("tn", "Setswana", NC, "Latn", lid176=False),
    _lang("ts", "Xitsonga", NC, "Latn", lid176=False),
    _lang("tum", "Chi Tumbuka", NC, "Latn", lid176=False, note=_CONJUNCTIVE, min_words=_FEW_WORDS),
    _lang("tw", "Twi", NC, "Latn", lid176=False),
    _lang("wo", "Wolof", NC, "Latn", lid176=False),
    _lang("xh", "isiXhosa", NC, "Latn", lid176=False, note=_CONJUNCTIVE, min_words=_FEW_WORDS),
    _lang("yo", "Yoruba", NC, "Latn", min_lang_score=0.0,
          note="a lid.176 label, but the model misses real Yoruba (UDHR article 1: ga 0.26): language-score "
               "check off (declare the source's language)"),
    _lang("zu", "isiZulu", NC, "Latn", lid176=False, note=_CONJUNCTIVE, min_words=_FEW_WORDS),
    # Indic: own scripts, which lid.176 tells apart well; Devanagari and Bengali script are shared.
    _lang("as", "Assamese", IN, "Beng", min_lang_score=0.5,
          note="shares its script with Bengali: min_lang_score 0.5"),
    _lang("bn", "Bengali", IN, "Beng", min_stopwords=0.1, min_lang_score=0.7),
    _lang("gu", "Gujarati", IN, "Gujr", min_lang_score=0.7),
    _lang("hi", "Hindi", IN, "Deva", min_stopwords=0.2, min_lang_score=0.7),
    _lang("kn", "Kannada", IN, "Knda", min_lang_score=0.7, note=_AGGLUTINATIVE, min_words=_FEW_WORDS),
    _lang("ml", "Malayalam", IN, "Mlym", min_lang_score=0.7, note=_AGGLUTINATIVE, min_words=_FEW_WORDS),
    _lang("mr", "Marathi", IN, "Deva", min_lang_score=0.5, note="Devanagari, near Hindi for lid.176: min_lang_score 0.5"),
    _lang("ne", "Nepali", IN, "Deva", min_lang_score=0.5, note="Devanagari, near Hindi for lid.176: min_lang_score 0.5"),
    _lang("or", "Odia", IN, "Orya", min_lang_score=0.7),
    _lang("pa", "Punjabi", IN, "Guru", min_lang_score=0.7),
    _lang("ta", "Tamil", IN, "Taml", min_lang_score=0.7, note=_AGGLUTINATIVE, min_words=_FEW_WORDS),
    _lang("te", "Telugu", IN, "Telu", min_lang_score=0.7, note=_AGGLUTINATIVE, min_words=_FEW_WORDS),
    _lang("ur", "Urdu", IN, "Arab", min_stopwords=0.1, min_lang_score=0.7),
    # The others of BLOOM; the rows of ar, en, es, fr, pt, vi and zh are graine's from before the table.
    _lang("ar", "Arabic", OT, "Arab", min_stopwords=0.08, min_lang_score=0.7, max_special=0.2,
          note="clitics (و, ال) hide stopwords: cut-off 0.08"),
    _lang("ca", "Catalan", OT, "Latn", min_stopwords=0.2, min_lang_score=0.7),
    _lang("en", "English", OT, "Latn", min_stopwords=0.2, min_lang_score=0.7),
    _lang("es", "Spanish", OT, "Latn", min_stopwords=0.2, min_lang_score=0.7),
    _lang("eu", "Basque", OT, "Latn", min_stopwords=0.1, min_lang_score=0.7, min_words=_FEW_WORDS,
          note="agglutinative: fewer words (min_words 15), case endings hide stopwords (cut-off 0.1)"),
    _lang("fr", "French", OT, "Latn", min_stopwords=0.2, min_lang_score=0.7),
    _lang("id", "Indonesian", OT, "Latn", min_stopwords=0.15, min_lang_score=0.7),
    _lang("pt", "Portuguese", OT, "Latn", min_stopwords=0.2, min_lang_score=0.7),
    _lang("vi", "Vietnamese", OT, "Latn", min_stopwords=0.15, min_lang_score=0.6, max_word_rep=0.35,
          note="one syllable a word: word n-grams repeat more (max_word_rep 0.35)"),
    _lang("zh", "Chinese", OT, ("Hans", "Hant"), min_words=60, min_stopwords=0.08, char_rep_n=5, max_char_rep=0.25,
          word_rep_n=10, min_lang_score=0.6,
          note="simplified and traditional: two of the card's 46; counts characters, so word bounds are larger"),
    # Outside BLOOM, with rows of their own since before the table.
    _lang("de", "German", "", "Latn", min_stopwords=0.15, min_lang_score=0.7),
    _lang("ja", "Japanese", "", "Jpan", min_words=60, min_stopwords=0.1, char_rep_n=5, max_char_rep=0.25,
          word_rep_n=10, min_lang_score=0.6, note="counts characters, so word bounds are larger"),
    _lang("ru", "Russian", "", "Cyrl", min_stopwords=0.15, min_lang_score=0.7),
    _lang("tr", "Turkish", "", "Latn", min_stopwords=0.1, min_lang_score=0.7),
)
LANGUAGES: Mapping[str, Language] = MappingProxyType({row.code: row for row in _ROWS})
BLOOM_LANGUAGES: tuple[Language, ...] = tuple(row for row in _ROWS if row.bloom)


def bloom_codes() -> list[str]:
    """The codes of BLOOM's natural languages, by group as on the model card (45 codes, 46 languages)."""
    return [row.code for row in BLOOM_LANGUAGES]


def language_params(lang: str) -> Mapping[str, float]:
    """The table's row of quality parameters for `lang`; empty (the checks' defaults) for others."""
    row = LANGUAGES.get(lang)
    return row.params if row else {}


def expand_languages(codes: list[str] | str) -> list[str]:
    """`clean.languages` with `bloom` replaced by BLOOM's codes (`bloom` or `[bloom, de]`), each code once."""
    codes = [codes] if isinstance(codes, str) else codes
    expanded = [c for code in codes for c in (bloom_codes() if code == BLOOM else [code])]
    return list(dict.fromkeys(expanded))


def render_markdown() -> str:
    """The table as the README shows it: one line per language, its parameters those it sets itself."""
    lines = ["| code | language | group | script | segmentation | lid.176 | stopwords | flagged words | parameters | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in _ROWS:
        params = ", ".join(f"{k}={v:g}" for k, v in row.params.items()) or "defaults"
        cells = [row.code, row.name, row.group or "(not BLOOM)", "+".join(row.scripts), row.segmentation,
                 "yes" if row.lid176 else "no", _listed(stopwords(row.code)), _listed(flagged_words(row.code)),
                 params, row.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _listed(words: frozenset[str]) -> str:
    return f"{len(words)} words" if words else "none: check passes"


if __name__ == "__main__":
    print(render_markdown())
