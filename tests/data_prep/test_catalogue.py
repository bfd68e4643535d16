"""The source catalogue (clean.sources): declared languages win over language id, which only measures
agreement; undeclared documents are identified as before; source names reach the stats, the tokenizer's
sample, the preprocess datasets and their blend weights; bad entries fail at config load naming the key;
outputs are byte-identical whatever clean.num_tasks.

The corpus: Wolof (declared `wo`, which lid.176 has no label for), French news (declared `fr`, with one
English article: a confident disagreement), a mixed en/fr/es/de crawl (undeclared) and code in three
languages, one file without extension.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError, DataError
from data_prep import clean as clean_stage
from data_prep import preprocess, tokenizer
from data_prep.catalogue import DISAGREES, SOURCE_FIELD, SourceConfig
from data_prep.clean import DocumentCleaner, corpus_files
from data_prep.code_languages import CODE_LANGUAGES
from data_prep.jsonl import read_jsonl
from data_prep.langid import LanguageIdentifier, model_labels
from data_prep.languages import bloom_codes
from data_prep.preprocess import blend_weights
from data_prep.sampling import build_sample
from data_prep.shards import read_documents
from pipeline.config import load_config
from tests.data_prep.test_tokenizer_corpus import make_config, make_documents, run_stage, write_clean

WOLOF = [
    "Nanga def? Maa ngi fi rekk, jërëjëf. Ndax yaa ngi sant Yàlla ci lépp li mu la may?",
    "Dama bëgg dem ca kër ga ngir gis sama yaay ak sama baay ci ngoon si, ndax dama leen namm.",
    "Xale yi dañuy jàng ca daara ja, te seen jàngalekat dafa baax lool ci ñoom ñépp.",
    "Tey mu ngi tàng lool ci Ndakaaru, waaye suba dina sedd ba tey ci guddi gi.",
    "Sama xarit dafa liggéey ca marse ba, dafay jaay jën ak ceeb ak soow bés bu nekk.",
    "Ñoo ngi lekk ceebu jën ci bëccëg, te ñu naan attaaya bu neex ci ginnaaw reer.",
    "Dakar dëkk bu mag la, am na ay mbedd yu bare ak ay waa ju bare lool lool.",
    "Bu nu demee tefes gi, dinanu féey ba noppi, sangu ci géej gi ak sunu mbokk yi.",
    "Sama rakk ju góor dafa dem Tubaab, mu ngi fa jàng ngir nekk doktoor ci ëllëg.",
    "Mbey mi dafa metti, waaye baykat yi dañuy liggéey bés bu nekk ci seeni tool.",
    "Jigéen ñi dañuy togg ci waañ wi, góor ñi dem ca ja ba ngir jënd ay lekk.",
    "Nit ku nekk war na dimbali mbokkam, ndax loolu mooy jikko ju rafet ci Senegaal.",
]
FRENCH = [
    "Le conseil municipal a voté mardi soir le budget de la ville pour l'année prochaine. Les élus de "
    "l'opposition ont dénoncé une hausse des impôts locaux, tandis que le maire a défendu des investissements "
    "nécessaires dans les écoles et les transports.",
    "La saison des vendanges a commencé plus tôt que prévu dans le Bordelais. Les viticulteurs craignent que "
    "la chaleur de l'été ait réduit les rendements, mais ils espèrent une qualité exceptionnelle pour ce "
    "millésime.",
    "Une nouvelle ligne de tramway sera mise en service au printemps. Elle reliera la gare au campus "
    "universitaire en moins de vingt minutes et devrait transporter plusieurs milliers de voyageurs chaque jour.",
]
ENGLISH_IN_FRENCH = ("The city council approved the new budget on Tuesday evening after a long debate. Members of "
                     "the opposition criticised the increase in local taxes, while the mayor defended the "
                     "investments in schools and public transport.")
MIXED = [
    ("en", "The museum will reopen next month after two years of renovation work. Visitors will be able to see "
           "the restored paintings and a new gallery dedicated to the history of the harbour and its sailors."),
    ("fr", "Les chercheurs ont découvert une nouvelle espèce de grenouille dans la forêt tropicale. Selon eux, "
           "cette découverte montre que la biodiversité de la région reste encore largement inconnue."),
    ("es", "El ayuntamiento ha anunciado la construcción de un nuevo parque en el centro de la ciudad. Las obras "
           "comenzarán en otoño y el parque tendrá jardines, fuentes y una zona de juegos para los niños."),
    ("de", "Die Stadtverwaltung hat angekündigt, dass die Bibliothek im Sommer länger geöffnet bleibt. Die Leser "
           "können dann bis zehn Uhr abends Bücher ausleihen und die neuen Arbeitsplätze im Lesesaal nutzen."),
]
CODE = {
    "stats.py": "def mean(values):\n    \"\"\"The arithmetic mean of a list of numbers.\"\"\"\n    total = sum(values)\n"
                "    return total / len(values) if values else 0.0\n\n\ndef spread(values):\n"
                "    return max(values) - min(values)\n",
    "greet.js": "// Greeting helpers for the home page\nfunction greet(name) {\n  const message = `Hello, ${name}!`;\n"
                "  console.log(message);\n  return message;\n}\n\nmodule.exports = { greet };\n",
    # No extension: a script, recognised by its shebang.
    "serve": "#!/usr/bin/env ruby\n# Serves the static files of the current folder on port 8000\nrequire 'webrick'\n\n"
             "server = WEBrick::HTTPServer.new(Port: 8000, DocumentRoot: Dir.pwd)\n"
             "trap('INT') { server.shutdown }\nserver.start\n",
}


def write_raw(root: Path) -> Path:
    raw = root / "raw"
    for folder, docs in (("wolof", [" ".join(WOLOF[i:i + 3]) for i in range(0, len(WOLOF), 3)]),
                         ("news_fr", [*FRENCH, ENGLISH_IN_FRENCH])):
        (raw / folder).mkdir(parents=True)
        (raw / folder / "part-0.jsonl").write_text(
            "".join(json.dumps({"id": f"{folder}-{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs)))
    (raw / "crawl").mkdir()
    (raw / "crawl" / "mixed.jsonl").write_text(
        "".join(json.dumps({"id": f"crawl-{i}", "text": t}, ensure_ascii=False) + "\n" for i, (_, t) in enumerate(MIXED)))
    (raw / "code").mkdir()
    for name, text in CODE.items():
        (raw / "code" / name).write_text(text)
    return raw


def catalogue(raw: Path, **news_fr) -> list[dict]:
    return [
        {"name": "wolof", "paths": [f"{raw}/wolof/*.jsonl"], "lang": "wo", "weight": 0.25},
        # English stopwords are not French ones: the source's own filters let the English article through, so
        # that what happens to it is the policy's doing.
        {"name": "news_fr", "paths": [f"{raw}/news_fr/*.jsonl"], "lang": "fr", "multiplier": 2.0,
         "filters": {"fr": {"min_stopwords": 0.0}}, **news_fr},
        {"name": "crawl", "paths": [f"{raw}/crawl/*"]},
        {"name": "code", "paths": [f"{raw}/code/*"]},
    ]


def config(run: Path, raw: Path, *, num_tasks: int = 2, news_fr: dict | None = None, **clean):
    """A run config read from YAML, as a user writes it."""
    data = {"run_dir": str(run), "clean": {"sources": catalogue(raw, **(news_fr or {})), "num_tasks": num_tasks,
                                           "languages": ["en", "fr", "es"], **clean},
            "preprocess": {"split_by_source": True, "validation_fraction": 0.0},
            "tokenizer": {"vocab_size": 1000, "sample_bytes": 60_000}}
    path = run / "run.yaml"
    run.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return load_config(path)


def run_clean(cfg) -> Path:
    out = Path(cfg.run_dir)
    clean_stage.run_locally(cfg, out / "clean", out / "work")
    return out / "clean"


def records(folder: Path, pattern: str = "part-*.jsonl.zst") -> list[dict]:
    return [r for p in sorted(folder.glob(pattern)) for r in read_jsonl(p)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_raw(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def kept(raw, tmp_path_factory) -> Path:
    """clean/ of the catalogue under the default policy (keep)."""
    return run_clean(config(tmp_path_factory.mktemp("keep"), raw))


def test_lid176_cannot_see_wolof():
    """The premise of the Wolof source: lid.176 has no Wolof label and gives the sentences to others."""
    assert "wo" not in model_labels()
    langid = LanguageIdentifier()
    assert all(langid(s)[0] != "wo" for s in WOLOF)


def test_declared_languages_are_kept_with_their_agreement(kept):
    docs = records(kept)
    wolof = [r for r in docs if r[SOURCE_FIELD] == "wolof"]
    langid = LanguageIdentifier()
    assert len(wolof) == 4 and {r["lang"] for r in wolof} == {"wo"}  # though wo is not in clean.languages
    for r in wolof:
        probs = langid.probabilities(r["text"])
        top = max(probs, key=probs.get)
        assert r["lang_score"] is None  # the model has no wo label: the top label says what it saw
        assert (r["lid_top"], r["lid_top_score"]) == (top, probs[top]) and top != "wo"
    news = {r["id"]: r for r in docs if r[SOURCE_FIELD] == "news_fr"}
    assert set(news) == {"news_fr-0", "news_fr-1", "news_fr-2", "news_fr-3"} and {r["lang"] for r in news.values()} == {"fr"}
    assert all(r["lid_top"] == "fr" and r["lang_score"] == r["lid_top_score"] > 0.9 for i, r in news.items() if i != "news_fr-3")
    english = news["news_fr-3"]  # kept under its declared language, the disagreement recorded
    assert english["lid_top"] == "en" and english["lid_top_score"] >= 0.9 and english["lang_score"] < 0.1
    assert "lang_flag" not in english


def test_undeclared_documents_are_identified_as_without_a_catalogue(kept, raw, tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", f"clean.inputs=[{raw}/crawl/*]", "clean.languages=[en, fr, es]"])
    alone = {r["id"]: r for r in records(run_clean(cfg))}
    crawl = {r["id"]: r for r in records(kept) if r[SOURCE_FIELD] == "crawl"}
    assert set(crawl) == set(alone) == {"crawl-0", "crawl-1", "crawl-2"}  # the German one: language_not_kept
    for doc_id, r in crawl.items():
        assert (r["lang"], r["lang_score"], r["text"]) == (alone[doc_id]["lang"], alone[doc_id]["lang_score"],
                                                            alone[doc_id]["text"])
        assert "lid_top" not in r and SOURCE_FIELD not in alone[doc_id]  # no catalogue, no source field
    assert [crawl[f"crawl-{i}"]["lang"] for i in range(3)] == ["en", "fr", "es"]
    code = [r for r in records(kept) if r[SOURCE_FIELD] == "code"]
    assert sorted(r["code_lang"] for r in code) == ["javascript", "python", "ruby"] and {r["lang"] for r in code} == {"code"}


def test_stats_count_per_source(kept):
    stats = json.loads((kept / "stats.json").read_text())
    sources = stats["sources"]
    assert set(sources) == {"wolof", "news_fr", "crawl", "code"}
    for name, e in sources.items():
        assert e["docs_in"] == e["docs_out"] + sum(e["dropped"].values()), name
    assert (sources["wolof"]["docs_out"], sources["news_fr"]["docs_out"], sources["code"]["docs_out"]) == (4, 4, 3)
    assert sources["crawl"]["dropped"] == {"language_not_kept": 1}
    assert sum(sources["wolof"]["lid_top"].values()) == 4 and "wo" not in sources["wolof"]["lid_top"]
    assert sources["news_fr"]["lid_top"] == {"fr": 3, "en": 1}
    assert (sources["news_fr"]["confident_other"], sources["news_fr"]["flagged"]) == (1, 0)
    assert sources["wolof"].get("confident_other", 0) == 0  # lid.176 is never sure of what Wolof is
    assert "lid_top" not in sources["crawl"]
    # What `graine status` shows under clean: the stage's summary, with a line per source.
    summary = clean_stage.summary(kept)
    assert "news_fr" in summary and "confident other 1" in summary
    assert any(line.split()[:3] == ["wolof", "4", "4"] for line in summary.splitlines())


@pytest.mark.parametrize("global_policy, source_policy, expect", [
    ("keep", None, "kept"),
    ("flag", None, "flagged"),
    ("drop_if_confident_other", None, "dropped"),
    ("drop_if_confident_other", "keep", "kept"),  # the source's own policy wins
])
def test_declared_language_policy(raw, tmp_path, global_policy, source_policy, expect):
    news_fr = {"declared_language_policy": source_policy} if source_policy else {}
    out = run_clean(config(tmp_path, raw, news_fr=news_fr, declared_language_policy=global_policy))
    published = {r["id"]: r for r in records(out)}
    stats = json.loads((out / "stats.json").read_text())["sources"]
    assert stats["news_fr"]["confident_other"] == 1  # counted whatever the policy
    assert {i for i in published if i.startswith("wolof")} == {f"wolof-{i}" for i in range(4)}  # never dropped
    if expect == "dropped":
        assert "news_fr-3" not in published
        (excluded,) = [r for r in records(out / "excluded", "filtered-*") if r["id"] == "news_fr-3"]
        assert excluded["reason"] == DISAGREES and excluded["lid_top"] == "en"
        assert stats["news_fr"]["dropped"] == {DISAGREES: 1}
        assert json.loads((out / "stats.json").read_text())["totals"]["dropped"][DISAGREES] == 1
    else:
        assert published["news_fr-3"].get("lang_flag") == ("confident_other" if expect == "flagged" else None)
        assert stats["news_fr"]["flagged"] == (expect == "flagged") and not stats["news_fr"]["dropped"]


def test_disagreement_threshold_decides_confidence(raw, tmp_path):
    """At a threshold above the English article's score nothing is a confident disagreement."""
    probs = LanguageIdentifier().probabilities(ENGLISH_IN_FRENCH)
    out = run_clean(config(tmp_path, raw, declared_language_policy="drop_if_confident_other",
                           disagreement_threshold=min(1.0, probs["en"] + 0.0001)))
    assert "news_fr-3" in {r["id"] for r in records(out)}
    assert json.loads((out / "stats.json").read_text())["sources"]["news_fr"].get("confident_other", 0) == 0


