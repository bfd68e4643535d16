"""Stage `tokenizer`: exact round trip, HF ids == SentencePiece ids, determinism, α-shares, memory refusal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.errors import ConfigError
from data_prep import tokenizer
from data_prep.sampling import lines_of
from tests.data_prep.test_tokenizer_corpus import make_config, make_documents, run_stage, write_clean

HARD_CASES = [
    "", " ", "   ", "\n", "\n\n\n", "\t\t", "  leading spaces", "trailing spaces   ", "a  b   c    d",
    "0123456789 3.14159 1,000,000", "x1y22z333", "😀👩‍💻🇫🇷❤️ mixed 🤖text", "𓀀𓁐 hieroglyphs ꙮ",
    "ᏣᎳᎩ ⵜⴰⵎⴰⵣⵉⵖⵜ ሰላም", "<s>hello</s> <pad> <unk>", "<mask>x<mask> <mask>", "line\r\nwindows\r\n",
    "def f():\n\treturn  1\n        # deep\n", "\x00\x01 control \x7f", "ǅ ﬁ ① ｈａｌｆ", "a" * 3000,
    " " * 500 + "x", "中文没有空格的句子", "mixed\u00a0nbsp\u2009thin\u3000ideographic",
]


@pytest.fixture(scope="module")
def corpus():
    return make_documents(2500, seed=1)


def train(tmp_path: Path, docs, **overrides) -> Path:
    write_clean(tmp_path, docs)
    settings = {"tokenizer.vocab_size": 800, "tokenizer.sample_bytes": 80_000,
                "tokenizer.user_defined_symbols": "[<mask>]", **overrides}
    return run_stage(tokenizer.STAGE, make_config(tmp_path, **settings))


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, corpus):
    return train(tmp_path_factory.mktemp("bpe"), corpus)


def texts(docs):
    return [d["text"] for d in docs] + HARD_CASES


def test_roundtrip_is_exact_and_never_unknown(bpe_dir, corpus):
    sp = tokenizer.load_tokenizer(bpe_dir)
    for text in texts(corpus):
        ids = sp.encode(text)
        assert sp.unk_id() not in ids, text
        assert sp.decode(ids) == text


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_hf_ids_equal_sentencepiece_ids(tmp_path, corpus, bpe_dir, model_type):
    from transformers import AutoTokenizer

    out = bpe_dir if model_type == "bpe" else train(tmp_path, corpus[:1500], **{"tokenizer.model_type": "unigram"})
    sp = tokenizer.load_tokenizer(out)
    hf = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    cases = texts(corpus)
    sp_ids = sp.encode(cases)
    hf_ids = hf(cases)["input_ids"]
    mismatched = [(t[:80], a[:20], b[:20]) for t, a, b in zip(cases, sp_ids, hf_ids) if a != b]
    if model_type == "unigram":
        # SentencePiece's Viterbi adds float32 scores, tokenizers' float64: two segmentations of equal
        # score may be ordered differently. Anything else is a real difference.
        def score(ids):
            return sum(sp.get_score(i) for i in ids)
        ties = [m for m, a, b in zip(cases, sp_ids, hf_ids) if a != b and abs(score(a) - score(b)) < 1e-3]
        assert len(ties) == len(mismatched) and len(ties) <= len(cases) // 200, mismatched[:3]
        mismatched = []
    assert not mismatched, mismatched[:3]
    assert all(hf.decode(ids) == t for t, ids in zip(cases, hf_ids))
    assert hf.eos_token_id == sp.eos_id() and hf.pad_token_id == sp.pad_id() and hf.bos_token_id == sp.bos_id()
    assert len(hf) == sp.get_piece_size()


def test_user_defined_symbols_and_specials(bpe_dir):
    sp = tokenizer.load_tokenizer(bpe_dir)
    mask = sp.piece_to_id("<mask>")
    assert sp.encode("a<mask>b").count(mask) == 1
    assert sp.encode("\n") == [sp.piece_to_id("\n")]
    assert sp.eos_id() not in sp.encode("</s>")  # control pieces are text when they appear in a document
    info = tokenizer.tokenizer_info(bpe_dir)
    assert (info.unk_id, info.bos_id, info.eod_id, info.pad_id, info.vocab_size) == (0, 1, 2, 3, 800)
    assert info.hash == tokenizer.tokenizer_hash(bpe_dir) and len(info.hash) == 16


def test_same_config_gives_byte_identical_model(tmp_path, corpus, bpe_dir):
    again = train(tmp_path / "again", corpus, **{"tokenizer.threads": 1})
    for name in ("tokenizer.model", "tokenizer.json", "sample/sample.txt", "report.json"):
        assert (again / name).read_bytes() == (bpe_dir / name).read_bytes(), name
    other = train(tmp_path / "other", corpus, seed=99)
    assert tokenizer.tokenizer_hash(other) != tokenizer.tokenizer_hash(bpe_dir)


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_sample_shares_follow_alpha(tmp_path, corpus, alpha):
    out = train(tmp_path, corpus, **{"tokenizer.alpha": alpha, "tokenizer.heldout_fraction": 0.0,
                                     "tokenizer.sample_bytes": 50_000})
    sizes: dict[str, int] = {}  # n_l computed here, independently of data_prep.sampling
    for d in corpus:
        sizes[d["lang"]] = sizes.get(d["lang"], 0) + sum(len(x.encode()) for x in lines_of(d["text"]))
    norm = sum(n**alpha for n in sizes.values())
    lines = (out / "sample" / "sample.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == len(set(lines)) and sum(len(x.encode()) + 1 for x in lines) <= 50_000 + len(lines)
    got = json.loads((out / "sample" / "shares.json").read_text())["languages"]
    lang_of = {}
    for d in corpus:
        for line in lines_of(d["text"]):
            lang_of.setdefault(line, d["lang"])
    counted: dict[str, int] = {}
    for line in lines:
        counted[lang_of[line]] = counted.get(lang_of[line], 0) + len(line.encode())
    total = sum(counted.values())
    for lang, n in sizes.items():
        share = counted.get(lang, 0) / total
        assert abs(share - n**alpha / norm) < 0.02, (lang, share, n**alpha / norm)
        assert abs(got[lang]["share"] - share) < 1e-4


def test_too_large_sample_fails_fast_naming_the_setting(tmp_path, corpus):
    write_clean(tmp_path, corpus)
    cfg = make_config(tmp_path, **{"tokenizer.sample_bytes": 10_000_000, "tokenizer.max_memory_gb": 0.05})
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"tokenizer\.sample_bytes") as err:
        run_stage(tokenizer.STAGE, cfg)
    assert time.perf_counter() - start < 5
    assert "0.05" in str(err.value)
    assert not (tmp_path / ".tokenizer.staging" / "sample" / "sample.txt").exists()


def test_memory_prediction_uses_the_job_allocation(monkeypatch, tmp_path):
    cfg = make_config(tmp_path, **{"tokenizer.sample_bytes": 500_000_000})
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "2048")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert tokenizer.job_cpus() == 3
    with pytest.raises(ConfigError, match="SLURM_MEM_PER_NODE.*lower tokenizer.sample_bytes"):
        tokenizer.check_memory(cfg, 500_000_000)
    tokenizer.check_memory(cfg, 10_000_000)


def test_report_and_summary(bpe_dir):
    report = json.loads((bpe_dir / "report.json").read_text())
    assert report["vocab_size"] == 800 and report["tokenizer_hash"] == tokenizer.tokenizer_hash(bpe_dir)
    assert set(report["sample"]) >= {"en", "zh", "code:python", "chr"}
    for lang, row in report["heldout"].items():
        assert row["roundtrip_failures"] == 0 and row["bytes_per_token"] > 1.0, lang
    assert "vocab 800" in tokenizer.summary(bpe_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (bpe_dir / name).is_file()
