"""Normalisation switches, language id, each quality filter with a per-language parameter, boilerplate, PII."""

from __future__ import annotations

import random

import pytest

from core.errors import ConfigError
from data_prep.filters import (
    CodeFilter,
    CodeParams,
    char_repetition_ratio,
    remove_boilerplate,
    split_words,
)
from data_prep.langid import LanguageIdentifier
from data_prep.languages import LANGUAGES
from data_prep.normalize import NormalizeConfig, Normalizer
from data_prep.pii import PiiRedactor
from data_prep.quality import CHECKS, QualityFilter, check_overrides, param_names, params_for
from data_prep.synthetic import KEPT_LANGUAGES, WRONG_LANGUAGES, TextGenerator


def text(lang: str, words: int = 120, seed: int = 0) -> str:
    return TextGenerator(random.Random(seed), lang).document(words)


# ----------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("switch, raw, on, off", [
    ("nfc", "cafe\u0301", "café", "cafe\u0301"),
    ("fix_mojibake", "Le cafÃ© est trÃ¨s bon", "Le café est très bon", "Le cafÃ© est trÃ¨s bon"),
    ("strip_control", "a\x00b\x07c\ufeff", "abc", "a\x00b\x07c\ufeff"),
    ("whitespace", "  a   b\t\tc  \n\n\n\n\nd  ", "a b c\n\n\nd", "  a   b\t\tc  \n\n\n\n\nd  "),
])
def test_normalisation_switches(switch, raw, on, off):
    flags = {"nfc": False, "fix_mojibake": False, "strip_control": False, "whitespace": False}
    assert Normalizer(NormalizeConfig(**{**flags, switch: True}))(raw) == on
    assert Normalizer(NormalizeConfig(**flags))(raw) == off


def test_code_keeps_indentation():
    code = "def f():\n    if x:\n        return  1   \n"
    assert Normalizer(NormalizeConfig())(code, code=True) == "def f():\n    if x:\n        return  1"


def test_mojibake_repair_leaves_correct_text_alone():
    n = Normalizer(NormalizeConfig())
    for lang in KEPT_LANGUAGES:
        t = text(lang)
        assert n(t) == n(n(t))
    assert n.counts["mojibake_fixed"] == 0


# ------------------------------------------------------------------------------------ language id
def test_language_id_on_synthetic_text():
    ident = LanguageIdentifier()
    for lang in KEPT_LANGUAGES + WRONG_LANGUAGES:
        for seed in range(5):
            got, score = ident(text(lang, 80, seed))
            assert got == lang and score > 0.9, (lang, got, score)


# ---------------------------------------------------------------------------------------- filters
def reason(lang: str, doc: str, score: float = 1.0, **override) -> str:
    return QualityFilter(lang, params_for(lang, {lang: override} if override else {}, 0.5))(doc, score)[1]


@pytest.mark.parametrize("lang", KEPT_LANGUAGES)
def test_clean_text_passes(lang):
    for seed in range(10):
        assert reason(lang, text(lang, 80, seed)) == "", (lang, seed)


def test_each_filter_with_a_per_language_parameter():
    doc = text("fr")
    assert reason("fr", doc, score=0.5) == "low_lang_score"
    assert reason("fr", doc, score=0.5, min_lang_score=0.4) == ""
    assert reason("fr", doc, min_words=10_000) == "too_few_words"
    assert reason("fr", doc, max_words=10) == "too_many_words"
    assert reason("fr", doc, max_special=0.0) == "special_characters"
    assert reason("fr", doc, max_word_rep=-1) == "word_repetition"
    assert reason("fr", doc, max_char_rep=0.0) == "char_repetition"
    assert reason("fr", doc, min_stopwords=0.99) == "too_few_stopwords"
    assert reason("fr", doc + " porno xxx", max_flagged=0.0) == "flagged_words"


def test_filters_catch_low_quality_text():
    sentence = TextGenerator(random.Random(1), "en").sentence()
    assert reason("en", " ".join([sentence] * 20)) == "word_repetition"
    assert reason("en", "Hello there, friend.") == "too_few_words"
    soup = " ".join("#$%&*@!" + str(i) for i in range(60)) + " the and of"
    assert reason("en", soup) == "special_characters"
    spam = " ".join(f"{sentence} porn xxx casino" for _ in range(6))
    assert reason("en", spam) in ("flagged_words", "word_repetition")
    assert reason("en", " ".join(["lorem ipsum dolor sit amet"] * 2 + ["".join(w) for w in zip("bcdfghjklmnp" * 5, "aeiouy" * 10, "rstvz" * 12)])) == "too_few_stopwords"
    assert char_repetition_ratio("abcdefghij" * 50, 10) > CHECKS["char_repetition"].params["max_char_rep"]


def test_cjk_counts_characters():
    assert len(split_words("我们今天去学校。", "zh")) == 7
    assert split_words("Hello, world!", "en") == ["hello", "world"]
    assert reason("zh", text("zh", 40)[:30]) == "too_few_words"
    assert reason("zh", text("zh", 120)) == ""


def test_code_filter():
    f = CodeFilter(CodeParams())
    assert f("def f(x):\n    return x * 2\n\n\nprint(f(3))  # a small but real program\n") == (True, "")
    assert f("var a=" + ",".join(f"x{i}=1" for i in range(400)))[1] == "code_long_lines"
    assert f("x = 1")[1] == "code_too_short"
    assert f("\n".join(["{}[]();;;,,,...=+-*/<>"] * 10))[1] == "code_low_alnum"


