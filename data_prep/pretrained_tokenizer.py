"""An existing Hugging Face tokenizer adopted unchanged (`tokenizer.from_pretrained: <dir>`), e.g. BLOOM's
byte-level BPE `tokenizer.json` (250,680 tokens), for continued pretraining of a released model.

The folder's `tokenizer.json` and its config files are published byte for byte: the ids a released model
was trained with are the ids the run trains with. Encoding goes through the `tokenizers` library's batch
path (`encode_batch`, Rust, deterministic: a document's ids depend on its text only), with no special tokens
added; the end-of-document id is the tokenizer's EOS, read from its config files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from core.errors import ConfigError, DataError

TOKENIZER_JSON = "tokenizer.json"
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
SPECIAL_NAMES = ("eos", "bos", "pad", "unk")


def source_files(folder: str | Path, key: str = "tokenizer.from_pretrained") -> list[Path]:
    """The files adopted from `folder` (tokenizer.json first); ConfigError naming `key` when unusable."""
    folder = Path(os.path.expandvars(str(folder))).expanduser()
    if not (folder / TOKENIZER_JSON).is_file():
        raise ConfigError(f"{key}={str(folder)!r}: {folder / TOKENIZER_JSON} does not exist; point it at a "
                          "Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json), e.g. a local "
                          "download of bigscience/bloom-560m")
    return [folder / TOKENIZER_JSON] + [folder / n for n in CONFIG_FILES if (folder / n).is_file()]


def adopt(folder: str | Path, out: Path) -> list[Path]:
    """Copy the tokenizer files of `folder` into `out` unchanged, after checking they load and name an EOS."""
    files = source_files(folder)
    folder = files[0].parent
    tok = load(folder)
    specials = special_ids(files[0].parent, tok)
    if specials["eos"] < 0:
        raise ConfigError(f"tokenizer.from_pretrained={str(folder)!r}: its tokenizer_config.json / "
                          "special_tokens_map.json name no eos_token in the vocabulary, and graine ends every "
                          "document with it; add \"eos_token\" to its tokenizer_config.json")
    written = []
    for path in files:
        shutil.copyfile(path, out / path.name)
        written.append(out / path.name)
    return written


def load(folder: Path):
    from tokenizers import Tokenizer

    path = Path(folder) / TOKENIZER_JSON
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 (the Rust library raises plain Exceptions)
        raise DataError(f"{path} is not a tokenizer.json the `tokenizers` library can load ({exc})") from None


def _token_name(value) -> str | None:
    if isinstance(value, dict):  # {"content": "</s>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_ids(folder: Path, tok) -> dict[str, int]:
    """{eos, bos, pad, unk: id or -1} from tokenizer_config.json, then special_tokens_map.json, then the
    BPE model's unk_token."""
    names: dict[str, str] = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):  # the later file wins
        try:
            conf = json.loads((Path(folder) / file).read_text())
        except (OSError, ValueError):
            continue
        for name in SPECIAL_NAMES:
            if (token := _token_name(conf.get(f"{name}_token"))) is not None:
                names[name] = token
    ids = {}
    for name in SPECIAL_NAMES:
        token_id = tok.token_to_id(names[name]) if name in names else None
        ids[name] = -1 if token_id is None else token_id
    return ids


def file_hash(folder: Path) -> str:
    """Identity of an adopted tokenizer: the hash of its tokenizer.json bytes (as tokenizer.model's for
    graine's own)."""
    return hashlib.sha256((Path(folder) / TOKENIZER_JSON).read_bytes()).hexdigest()[:16]


class BatchEncoder:
    """`encode(texts, num_threads)` -> ids per text, like SentencePiece's processor, through `tokenizers`'
    batch path. `num_threads` is not used: the Rust pool is sized once per process (RAYON_NUM_THREADS),
    and ids never depend on it."""

    def __init__(self, folder: Path):
        self.tok = load(folder)

    def encode(self, texts: list[str], num_threads: int = 0) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]


def heldout_rows(folder: Path, heldout: Path) -> dict[str, list[int]]:
    """{lang: [bytes, tokens, words, docs, roundtrip failures, unknown bytes]} over the held-out documents;
    unknown bytes are those of the text spans encoded as the unk token (0 for a byte-level BPE)."""
    tok = load(folder)
    unk = special_ids(folder, tok)["unk"]
    per_lang: dict[str, list[int]] = {}
    with open(heldout, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    encodings = tok.encode_batch([r["text"] for r in records], add_special_tokens=False)
    for rec, enc in zip(records, encodings):
        text = rec["text"]
        row = per_lang.setdefault(rec["lang"], [0, 0, 0, 0, 0, 0])
        row[0] += len(text.encode("utf-8", "surrogatepass"))
        row[1] += len(enc.ids)
        row[2] += len(text.split())
        row[3] += 1
        row[4] += tok.decode(enc.ids, skip_special_tokens=False) != text
        row[5] += sum(len(text[a:b].encode("utf-8", "surrogatepass"))
                      for tid, (a, b) in zip(enc.ids, enc.offsets) if tid == unk)
    return per_lang
