"""The clean stage's per-document work as a list of steps: quality checks named, ordered and configured by
`clean.quality_checks`, a check added as one module, each step's counts; rejected names fail at load."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from core.errors import ConfigError
from data_prep.clean import CleanConfig, DocumentCleaner, run_locally
from data_prep.clean_stats import new_stats
from data_prep.jsonl import read_jsonl
from data_prep.quality import CHECKS, DEFAULT_CHECKS, Params, Text, check_names, quality_check
from data_prep.readers import Document
from data_prep.synthetic import KEPT_LANGUAGES, TextGenerator
from pipeline.cli import main
from pipeline.config import RunConfig, load_config

SENTENCE = TextGenerator(random.Random(1), "en").sentence()
REPEATED = " ".join([SENTENCE] * 20)  # fails low_lang_score (first by default), then word_repetition


def document(key: int, text: str) -> Document:
    return Document(id=f"doc-{key}", text=text, source="web.jsonl", line=key, key=key)


def prose(lang: str, seed: int, words: int = 150) -> str:
    return TextGenerator(random.Random(seed), lang).document(words)


def judge(docs: list[Document], **clean) -> list[tuple[str, str]]:
    """(language, drop reason) of each document, in one batch."""
    cleaner = DocumentCleaner(CleanConfig(languages=["en", "fr"], **clean), new_stats())
    return [(lang, reason) for _, lang, reason in cleaner.batch(docs)]


# ------------------------------------------------------------------------------------------ config
def test_default_order_is_that_of_the_former_if_chain():
    assert CleanConfig().quality_checks == list(DEFAULT_CHECKS) == [
        "low_lang_score", "too_few_words", "too_many_words", "special_characters", "word_repetition",
        "char_repetition", "too_few_stopwords", "flagged_words"]
    assert check_names() == list(DEFAULT_CHECKS)  # every module of data_prep/quality/ is one of them


@pytest.mark.parametrize("override, message", [
    ("clean.quality_checks=[too_few_words, too_few_word]",
     "clean.quality_checks holds 'too_few_word', which is not a quality check; valid names: low_lang_score, "
     "too_few_words, too_many_words, special_characters, word_repetition, char_repetition, too_few_stopwords, "
     "flagged_words (one module each in data_prep/quality/)"),
    ("clean.quality_checks=[flagged_words, too_few_words, flagged_words]",
     "clean.quality_checks lists 'flagged_words' twice; a check runs once: remove one"),
    ("clean.filters={fr: {min_wordz: 3}}", "unknown key 'clean.filters.fr.min_wordz'; valid keys: min_lang_score, "),
])
def test_bad_checks_fail_when_the_config_is_loaded(override, message):
    with pytest.raises(ConfigError) as failure:
        load_config(None, [override])
    assert str(failure.value).startswith(message)


def test_cli_refuses_an_unknown_check_before_running(capsys):
    assert main(["run", "clean", "-c", "configs/demo.yaml", "clean.quality_checks=[no_such_check]", "--dry-run"]) == 2
    assert "clean.quality_checks holds 'no_such_check'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the steps
def test_the_order_given_decides_the_reason_not_the_fate():
    docs = [document(1, REPEATED), document(2, prose("en", 2))]
    assert judge(docs) == [("en", "low_lang_score"), ("en", "")]
    assert judge(docs, quality_checks=list(reversed(DEFAULT_CHECKS))) == [("en", "word_repetition"), ("en", "")]


def test_a_check_left_out_drops_nothing():
    docs = [document(1, REPEATED), document(2, prose("en", 2))]
    without = [c for c in DEFAULT_CHECKS if c != "low_lang_score"]
    assert judge(docs, quality_checks=without) == [("en", "word_repetition"), ("en", "")]
    assert judge(docs, quality_checks=[]) == [("en", ""), ("en", "")]


def test_a_check_reads_its_parameters_per_language():
    docs = [document(1, prose("en", 3)), document(2, prose("fr", 4))]
    assert judge(docs, filters={"fr": {"min_words": 10_000}}) == [("en", ""), ("fr", "too_few_words")]
    assert judge(docs, filters={"default": {"min_words": 10_000}}, quality_checks=["too_many_words"]) == \
        [("en", ""), ("fr", "")]


def test_batches_decide_as_one_document_at_a_time(corpus):
    from data_prep.readers import Fields, list_inputs, read_file

    cfg = CleanConfig(inputs=[str(corpus / "raw" / "**" / "*")], languages=list(KEPT_LANGUAGES))
    docs = [d for f in list_inputs(cfg.inputs, cfg.code_extensions) for d in read_file(f, Fields())
            if isinstance(d, Document)][:300]
    one, many = DocumentCleaner(cfg, new_stats()), DocumentCleaner(cfg, new_stats())
    assert [one(d) for d in docs] == many.batch(docs)
    assert one.step_counts == many.step_counts and one.stats == many.stats


def test_excluded_documents_are_redacted_too():
    """Excluded documents are published (excluded/filtered-*): PII redaction runs on them as well."""
    text = prose("de", 5) + " Kontakt: jean.dupont@example.org"
    cleaner = DocumentCleaner(CleanConfig(languages=["en"]), new_stats())
    ((record, lang, reason),) = cleaner.batch([document(1, text)])
    assert (lang, reason) == ("de", "language_not_kept")
    assert "<EMAIL>" in record["text"] and "example.org" not in record["text"]
    assert cleaner.step_counts["pii"]["de"] == {"edited": 1, "cut_chars": len("jean.dupont@example.org") - len("<EMAIL>")}


def test_each_step_counts_what_it_dropped_or_cut_per_language():
    docs = [document(1, REPEATED), document(2, prose("en", 2) + "\nAccept all cookies"), document(3, "   "),
            document(4, prose("fr", 6))]
    cleaner = DocumentCleaner(CleanConfig(languages=["en", "fr"], filters={"fr": {"min_words": 10_000}}), new_stats())
    cleaner.batch(docs)
    counts = cleaner.step_counts
    assert counts["low_lang_score"] == {"en": {"dropped": 1, "dropped_chars": len(REPEATED)}}
    assert counts["too_few_words"] == {"fr": {"dropped": 1, "dropped_chars": len(docs[3].text)}}
    assert counts["empty_text"] == {"und": {"dropped": 1, "dropped_chars": 0}}  # normalised to nothing first
    assert counts["boilerplate"]["en"] == {"edited": 1, "cut_chars": len("\nAccept all cookies")}
    assert [s.name for s in cleaner.steps] == ["normalize", "empty_text", "code", "boilerplate", "langid",
                                               "language_not_kept", *DEFAULT_CHECKS, "pii"]


# --------------------------------------------------------------------- a check added in a module
@pytest.fixture
def digits_check():
    """What a new module of data_prep/quality/ holds: one predicate, registered with its parameter."""

    @quality_check("too_many_digits", max_digits=1.0)
    def keep(doc: Text, p: Params) -> bool:
        return sum(c.isdigit() for c in doc.text) / max(len(doc.text), 1) <= p.max_digits

    yield "too_many_digits"
    del CHECKS["too_many_digits"]


def run_clean(corpus: Path, out: Path, **clean) -> Path:
    cfg = RunConfig(run_dir=str(out))
    cfg.clean = CleanConfig(inputs=[str(corpus / "raw" / "**" / "*")], num_tasks=2, languages=list(KEPT_LANGUAGES),
                            **clean)
    run_locally(cfg, out / "clean", out / "work")
    return out


def kept_ids(out: Path) -> set[str]:
    return {r["id"] for p in (out / "clean").glob("part-*") for r in read_jsonl(p)}


def test_a_registered_check_runs_where_the_config_puts_it(digits_check, corpus, tmp_path, caplog):
    with pytest.raises(ConfigError, match="valid names: low_lang_score, .*, flagged_words, too_many_digits"):
        CleanConfig(quality_checks=["too_many_digit"])
    checks = [*DEFAULT_CHECKS, digits_check]
    with caplog.at_level(logging.INFO, logger="graine"):
        out = run_clean(corpus, tmp_path / "digits", quality_checks=checks, filters={"en": {"max_digits": 0.01}})
    base = run_clean(corpus, tmp_path / "base")
    stats = json.loads((out / "clean" / "stats.json").read_text())
    dropped = {lang: e["dropped"].get(digits_check, 0) for lang, e in stats["languages"].items()}
    assert dropped["en"] > 0 and sum(dropped.values()) == dropped["en"]  # its parameter is set for en only
    excluded = [r for r in read_jsonl(out / "clean" / "excluded" / "filtered-00000.jsonl.zst")
                if r["reason"] == digits_check]
    assert len(excluded) == dropped["en"] and all(r["lang"] == "en" for r in excluded)
    assert kept_ids(out) < kept_ids(base) and kept_ids(base) - kept_ids(out) <= {r["id"] for r in excluded}

    # Its counts, and every step's, are in each filter task's steps.json and in the stage's log, and agree
    # with stats.json (which is unchanged by them: its bytes are those from before the steps).
    tasks = [json.loads((out / "work" / "filter" / f"{r:05d}" / "steps.json").read_text()) for r in range(2)]
    assert tasks[0]["order"] == tasks[1]["order"] and tasks[0]["order"][-2:] == [digits_check, "pii"]
    for check in checks:
        for lang, entry in stats["languages"].items():
            in_steps = sum(t["counts"].get(check, {}).get(lang, {}).get("dropped", 0) for t in tasks)
            assert in_steps == entry["dropped"].get(check, 0), (check, lang)
    assert "steps" not in stats and "document step" not in (out / "clean" / "summary.txt").read_text()
    logged = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("clean summary"))
    row = next(line for line in logged.splitlines() if line.startswith(digits_check))
    assert row.split()[1] == str(dropped["en"]) and row.endswith(f"en {dropped['en']}")


def test_a_check_named_twice_or_a_parameter_declared_twice_is_a_bug(digits_check):
    with pytest.raises(ValueError, match="two quality checks are named 'too_many_digits'"):
        quality_check(digits_check)(lambda doc, p: True)
    with pytest.raises(ValueError, match="max_digits=0.5, 'too_many_digits' max_digits=1.0"):
        quality_check("digit_share", max_digits=0.5)(lambda doc, p: True)
    assert "digit_share" not in CHECKS