def test_source_filters_apply_to_that_source_only(raw, tmp_path):
    cfg = config(tmp_path, raw)
    cleaner = DocumentCleaner(cfg.clean, {})
    assert cleaner.params("fr", "news_fr").min_stopwords == 0.0
    assert cleaner.params("fr", "crawl").min_stopwords == cleaner.params("fr").min_stopwords == 0.2
    # The code filter too: a source's `filters.code` judges its files only.
    sources = catalogue(raw)
    sources[3]["filters"] = {"code": {"min_chars": 10_000}}
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "other.py").write_text(CODE["stats.py"].replace("mean", "average"))
    sources.append({"name": "more_code", "paths": [f"{tmp_path}/code/*"]})
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"clean.sources={json.dumps(sources)}",
                             "preprocess.split_by_source=true"])
    stats = json.loads((run_clean(cfg) / "stats.json").read_text())["sources"]
    assert stats["code"]["docs_out"] == 0 and sum(stats["code"]["dropped"].values()) == 3
    assert stats["more_code"]["docs_out"] == 1


@pytest.mark.parametrize("num_tasks", [1, 3, 5])
def test_outputs_identical_whatever_the_task_count(kept, raw, tmp_path, num_tasks, monkeypatch):
    monkeypatch.setattr(clean_stage, "PART_BYTES", 600)  # a few parts, cut across the sources
    small = run_clean(config(tmp_path / "small", raw, num_tasks=2))
    other = run_clean(config(tmp_path / "other", raw, num_tasks=num_tasks))

    def files(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert len(list(small.glob("part-*"))) > 2
    assert files(other) == files(small)
    assert records(small) == records(kept)  # the cut moves, the documents do not


def test_tokenizer_sample_counts_sources(kept, tmp_path):
    result = build_sample(lambda: read_documents(kept), tmp_path / "sample", alpha=0.3, sample_bytes=100_000,
                          seed=1, heldout_fraction=0.2)
    sources = result.shares["sources"]
    assert {"wolof", "news_fr", "crawl", "code"} >= set(sources) >= {"wolof", "news_fr"}
    assert sum(s["bytes"] for s in sources.values()) == result.shares["bytes"]
    source_of = {r["text"]: r[SOURCE_FIELD] for r in records(kept)}
    heldout = list(read_jsonl(tmp_path / "sample" / "heldout.jsonl"))
    assert heldout and all(r[SOURCE_FIELD] == source_of[r["text"]] for r in heldout)


@pytest.fixture(scope="module")
def trained_tokenizer(tmp_path_factory) -> Path:
    """A tokenizer trained on the shared generated corpus: the catalogue's few KB are too small to train one."""
    root = tmp_path_factory.mktemp("tok")
    write_clean(root, make_documents(600, seed=2), num_shards=2)
    run_stage(tokenizer.STAGE, make_config(root, **{"tokenizer.vocab_size": 1000, "tokenizer.sample_bytes": 60_000}))
    return root / "tokenizer"


def test_source_names_reach_datasets_and_weights(kept, raw, trained_tokenizer, tmp_path):
    cfg = config(tmp_path, raw)
    shutil.copytree(kept, tmp_path / "clean")
    shutil.copytree(trained_tokenizer, tmp_path / "tokenizer")
    blend = json.loads((run_stage(preprocess.STAGE, cfg) / "blend.json").read_text())["datasets"]
    assert set(blend) == {"wo__wolof", "fr__news_fr", "en__crawl", "fr__crawl", "es__crawl", "code__code"}
    assert {n: d["source"] for n, d in blend.items()}["wo__wolof"] == "wolof"
    assert sum(d["weight"] for d in blend.values()) == pytest.approx(1.0)
    assert blend["wo__wolof"]["weight"] == pytest.approx(0.25) and blend["wo__wolof"]["source_weight"] == 0.25
    assert blend["fr__news_fr"]["source_multiplier"] == 2.0
    # Without the catalogue's weights: the α-sampled weights, the multiplier's effect measured against them.
    plain = blend_weights(blend, cfg.preprocess.alpha, {})
    ratio = blend["fr__news_fr"]["weight"] / blend["fr__crawl"]["weight"]
    assert ratio == pytest.approx(2.0 * plain["fr__news_fr"] / plain["fr__crawl"])
    assert blend["en__crawl"]["weight"] / blend["es__crawl"]["weight"] == pytest.approx(plain["en__crawl"] / plain["es__crawl"])


def test_blend_weights_by_hand():
    datasets = {"a": {"lang": "en", "source": "s1", "train": {"tokens": 300}},
                "b": {"lang": "en", "source": "s2", "train": {"tokens": 100}},
                "c": {"lang": "fr", "source": "s3", "train": {"tokens": 100}}}
    assert blend_weights(datasets, 1.0, {}) == pytest.approx({"a": 0.6, "b": 0.2, "c": 0.2})
    sources = {"s1": SourceConfig(name="s1", paths=["x"], weight=0.5)}
    assert blend_weights(datasets, 1.0, {}, sources) == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25})
    sources["s2"] = SourceConfig(name="s2", paths=["x"], multiplier=3.0)
    assert blend_weights(datasets, 1.0, {}, sources) == pytest.approx({"a": 0.5, "b": 0.375, "c": 0.125})