def test_unknown_override_names_the_key():
    with pytest.raises(ConfigError, match="clean.filters.fr.min_wordz'; valid keys: min_lang_score, min_words, "):
        check_overrides({"fr": {"min_wordz": 3}})
    with pytest.raises(ConfigError, match="clean.filters.code.min_words'; valid keys: min_chars, max_bytes"):
        check_overrides({"code": {"min_words": 3}})
    check_overrides({"default": {"min_words": 3}, "code": {"min_chars": 5}})


def test_parameters_defaults_then_table_then_overrides():
    defaults = {p: v for check in CHECKS.values() for p, v in check.params.items()}
    assert vars(params_for("xx", {"default": {"min_words": 3}}, 0.42)) == {**defaults, "min_words": 3, "min_lang_score": 0.42}
    zh = params_for("zh", {"default": {"min_words": 3, "max_words": 9}, "zh": {"max_words": 7}}, 0.42)
    assert (zh.min_words, zh.max_words, zh.char_rep_n, zh.min_lang_score) == (3, 7, 5, 0.6)
    assert {p for row in LANGUAGES.values() for p in row.params} <= set(param_names())


def test_boilerplate_lines_removed():
    body = text("en", 60)
    doc = f"Accept all cookies\nHome | News | Contact\n{body}\n-----\nCopyright © 2021 Example Ltd. All rights reserved."
    cleaned, removed = remove_boilerplate(doc)
    assert cleaned == body.strip() and removed == 4


# -------------------------------------------------------------------------------------------- PII
@pytest.mark.parametrize("raw, tag", [
    ("write to jean.dupont@example.fr today", "<EMAIL>"),
    ("the host 192.168.10.254 answered", "<IP_ADDRESS>"),
    ("call +33 6 12 34 56 78 now", "<PHONE>"),
    ("call (555) 123-4567 now", "<PHONE>"),
    ("key AKIAIOSFODNN7EXAMPLE here", "<SECRET>"),
    ("token ghp_" + "a1" * 18 + " here", "<SECRET>"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "<SECRET>"),
])
def test_pii_tags(raw, tag):
    redactor = PiiRedactor()
    out = redactor(raw)
    assert tag in out and sum(redactor.counts.values()) == 1


def test_pii_leaves_numbers_and_dates():
    raw = "In 1998, 3 500 000 people (12.5%) voted on 2023-05-12; version 1.2.3 shipped."
    assert PiiRedactor()(raw) == raw


# Words of each demo language (data_prep.synthetic.KEPT_LANGUAGES, plus ja and th) whose letter touching
# the PII is not ASCII: before, in, after. Chinese, Japanese and Thai are written without spaces; in the
# other scripts a missing space is a common typo. English letters are ASCII, which stay part of an
# address (`call+1 555...` is not a phone): English glues with punctuation instead.
GLUED = {
    "en": ("Contact us —", "— today"),
    "fr": ("Écrivez à", "à partir de lundi"),
    "es": ("Escriba aquí", "él responde"),
    "de": ("Mit freundlichem Gruß", "über uns"),
    "pt": ("Fale com você", "é rápido"),
    "ru": ("Пишите нам", "или позвоните"),
    "ar": ("راسلنا على", "أو اتصل"),
    "zh": ("请联系", "获取详情"),
    "hi": ("हमसे संपर्क", "पर लिखें"),
    "vi": ("Liên hệ", "để biết thêm"),
    "ja": ("詳しくは", "までご連絡ください"),
    "th": ("ติดต่อ", "ได้ทุกวัน"),
}
PII_VALUES = [("jean.dupont@example.org", "<EMAIL>"), ("+33 6 12 34 56 78", "<PHONE>"),
              ("138-0013-8000", "<PHONE>"), ("192.168.10.254", "<IP_ADDRESS>"),
              ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "<IP_ADDRESS>"), ("AKIAIOSFODNN7EXAMPLE", "<SECRET>")]


def test_pii_glued_to_every_demo_language():
    assert set(KEPT_LANGUAGES) <= set(GLUED)
    for lang, (before, after) in GLUED.items():
        for value, tag in PII_VALUES:
            redactor = PiiRedactor()
            body = text(lang, 30) if lang not in ("ja", "th") else ""
            raw = f"{body}\n{before}{value}{after}\n{body}"
            assert redactor(raw) == f"{body}\n{before}{tag}{after}\n{body}", (lang, value)
            assert sum(redactor.counts.values()) == 1, (lang, value)


def test_pii_boundaries_in_latin_text_unchanged():
    """ASCII letters and digits still bind to a candidate: no new match inside words, codes or numbers."""
    for raw in ["ref:callme+33 6 12 34 56 78x", "ID12-34-56-78A", "tel0612345678", "v1.2.3.4.5",
                "key AKIAIOSFODNN7EXAMPLEX and XAKIAIOSFODNN7EXAMPLE", "skip_sk-abcdefghijklmnopqrstuvwxyz",
                "a2001:0db8:85a3:0000:0000:8a2e:0370:7334", "x_jean@example.org9"]:
        assert PiiRedactor()(raw) == raw
