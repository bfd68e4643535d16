"""A seeded multilingual raw corpus with ground truth, for tests, the demo and the benchmark (offline).

Text is drawn from embedded per-language word lists (data_prep/resources: function words from
stopwords.json, content words from lexicon.json) with Zipf-like frequencies, in sentences and
paragraphs with digits, dates, emoji and the odd word of a rarer script. Planted on top: exact and
near duplicates (in other files), boilerplate lines, PII, mojibake, wrong-language (ja, tr) documents,
short, repetitive, symbol-soup and spam documents, source files, malformed records and an empty file.
`labels.jsonl` (beside `raw/`, not matched by the input glob) says what each document is.

    python -m data_prep.synthetic OUT_DIR [--docs-per-language N] [--seed S]
    clean.inputs: ["OUT_DIR/raw/**/*"]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.jsonl import write_jsonl

KEPT_LANGUAGES = ("en", "fr", "es", "de", "pt", "ru", "ar", "zh", "hi", "vi")
WRONG_LANGUAGES = ("ja", "tr")  # generated, but not in the demo's clean.languages
NO_SPACE = frozenset({"zh", "ja"})
END = {"zh": "。", "ja": "。", "hi": "।"}
COMMA = {"zh": "，", "ja": "、", "ar": "،"}
EMOJI = ["🙂", "🌍", "🚀", "📚", "🎉", "☕", "🌧️", "👍🏽", "❤️", "🇫🇷"]
RARE = ["ქართული", "Հայերեն", "தமிழ்", "ᚠᚢᚦᚨᚱᚲ", "ꦧꦱꦗꦮ", "ภาษาไทย", "ᏣᎳᎩ", "𐌰𐌱𐌲"]
BOILERPLATE = {
    "en": ["Accept all cookies", "Copyright © 2021 Example Media Ltd. All rights reserved.",
           "Home | News | Sport | Contact", "Share on Facebook", "Subscribe to our newsletter"],
    "fr": ["Tous droits réservés.", "Accueil | Actualités | Contact", "Partager sur Facebook"],
    "es": ["Todos los derechos reservados.", "Inicio | Noticias | Contacto", "Compartir en Twitter"],
    "de": ["Alle Rechte vorbehalten.", "Startseite | Nachrichten | Kontakt", "Impressum"],
    "pt": ["Todos os direitos reservados.", "Início | Notícias | Contato", "Leia mais »"],
    "ru": ["Все права защищены.", "Copyright © 2019 Example"],
    "ar": ["جميع الحقوق محفوظة.", "Copyright © 2020 Example"],
    "zh": ["版权所有 © 2022", "Copyright © 2022 Example"],
    "hi": ["सर्वाधिकार सुरक्षित।", "Copyright © 2018 Example"],
    "vi": ["Bản quyền thuộc về Example.", "Copyright © 2023 Example"],
}


@functools.cache
def _lists(name: str) -> dict[str, list[str]]:
    text = resources.files("data_prep.resources").joinpath(name).read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if k != "_about"}


class TextGenerator:
    """Sentences of real words: function words ~45% of tokens, both classes Zipf-distributed."""

    def __init__(self, rng: random.Random, lang: str):
        self.rng, self.lang = rng, lang
        self.function = _lists("stopwords.json")[lang]
        self.content = _lists("lexicon.json")[lang]
        self.fw = [1 / (i + 1) ** 0.9 for i in range(len(self.function))]
        self.cw = [1 / (i + 1) ** 0.7 for i in range(len(self.content))]

    def word(self) -> str:
        if self.rng.random() < 0.45:
            return self.rng.choices(self.function, self.fw)[0]
        return self.rng.choices(self.content, self.cw)[0]

    def sentence(self) -> str:
        rng, lang = self.rng, self.lang
        n = rng.randint(6, 16) if lang not in NO_SPACE else rng.randint(8, 20)
        words = [self.word() for _ in range(n)]
        if rng.random() < 0.25:
            words.insert(rng.randrange(len(words)), self._number())
        if rng.random() < 0.3:
            words.insert(rng.randrange(1, len(words)), words.pop(rng.randrange(1, len(words))) + COMMA.get(lang, ","))
        if rng.random() < 0.04:
            words.append(rng.choice(RARE))
        sep = "" if lang in NO_SPACE else " "
        text = sep.join(words)
        if lang not in NO_SPACE and lang not in ("ar", "hi"):
            text = text[0].upper() + text[1:]
        end = END.get(lang, "?" if rng.random() < 0.1 else ".")
        return text + end + (" " + rng.choice(EMOJI) if rng.random() < 0.05 else "")

    def _number(self) -> str:
        rng = self.rng
        return rng.choice([str(rng.randint(1900, 2024)), str(rng.randint(2, 999)), f"{rng.randint(1, 99)}%",
                           f"{rng.randint(1, 9)},{rng.randint(0, 9)}", f"{rng.randint(1, 28)}/{rng.randint(1, 12)}"])

    def document(self, n_words: int) -> str:
        paragraphs, count = [], 0
        while count < n_words:
            sentences = [self.sentence() for _ in range(self.rng.randint(2, 5))]
            count += sum(len(s.split()) if self.lang not in NO_SPACE else len(s) // 2 for s in sentences)
            paragraphs.append(("" if self.lang in NO_SPACE else " ").join(sentences))
        return "\n\n".join(paragraphs)


@dataclass
class Planted:
    """Documents per output file and their labels."""

    files: dict[str, list[dict]] = field(default_factory=dict)
    labels: list[dict] = field(default_factory=list)

    def add(self, file: str, record: dict, kind: str, lang: str, expect: str, **extra) -> None:
        self.files.setdefault(file, []).append(record)
        self.labels.append({"id": record.get("id"), "file": file, "lang": lang, "kind": kind,
                            "expect": expect, **extra})


def _pii(rng: random.Random) -> str:
    user = rng.choice(["jean.dupont", "maria_garcia", "k.schmidt", "li.wei", "a.kumar"])
    return rng.choice([f"{user}{rng.randint(1, 99)}@example.{rng.choice(['com', 'fr', 'org'])}",
                       f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                       f"+33 6 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
                       f"({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
                       "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))])


def _near_copy(rng: random.Random, gen: TextGenerator, text: str) -> str:
    """One or two word substitutions, or a short sentence appended: a small edit of a long text."""
    if rng.random() < 0.3:
        return text + ("" if gen.lang in NO_SPACE else " ") + gen.sentence()
    words = list(text) if gen.lang in NO_SPACE else text.split(" ")
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(words))
        words[i] = gen.word() if gen.lang not in NO_SPACE else rng.choice(gen.content)[0]
    return ("" if gen.lang in NO_SPACE else " ").join(words)


def _plant_language(p: Planted, rng: random.Random, lang: str, n: int) -> None:
    gen = TextGenerator(rng, lang)
    formats = ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"]
    for i in range(n):
        doc_id = f"{lang}-{i:05d}"
        size = rng.randint(150, 320) if i % 4 == 0 else rng.randint(40, 300)
        text, extra = gen.document(size), {}
        if i % 20 == 3:
            secret = _pii(rng)
            text = text.replace("\n\n", f"\n\n{gen.sentence()} {secret}\n\n", 1) if "\n\n" in text else f"{text} {secret}"
            extra["pii"] = [secret]
        if i % 10 == 5:
            lines = rng.sample(BOILERPLATE[lang], min(2, len(BOILERPLATE[lang])))
            text = f"{lines[0]}\n{text}\n" + "\n".join(lines[1:])
            extra["boilerplate"] = lines
        record = {"id": doc_id, "text": text, "url": f"https://{lang}.example.org/{i}", "date": f"20{10 + i % 14}-0{1 + i % 9}-1{i % 10}"}
        if i % 25 == 7 and lang in ("fr", "es", "de", "pt"):
            record["text"] = text.encode("utf-8").decode("cp1252", errors="replace")
            extra["mojibake"] = True
            extra["original"] = text
        if i % 9 == 2:  # a few plain-text files per language
            p.add(f"books/{lang}/{doc_id}.txt", {"id": f"books/{lang}/{doc_id}.txt", "text": text}, "clean", lang, "keep", **extra)
            continue
        p.add(f"web/{lang}-{i % 4}.{formats[i % 4]}", record, "clean", lang, "keep", **extra)
        if i % 12 == 1 and not extra:
            p.add("web_mirror/mirror.jsonl.zst", {**record, "id": f"{doc_id}-copy"}, "exact_dup", lang, "drop", dup_of=doc_id)
        if i % 12 == 4 and size >= 150 and not extra:
            near = {**record, "id": f"{doc_id}-near", "text": _near_copy(rng, gen, text)}
            p.add(f"web_mirror/near-{lang}.jsonl", near, "near_dup", lang, "drop", dup_of=doc_id)
    _plant_low_quality(p, rng, gen, lang)


def _plant_low_quality(p: Planted, rng: random.Random, gen: TextGenerator, lang: str) -> None:
    file = f"crawl/{lang}-lowq.jsonl"
    p.add(file, {"id": f"{lang}-short", "text": gen.sentence()}, "short", lang, "drop")
    p.add(file, {"id": f"{lang}-repeat", "text": " ".join([gen.sentence()] * 25)}, "repetitive", lang, "drop")
    flagged = _lists("flagged_words.json")[lang]
    spam = " ".join(f"{gen.sentence()} {rng.choice(flagged)} {rng.choice(flagged)} {rng.choice(flagged)}" for _ in range(8))
    p.add(file, {"id": f"{lang}-spam", "text": spam}, "flagged", lang, "drop")


def _plant_mixed(p: Planted, rng: random.Random, n: int) -> None:
    for lang in WRONG_LANGUAGES:
        gen = TextGenerator(rng, lang)
        for i in range(max(n // 4, 3)):
            p.add("crawl/mixed.jsonl", {"id": f"{lang}-{i:05d}", "text": gen.document(rng.randint(60, 250))},
                  "wrong_lang", lang, "drop")
    for i in range(4):
        soup = " ".join("".join(rng.choice("#$%&*@!^~<>|{}[]+=_/\\0123456789") for _ in range(rng.randint(3, 12)))
                        for _ in range(rng.randint(40, 120)))
        p.add("crawl/mixed.jsonl", {"id": f"soup-{i}", "text": soup}, "garbage", "und", "drop")


CODE_PY = '''"""{title} utilities."""

import math


def {fn}(values, scale={scale}):
    """Return the {title} of values, scaled."""
    total = 0.0
    for index, value in enumerate(values):
        if value is None:
            continue
        total += math.{op}(abs(value) + index) * scale
    return total


class {cls}:
    def __init__(self, name, size={size}):
        self.name = name
        self.size = size
        self.items = []

    def add(self, item):
        if len(self.items) >= self.size:
            raise ValueError(f"{{self.name}} is full ({{self.size}} items)")
        self.items.append(item)
        return {fn}([item], scale=self.size)
'''
CODE_JS = '''// {title} helpers
export function {fn}(items, limit = {size}) {{
  const out = [];
  for (let i = 0; i < items.length && out.length < limit; i++) {{
    if (items[i] !== null && items[i] !== undefined) {{
      out.push(Math.{op}(items[i]) * {scale});
    }}
  }}
  return out;
}}

export class {cls} {{
  constructor(name) {{
    this.name = name;
    this.count = 0;
  }}
  increment(step = 1) {{
    this.count += step;
    return {fn}([this.count]);
  }}
}}
'''


def _plant_code(p: Planted, rng: random.Random, n: int) -> None:
    names = ["parse", "reduce", "merge", "score", "filter", "render", "encode", "sample", "rank", "index"]
    for i in range(max(n // 5, 4)):
        fn, title = f"{rng.choice(names)}_{rng.choice(names)}_{i}", rng.choice(["Signal", "Vector", "Cache", "Graph"])
        values = {"fn": fn, "title": title, "cls": f"{title}Store{i}", "scale": rng.randint(2, 9),
                  "size": rng.randint(8, 256), "op": rng.choice(["sqrt", "log1p", "floor"])}
        ext, template = (".py", CODE_PY) if i % 2 == 0 else (".js", CODE_JS)
        if ext == ".js":
            values["fn"] = fn.replace("_", "")
        p.add(f"code/module_{i:03d}{ext}", {"id": f"code/module_{i:03d}{ext}", "text": template.format(**values)},
              "code", "code", "keep")
    minified = "var a=" + ",".join(f"x{i}=function(){{return {i}*{i}}}" for i in range(300)) + ";"
    p.add("code/bundle.min.js", {"id": "code/bundle.min.js", "text": minified}, "code_minified", "code", "drop")


def build_corpus(seed: int = 0, docs_per_language: int = 150) -> Planted:
    rng = random.Random(seed)
    planted = Planted()
    for lang in KEPT_LANGUAGES:
        _plant_language(planted, rng, lang, docs_per_language)
    _plant_mixed(planted, rng, docs_per_language)
    _plant_code(planted, rng, docs_per_language)
    return planted


MALFORMED = [  # (raw line, reject reason) appended to crawl/mixed.jsonl
    (b'{"id": "bad-json", "text": "an unterminated string}', "bad_json"),
    (b'{"id": "bad-utf8", "text": "caf\xe9 cr\xe8me"}', "invalid_utf8"),
    (b'{"id": "no-text", "body": "the text is in the wrong field"}', "missing_text"),
    (b'{"id": "int-text", "text": 12345}', "non_string_text"),
    (b'["a", "list", "not", "an", "object"]', "not_an_object"),
]


def write_corpus(out_dir: Path, seed: int = 0, docs_per_language: int = 150) -> list[Path]:
    """Write `out_dir/raw/**` and `out_dir/labels.jsonl`; returns the raw files, sorted."""
    out_dir = Path(out_dir)
    raw = out_dir / "raw"
    planted = build_corpus(seed, docs_per_language)
    for name, records in planted.files.items():
        _write_file(raw / name, records)
    mixed = raw / "crawl" / "mixed.jsonl"
    first = len(planted.files["crawl/mixed.jsonl"]) + 1
    with open(mixed, "ab") as fh:
        for line, _ in MALFORMED:
            fh.write(line + b"\n")
    for offset, (_, reason) in enumerate(MALFORMED):
        planted.labels.append({"file": "crawl/mixed.jsonl", "line": first + offset, "kind": "malformed",
                               "reason": reason, "expect": "reject"})
    (raw / "crawl" / "empty.jsonl").write_bytes(b"")
    (raw / "crawl" / "latin1.txt").write_bytes("Un texte enregistré en latin-1, pas en UTF-8.\n".encode("latin-1"))
    planted.labels.append({"file": "crawl/empty.jsonl", "line": 0, "kind": "malformed", "reason": "empty_file", "expect": "reject"})
    planted.labels.append({"file": "crawl/latin1.txt", "line": 1, "kind": "malformed", "reason": "invalid_utf8", "expect": "reject"})
    write_jsonl(out_dir / "labels.jsonl", planted.labels)
    return sorted(p for p in raw.rglob("*") if p.is_file())


def _write_file(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith(".parquet"):
        columns = sorted({k for r in records for k in r})
        table = pa.table({c: [r.get(c) for r in records] for c in columns})
        pq.write_table(table, path, compression="zstd")
    elif ".jsonl" in name:
        write_jsonl(path, records)
    else:  # one document per file: .txt and source code
        (text,) = [r["text"] for r in records]
        path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write graine's synthetic multilingual raw corpus.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs-per-language", type=int, default=150)
    args = parser.parse_args(argv)
    files = write_corpus(args.out_dir, args.seed, args.docs_per_language)
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} files ({size / 1e6:.1f} MB) under {args.out_dir / 'raw'}; "
          f"labels in {args.out_dir / 'labels.jsonl'}; clean.inputs: ['{args.out_dir / 'raw'}/**/*']")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