@pytest.mark.parametrize("entries, key", [
    ([{"name": "wiki/fr", "paths": ["x"]}], "clean.sources[0].name"),
    ([{"name": "a", "paths": ["x"]}, {"name": "a", "paths": ["y"]}], "clean.sources[1].name"),
    ([{"name": "a", "paths": []}], "clean.sources[0].paths"),
    ([{"name": "a", "paths": ["x"], "lang": "EN"}], "clean.sources[0].lang"),
    ([{"name": "a", "paths": ["x"], "lang": "french"}], "clean.sources[0].lang"),
    ([{"name": "a", "paths": ["x"], "lang": "qq"}], "clean.sources[0].lang"),  # ISO-shaped, known to no table
    ([{"name": "a", "paths": ["x"]}, {"name": "b", "paths": ["x"], "filters": {"fr": {"min_wordz": 3}}}],
     "clean.sources[1].filters.fr.min_wordz"),
    ([{"name": "a", "paths": ["x"], "weight": 0.5, "multiplier": 2}], "clean.sources[0]"),
    ([{"name": "a", "paths": ["x"], "weight": 0.7}, {"name": "b", "paths": ["y"], "weight": 0.6}], "clean.sources"),
    ([{"name": "a", "paths": ["x"], "declared_language_policy": "ignore"}], "clean.sources[0].declared_language_policy"),
    ([{"name": "a", "paths": ["x"], "colour": "red"}], "clean.sources[0].colour"),
])
def test_bad_entries_fail_at_load_naming_the_key(entries, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["preprocess.split_by_source=true", f"clean.sources={json.dumps(entries)}"])
    assert key in str(err.value)


