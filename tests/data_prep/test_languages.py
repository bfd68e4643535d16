"""BLOOM's natural languages: the table against the model card and lid.176, `clean.languages: bloom`,
refused codes, and real text of several languages through the quality checks with the table's parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from data_prep.clean import STAGE, CleanConfig
from data_prep.filters import stopwords
from data_prep.langid import LanguageIdentifier, check_languages, model_labels
from data_prep.languages import (
    BLOOM_CARD_COUNT,
    BLOOM_LANGUAGES,
    LANGUAGES,
    bloom_codes,
    language_params,
    render_markdown,
)
from data_prep.quality import DEFAULT_CHECKS, QualityFilter, Text, param_names, params_for
from pipeline.config import RunConfig, load_config

# BLOOM's model card, by group (zh simplified and traditional are two of its 46).
CARD = {
    "Niger-Congo": "ak bm fon ig ki lg ln nso ny rn rw sn st sw tn ts tum tw wo xh yo zu",
    "Indic": "as bn gu hi kn ml mr ne or pa ta te ur",
    "other": "ar ca en es eu fr id pt vi zh",
}


def test_the_table_is_the_model_cards_46_languages():
    assert {group: {r.code for r in BLOOM_LANGUAGES if r.group == group} for group in CARD} == \
        {group: set(codes.split()) for group, codes in CARD.items()}
    assert len(bloom_codes()) == len(set(bloom_codes())) == 45
    assert sum(len(r.scripts) for r in BLOOM_LANGUAGES) == BLOOM_CARD_COUNT == 46
    assert LANGUAGES["zh"].scripts == ("Hans", "Hant")


def test_lid176_column_matches_the_model():
    labels = model_labels()
    assert {r.code: r.lid176 for r in LANGUAGES.values()} == {code: code in labels for code in LANGUAGES}
    # Most of BLOOM's Niger-Congo languages are invisible to lid.176: the reason for declared sources.
    assert sum(not r.lid176 for r in BLOOM_LANGUAGES) == 20


@pytest.mark.parametrize("code", bloom_codes())
def test_every_bloom_code_is_valid_and_has_parameters(code):
    check_languages([code])
    row = LANGUAGES[code]
    assert row.params and set(row.params) <= set(param_names())
    p = params_for(code, {}, 0.5)
    assert set(vars(p)) == set(param_names())
    if not row.lid176:  # its score would be another language's: the check cannot judge it
        assert p.min_lang_score == 0.0
    if p.min_lang_score == 0.0:
        assert "language-score check off (declare the source's language)" in row.note
    else:
        assert 0.4 <= p.min_lang_score <= 0.7  # lid.176 scores clean Swahili ~0.45
    if not stopwords(code):
        assert "none: check passes" in next(line for line in render_markdown().splitlines() if line.startswith(f"| {code} |"))
    assert row.segmentation == ("character" if code == "zh" else "whitespace")


def test_bloom_expands_at_config_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\nclean:\n  languages: bloom\n")
    cfg = load_config(path)
    assert cfg.clean.languages == bloom_codes()
    STAGE.check(cfg, 1, False)
    assert load_config(path, ["clean.languages=[de, bloom, en]"]).clean.languages == ["de", *bloom_codes()]
    assert CleanConfig(languages=["fr"]).languages == ["fr"]


@pytest.mark.parametrize("bad, hint", [("wol", "did you mean wo"), ("zz", "valid codes are ISO 639-1")])
def test_unknown_code_is_refused_naming_valid_ones(tmp_path, bad, hint):
    cfg = RunConfig(run_dir=str(tmp_path))
    cfg.clean = CleanConfig(languages=["bloom", bad])
    with pytest.raises(ConfigError, match=rf"clean\.languages holds '{bad}'") as err:
        STAGE.check(cfg, 1, False)
    message = str(err.value)
    assert hint in message and "e.g. en, fr" in message
    assert "lacks (ak, bm, fon, ig, ki, lg, ln, nso, ny, rn, rw, sn, st, tn, ts, tum, tw, wo, xh, zu)" in message
    assert "clean.languages: bloom selects BLOOM's 46 languages" in message


# Short real documents (encyclopedic prose; the Universal Declaration of Human Rights' first article for
# zu, wo, yo and bn). Languages lid.176 cannot see (zu, wo, and yo, which it misses) are declared by
# their source: the score then comes from a model that does not see them.
DOCUMENTS = {
    "zh": "中文是世界上使用人数最多的语言之一，主要在中国大陆、台湾、新加坡等地使用。汉字已有三千多年的历史，是世界上"
          "最古老的文字之一。现代标准汉语以北京语音为标准音，以北方话为基础方言。许多学生在学校里学习中文，也有越来越多"
          "的外国人对中国文化产生了兴趣。",
    "zh-Hant": "中文是世界上使用人數最多的語言之一，主要在台灣、香港、澳門等地使用繁體字。漢字已有三千多年的歷史，是世界上"
               "最古老的文字之一。許多學生在學校裡學習中文，也有越來越多的外國人對中華文化產生了興趣，並且開始閱讀古典詩詞。",
    "sw": "Kiswahili ni lugha ya Kibantu inayozungumzwa na watu wengi katika Afrika Mashariki. Ni lugha rasmi ya Tanzania "
          "na Kenya, na pia inatumika Uganda, Rwanda na Burundi. Watoto hujifunza Kiswahili shuleni, na magazeti mengi "
          "huchapishwa kwa lugha hii kila siku.",
    "zu": "Bonke abantu bazalwa bekhululekile belingana ngesithunzi nangamalungelo. Bahlanganiswe wumcabango nanembeza "
          "futhi kufanele baphathane ngomoya wobuzalwane. Isizulu siwulimi olukhulunywa ngabantu abaningi eNingizimu "
          "Afrika, futhi lufundiswa ezikoleni eziningi zezwe lonke.",
    "wo": "Doomi aadama yépp danuy juddu, yam ci tawfeex ci sag ak sañ-sañ. Nekk na it ku xam dëgg te ànd ak xelam, te "
          "war naa jëflante ak nawleen, te teg ko ci wàllu mbokk. Wolof mooy làkk wi ëpp ci Senegaal, ñu bari di ko wax "
          "ci Gàmbi ak Gànnaar itam.",
    "bn": "সমস্ত মানুষ স্বাধীনভাবে সমান মর্যাদা এবং অধিকার নিয়ে জন্মগ্রহণ করে। তাঁদের বিবেক এবং বুদ্ধি আছে; সুতরাং সকলেরই একে "
          "অপরের প্রতি ভ্রাতৃত্বসুলভ মনোভাব নিয়ে আচরণ করা উচিত। বাংলা ভাষা বাংলাদেশের রাষ্ট্রভাষা এবং ভারতের পশ্চিমবঙ্গ "
          "রাজ্যের প্রধান ভাষা। এই ভাষায় প্রায় তেইশ কোটি মানুষ কথা বলে।",
    "ta": "தமிழ் மொழி உலகின் மிகப் பழமையான மொழிகளில் ஒன்றாகும். இது இந்தியாவின் தமிழ்நாடு மாநிலத்திலும் இலங்கையிலும் "
          "சிங்கப்பூரிலும் அதிகாரப்பூர்வ மொழியாக உள்ளது. தமிழ் இலக்கியம் இரண்டாயிரம் ஆண்டுகளுக்கும் மேலான வரலாற்றைக் "
          "கொண்டது. இன்று உலகம் முழுவதும் எட்டு கோடிக்கும் அதிகமான மக்கள் தமிழ் பேசுகின்றனர்.",
    "yo": "Gbogbo ènìyàn ni a bí ní òmìnira; iyì àti ẹ̀tọ́ kọ̀ọ̀kan sì dọ́gba. Wọ́n ní ẹ̀bùn ti làákàyè àti ti ẹ̀rí-ọkàn, ó "
          "sì yẹ kí wọn ó máa hùwà sí ara wọn gẹ́gẹ́ bí ọmọ ìyá. Èdè Yorùbá jẹ́ èdè tí àwọn ènìyàn púpọ̀ ń sọ ní "
          "ìwọ̀ oòrùn Nàìjíríà àti ní Bìnì.",
    "ur": "اردو برصغیر کی ایک اہم زبان ہے اور پاکستان کی قومی زبان بھی ہے۔ یہ زبان فارسی رسم الخط میں لکھی جاتی ہے اور اس "
          "میں عربی، فارسی اور ہندی کے بہت سے الفاظ شامل ہیں۔ اردو شاعری کی روایت بہت پرانی ہے اور غالب اور اقبال اس کے "
          "مشہور شاعر ہیں۔",
    "ca": "El català és una llengua romànica parlada a Catalunya, al País Valencià, a les Illes Balears i a Andorra, on és "
          "l'única llengua oficial. Té una tradició literària molt rica que es remunta a l'edat mitjana, i avui dia es fa "
          "servir a l'escola, a la premsa i a la televisió.",
    "eu": "Euskara Euskal Herrian hitz egiten den hizkuntza da, eta Europako hizkuntza zaharrenetako bat dela uste da. Ez "
          "dago beste hizkuntzarekin ahaidetasunik frogaturik. Gaur egun ikastoletan eta unibertsitatean irakasten da, eta "
          "egunkari eta telebista kateak ere badaude euskaraz.",
}


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_real_text_passes_the_quality_checks_with_its_parameters(name):
    code, text = name.split("-")[0], DOCUMENTS[name]
    label, score = LanguageIdentifier()(text)
    if params_for(code, {}, 0.5).min_lang_score > 0:
        assert label == code  # the score below is the model's for this language
    else:  # zu, wo (not lid.176 labels), yo (missed by it): declared by their source
        assert label != code
        score = 0.0  # what an agreement score can say of a language the model does not see
    assert QualityFilter(code, params_for(code, {}, 0.5), DEFAULT_CHECKS)(text, score) == (True, "")


def test_languages_lid176_cannot_see_would_be_dropped_without_their_row():
    text = DOCUMENTS["wo"]
    assert language_params("wo")["min_lang_score"] == 0.0
    assert QualityFilter("wo", params_for("xx", {}, 0.5), DEFAULT_CHECKS)(text, 0.0) == (False, "low_lang_score")


def test_chinese_counts_characters():
    text = DOCUMENTS["zh"]
    hanzi = sum("\u4e00" <= c <= "\u9fff" for c in text)
    assert Text(text, "zh", 1.0).n_words == hanzi > params_for("zh", {}, 0.5).min_words
    # Split at spaces, the same text is a handful of "words": too few for any whitespace language.
    assert Text(text, "xx", 1.0).n_words < 5
    assert QualityFilter("xx", params_for("xx", {}, 0.5), DEFAULT_CHECKS)(text, 1.0) == (False, "too_few_words")


def test_the_readme_shows_the_tables_as_the_code_has_them():
    """README.md's language and programming-language tables are the ones the tables render now."""
    from data_prep import code_languages, languages

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for table in (languages.render_markdown(), code_languages.render_markdown()):
        stale = [row for row in table.splitlines() if row.startswith("|") and row not in readme]
        assert not stale, f"README.md lacks {stale[0]!r}: paste the output of `python -m data_prep.languages` and `python -m data_prep.code_languages`"
