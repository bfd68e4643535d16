"""The clean stage's published bytes on the generated corpus, against a manifest recorded before its
per-document work became a list of steps (issue 13): that refactor must not change one byte.

clean_golden.json was produced by the code at commit dde604a (`DocumentCleaner.batch` with its fixed
phases, `QualityFilter` with its if-chain; the code at 872557c gives the same bytes), by running this file:

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 .venv/bin/python tests/data_prep/test_clean_golden.py

Regenerate it only for an intended change of the outputs, and say so in the commit. It also records a
fingerprint of the generated corpus: a change of data_prep/synthetic.py fails the test with that
reason, not as a change of the clean stage. The bytes depend on the zstandard library's version too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from data_prep.clean import CleanConfig, run_locally
from data_prep.synthetic import KEPT_LANGUAGES, write_corpus
from pipeline.config import RunConfig

GOLDEN = Path(__file__).with_name("clean_golden.json")
ABOUT = ("sha256 of the clean stage's published files on the generated corpus, produced by the code at commit "
         "dde604a (before issue 13's document steps; 872557c gives the same); regenerate: .venv/bin/python tests/data_prep/test_clean_golden.py")
# Each one exercises other branches of the per-document work: unlisted languages kept as 'other',
# per-language overrides, boilerplate kept, gzip parts; every language, no PII redaction; thresholds
# at which every quality check drops some documents.
CONFIGS: dict[str, dict] = {
    "demo-languages": {"languages": list(KEPT_LANGUAGES)},
    "keep-other": {"languages": ["en", "fr", "zh"], "keep_other": True, "boilerplate": False, "compression": "gz",
                   "filters": {"default": {"min_words": 30}, "zh": {"max_char_rep": 0.3}, "code": {"min_chars": 80}}},
    "every-language": {"languages": [], "pii": False, "min_lang_score": 0.3},
    "strict": {"languages": [], "filters": {"default": {"max_special": 0.07, "max_char_rep": 0.08, "max_word_rep": 0.1,
                                                        "min_stopwords": 0.3, "max_words": 400, "max_flagged": 0.001}}},
}


def corpus_fingerprint(raw: Path) -> str:
    """sha256 of the raw files' names and contents (parquet files by their rows: their bytes hold the
    pyarrow version)."""
    import pyarrow.parquet as pq

    h = hashlib.sha256()
    for path in sorted(p for p in raw.rglob("*") if p.is_file()):
        h.update(path.relative_to(raw).as_posix().encode() + b"\0")
        if path.suffix == ".parquet":
            h.update(json.dumps(pq.read_table(path).to_pylist(), sort_keys=True, default=str).encode())
        else:
            h.update(path.read_bytes())
    return h.hexdigest()


def clean_manifest(corpus: Path, out: Path, name: str) -> dict[str, str]:
    """{published path: sha256} of the clean stage run on `corpus` with config CONFIGS[name], 2 tasks."""
    cfg = RunConfig(run_dir=str(out))
    cfg.clean = CleanConfig(inputs=[str(corpus / "raw" / "**" / "*")], num_tasks=2, **CONFIGS[name])
    run_locally(cfg, out / "clean", out / "work")
    return {p.relative_to(out / "clean").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "clean").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def golden(corpus) -> dict:
    recorded = json.loads(GOLDEN.read_text())
    if corpus_fingerprint(corpus / "raw") != recorded["corpus"]:
        pytest.fail("the generated corpus (data_prep/synthetic.py, seed 3, 40 documents per language) is not the "
                    f"one {GOLDEN.name} was recorded on; regenerate it with the clean code before your change")
    return recorded


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_published_bytes_are_the_recorded_ones(corpus, golden, tmp_path, name):
    got = clean_manifest(corpus, tmp_path, name)
    expected = golden["configs"][name]
    assert sorted(got) == sorted(expected)
    assert [path for path in expected if got[path] != expected[path]] == []


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_corpus(corpus, seed=3, docs_per_language=40)  # as the `corpus` fixture of conftest.py
        recorded = {"_about": ABOUT, "corpus": corpus_fingerprint(corpus / "raw"),
                    "configs": {name: clean_manifest(corpus, Path(tmp) / name, name) for name in sorted(CONFIGS)}}
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {sum(map(len, recorded['configs'].values()))} files in {len(CONFIGS)} configs")


if __name__ == "__main__":
    main()