def test_inputs_shorthand_is_the_source_named_inputs(raw):
    with pytest.raises(ConfigError, match=r"clean.sources\[0\].name='inputs' is taken"):
        load_config(None, ["clean.inputs=[x]", 'clean.sources=[{name: inputs, paths: [y]}]'])
    cfg = load_config(None, [f"clean.inputs=[{raw}/crawl/*]", f"clean.sources=[{{name: wolof, paths: [{raw}/wolof/*]}}]"])
    assert {f.source_name for f in corpus_files(cfg.clean)} == {"inputs", "wolof"}


def test_weights_need_datasets_per_source():
    with pytest.raises(ConfigError, match=r"clean.sources\[0\].weight needs one dataset per source"):
        load_config(None, ['clean.sources=[{name: a, paths: [x], weight: 0.5}]'])


def test_a_file_belongs_to_one_source(raw):
    cfg = load_config(None, [f"clean.sources=[{{name: a, paths: [{raw}/crawl/*]}}, {{name: b, paths: [{raw}/**/*.jsonl]}}]"])
    with pytest.raises(DataError, match=r"matched by clean.sources\[0\].paths and clean.sources\[1\].paths"):
        corpus_files(cfg.clean)


def test_catalogue_round_trips_through_the_saved_config(raw, tmp_path):
    """The resolved config saved beside a stage's outputs loads back to the same catalogue and hash."""
    cfg = config(tmp_path, raw, news_fr={"declared_language_policy": "flag"})
    (tmp_path / "saved.yaml").write_text(cfg.to_yaml())
    again = load_config(tmp_path / "saved.yaml")
    assert again.clean.sources == cfg.clean.sources and again.section_hash("clean") == cfg.section_hash("clean")


