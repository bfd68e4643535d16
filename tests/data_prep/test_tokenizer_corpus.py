"""A small generated multilingual corpus in the `clean` stage's format, and helpers to run stages on it.

Shared by the tokenizer and preprocess tests (imported as `test_tokenizer_corpus`). Languages of very
different sizes, source code with indentation and tabs, emoji, rare scripts (Cherokee, Tifinagh,
Ethiopic), whitespace runs, digits, the literal text "<s>", and both shard compressions.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from pathlib import Path

import zstandard

from core.stage import Stage, TaskContext
from pipeline.config import RunConfig, load_config

ALPHABETS = {
    "en": "etaoinshrdlucmfwypvbgkjqxz",
    "fr": "esaitnrulodcpméèàvqfbghjçêxyzô",
    "ru": "оеаинтсрвлкмдпуяыьгзбчйхжшюцщэфъё",
    "zh": "".join(chr(0x4E00 + i * 37) for i in range(60)),
    "ar": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "hi": "कखगघचछजझटडणतथदधनपफबभमयरलवशसह" + "ािीुूेैोौं",
    "chr": "".join(chr(0x13A0 + i) for i in range(85)),  # Cherokee
    "zgh": "".join(chr(0x2D30 + i) for i in range(55)),  # Tifinagh
    "am": "".join(chr(0x1200 + i) for i in range(0, 340, 3)),  # Ethiopic
}
# Relative sizes: skewed, as real corpora are.
WEIGHTS = {"en": 40, "fr": 20, "ru": 10, "zh": 10, "ar": 6, "hi": 5, "chr": 2, "zgh": 2, "am": 2,
           "code:python": 12, "code:javascript": 6}
EMOJI = ["😀", "🎉", "👩‍💻", "🇫🇷", "❤️", "🧪", "🤖"]
PY_SNIPPET = '''def f_{n}(x, y={n}):
    """Doc {n}."""
    if x  >  {d}:
\t\treturn [i ** 2 for i in range(x)]   # trailing
    return {{"k": x, 'v': y}}  \n\n\nclass C{n}:
        pass
'''
JS_SNIPPET = "function g{n}(a) {{\n  const b = a * {d};\n    return `${{b}}`;\n}}\n// end {n}   \n"


def _word(rng: random.Random, alphabet: str) -> str:
    return "".join(rng.choice(alphabet[: 8 + rng.randrange(len(alphabet) - 7)]) for _ in range(rng.randint(1, 8)))


def _prose(rng: random.Random, lang: str) -> str:
    alphabet, sep = ALPHABETS[lang], "" if lang == "zh" else " "
    lines = []
    for _ in range(rng.randint(1, 6)):
        words = [_word(rng, alphabet) for _ in range(rng.randint(3, 25))]
        roll = rng.random()
        if roll < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 10**9)))
        elif roll < 0.3:
            words.insert(rng.randrange(len(words)), rng.choice(EMOJI))
        elif roll < 0.35:
            words.insert(rng.randrange(len(words)), "<s> </s> <pad>")
        line = sep.join(words)
        if rng.random() < 0.1:
            line = "   " + line + "  \t "
        lines.append(line)
    return ("\n\n" if rng.random() < 0.3 else "\n").join(lines)


def _code(rng: random.Random, lang: str) -> str:
    template = PY_SNIPPET if lang == "code:python" else JS_SNIPPET
    return "".join(template.format(n=rng.randint(0, 999), d=rng.randint(0, 99999)) for _ in range(rng.randint(1, 3)))


def make_documents(n_docs: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    langs, weights = zip(*WEIGHTS.items())
    docs = []
    for i in range(n_docs):
        lang = rng.choices(langs, weights)[0]
        text = _code(rng, lang) if lang.startswith("code:") else _prose(rng, lang)
        docs.append({"id": f"doc-{i}", "text": text, "lang": lang, "source": rng.choice(["web", "books"])})
    # Exact duplicates, a document with only whitespace runs, and an empty one.
    docs += [dict(docs[0], id="dup-0"), {"id": "ws", "text": " \t  \n   x    y", "lang": "en", "source": "web"},
             {"id": "empty", "text": "", "lang": "en", "source": "web"}]
    return docs


def write_clean(run_dir: Path, docs: list[dict], num_shards: int = 3) -> Path:
    """`run_dir/clean/part-NNNNN.jsonl.zst|gz` (alternating compressions) and a stats.json."""
    clean = run_dir / "clean"
    clean.mkdir(parents=True, exist_ok=True)
    per = -(-len(docs) // num_shards)
    for k in range(num_shards):
        lines = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs[k * per:(k + 1) * per]).encode()
        if k % 2 == 0:
            (clean / f"part-{k:05d}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
        else:
            (clean / f"part-{k:05d}.jsonl.gz").write_bytes(gzip.compress(lines, mtime=0))
    (clean / "stats.json").write_text(json.dumps({"documents": len(docs)}))
    return clean


def make_config(run_dir: Path, **overrides) -> RunConfig:
    items = [f"run_dir={run_dir}"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, items)


def run_stage(stage: Stage, cfg: RunConfig, steps: tuple[str, ...] | None = None) -> Path:
    """Run a stage's steps in order, every task in a rank loop, then publish the staging folder."""
    run_dir = Path(cfg.run_dir)
    staging, work = run_dir / f".{stage.name}.staging", run_dir / f".{stage.name}.work"
    staging.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    for step in stage.steps:
        if steps is not None and step.name not in steps:
            continue
        n = step.num_tasks(cfg)
        for rank in range(n):
            step.run(TaskContext(cfg=cfg, stage=stage.name, step=step.name, rank=rank, world_size=n,
                                 out_dir=staging, work_dir=work, log=logging.getLogger("test")))
    if steps is None:
        staging.rename(run_dir / stage.folder)
        return run_dir / stage.folder
    return staging


def test_corpus_has_every_hard_case(tmp_path):
    docs = make_documents(300)
    text = "".join(d["text"] for d in docs)
    assert any(e in text for e in EMOJI) and "\t" in text and "    " in text and "<s>" in text
    assert {d["lang"] for d in docs} >= {"chr", "zgh", "code:python"}
    clean = write_clean(tmp_path, docs)
    from data_prep.shards import read_documents

    back = list(read_documents(clean))
    assert [d.text for d in back] == [d["text"] for d in docs]
    assert [d.index for d in back] == list(range(len(docs)))