def test_an_unknown_declared_code_names_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config(None, ['clean.sources=[{name: a, paths: [x], lang: qq}]'])
    message = str(err.value)
    assert "clean.sources[0].lang holds 'qq'" in message and "wo" in message and "python" in message


def test_a_source_declaring_a_programming_language_makes_its_files_code_of_it(tmp_path):
    """Whatever the extension (none, .txt): the source says its files are Ruby."""
    folder = tmp_path / "ruby"
    folder.mkdir()
    ruby = ("# Formats the invoice lines of an order\nclass Invoice\n  def initialize(lines)\n    @lines = lines\n  end\n\n"
            "  def total\n    @lines.sum { |line| line[:price] * line[:quantity] }\n  end\nend\n")
    (folder / "invoice.txt").write_text(ruby)
    (folder / "Rakefile").write_text(ruby.replace("Invoice", "Receipt"))
    data = {"run_dir": str(tmp_path / "run"), "clean": {"num_tasks": 1, "sources": [
        {"name": "ruby", "paths": [f"{folder}/*"], "lang": "ruby"}]}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    cfg = load_config(tmp_path / "run.yaml")
    assert {(f.path.name, f.kind, f.code_lang) for f in corpus_files(cfg.clean)} == {
        ("invoice.txt", "code", "ruby"), ("Rakefile", "code", "ruby")}
    out = run_clean(cfg)
    got = records(out)
    assert [(r["lang"], r["code_lang"]) for r in got] == [("code", "ruby")] * 2


def test_the_example_catalogue_of_bloom_languages_loads():
    """configs/bloom-languages.yaml (the README's example) is a valid config: BLOOM's languages, declared
    sources for languages lid.176 has no label for, and a code source."""
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "bloom-languages.yaml")
    clean_stage.check(cfg)
    assert cfg.clean.languages == list(bloom_codes())
    declared = {s.lang for s in cfg.clean.sources if s.lang}
    assert {"wo", "tw", "ln", "zu"} <= declared and not {"wo", "tw", "ln"} & model_labels()
    assert any(s.lang in CODE_LANGUAGES for s in cfg.clean.sources)


def test_a_source_weight_is_preprocess_identity_not_clean_s(raw, tmp_path):
    """Changing a source's weight or multiplier changes preprocess's config hash (its blend) and leaves
    clean's alone: a re-weighted blend does not re-clean the corpus. Any other key of a source is clean's."""
    from core.lineage import fingerprint

    def hashes(**news_fr) -> tuple[str, str]:
        cfg = config(tmp_path / "run", raw, news_fr=news_fr)
        return tuple(fingerprint(cfg, stage, lambda name: name).config_hash for stage in (clean_stage.STAGE, preprocess.STAGE))

    clean0, pre0 = hashes()
    clean1, pre1 = hashes(multiplier=3.0)
    assert clean1 == clean0 and pre1 != pre0
    clean2, pre2 = hashes(declared_language_policy="flag")
    assert clean2 != clean0
    # A run without catalogue weights hashes preprocess as before catalogues existed.
    plain = load_config(None, [f"run_dir={tmp_path / 'plain'}"])
    assert fingerprint(plain, preprocess.STAGE, lambda name: name).config_hash == plain.section_hash(*preprocess.STAGE.sections)
