"""Stage `tokenizer`: an α-sampled training sample, a SentencePiece model, its Hugging Face twin, a report.

Steps (one task each): `sample` writes `tokenizer/sample/`; `train` predicts memory, trains
`tokenizer.model` and exports `tokenizer.json` (+ config and special-token map); `report` measures
bytes/token and tokens/word per language on documents held out of the sample. The sample and the held-out
documents follow from clean/'s documents in their canonical (key) order and the seed only, so every file
here is the same whatever the task counts and executors upstream (README, Reproducibility).

The model keeps text exactly: identity normalisation, no dummy prefix, whitespace runs kept (whitespace-
only pieces allowed, so code indentation gets its own pieces), newline as a user-defined piece, digits
split and byte fallback, so decode(encode(x)) == x for every string without U+2581 ("▁").
Other stages use `load_tokenizer`, `tokenizer_info` and `tokenizer_hash`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import sentencepiece as spm

from core.config import param
from core.errors import ConfigError, DataError
from core.fs import write_atomic, write_json
from core.stage import Stage, Step, TaskContext
from data_prep import pretrained_tokenizer
from data_prep.hf_tokenizer import load_proto, write_hf_files
from data_prep.sampling import build_sample
from data_prep.shards import read_documents


@dataclass(kw_only=True)
class TokenizerConfig:
    vocab_size: int = param(8000, ge=300, le=1_000_000, help="vocabulary size, special tokens included")
    model_type: Literal["bpe", "unigram"] = param("bpe", help="SentencePiece model type")
    alpha: float = param(0.3, ge=0.0, le=1.0, help="language sampling exponent: p_l ∝ n_l^alpha")
    sample_bytes: int = param(50_000_000, ge=1000, help="maximum size of the training sample")
    heldout_fraction: float = param(0.02, ge=0.0, le=0.5, help="share of clean/ kept out of the sample for the report")
    user_defined_symbols: list[str] = param(default_factory=list, help="extra special tokens")
    split_digits: bool = param(True, help="split numbers into single digits")
    byte_fallback: bool = param(True, help="encode unknown characters as bytes (no <unk>)")
    max_memory_gb: float = param(0.0, ge=0.0, help="memory the training may use; 0 = the job's or machine's")
    threads: int = param(0, ge=0, help="training threads; 0 = the job's CPUs")
    character_coverage: float = param(0.9995, ge=0.9, le=1.0, help="share of sample characters given their own "
                                      "piece; the rarest fall back to bytes")
    split_by_whitespace: bool = param(True, help="pieces never span a space (false lets pieces like 'a▁b' form)")
    from_pretrained: str = param("", help="a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json, "
                                 "e.g. a local bloom-560m) published unchanged instead of training one; the "
                                 "SentencePiece keys above are then unused")


log = logging.getLogger("graine.tokenizer")

SPECIALS = {"unk": (0, "<unk>"), "bos": (1, "<s>"), "eos": (2, "</s>"), "pad": (3, "<pad>")}
NEWLINE = "\n"  # sample sentences are lines, so the newline is added as its own piece
GB = 1 << 30

# Peak RSS of SentencePiece training ≈ BASE + PER_BYTE × sample bytes (+ a term in the vocabulary).
# tests/benchmarks/bench_tokenizer.py measured BPE at 29-55 MB per sample MB (1-16 MB samples of
# generated text, whose random words make SentencePiece's word table large; real text needs less);
# the constants round that up so the prediction errs on the side of refusing.
MEMORY_BASE = 300 << 20
MEMORY_PER_BYTE = {"bpe": 40, "unigram": 60}
MEMORY_PER_PIECE = 4096


# ------------------------------------------------------------------------------------------- resources
def job_cpus() -> int:
    """CPUs this task may use: Slurm's allocation, the local executor's share of this machine
    (GRAINE_TASK_CPUS: it runs several tasks side by side), else the process's affinity mask."""
    for var in ("SLURM_CPUS_PER_TASK", "GRAINE_TASK_CPUS", "SLURM_CPUS_ON_NODE"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    return len(os.sched_getaffinity(0))


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):
            return int(text)
    return None


def job_memory() -> tuple[int, str]:
    """(bytes, where the figure comes from): Slurm's allocation, the cgroup limit, or available RAM."""
    if os.environ.get("SLURM_MEM_PER_NODE", "").isdigit():
        return int(os.environ["SLURM_MEM_PER_NODE"]) << 20, "SLURM_MEM_PER_NODE"
    if os.environ.get("SLURM_MEM_PER_CPU", "").isdigit():
        return (int(os.environ["SLURM_MEM_PER_CPU"]) << 20) * job_cpus(), "SLURM_MEM_PER_CPU x cpus"
    limit = _cgroup_limit()
    if limit is not None:
        return limit, "the cgroup memory limit"
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages, "the machine's available memory"


def predict_memory(sample_bytes: int, vocab_size: int, model_type: str) -> int:
    return MEMORY_BASE + MEMORY_PER_BYTE[model_type] * sample_bytes + MEMORY_PER_PIECE * vocab_size


def check_memory(cfg, sample_bytes: int) -> None:
    """Refuse, before any work, a sample whose training would not fit; name the setting to lower."""
    t = cfg.tokenizer
    need = predict_memory(sample_bytes, t.vocab_size, t.model_type)
    if t.max_memory_gb > 0:
        have, where = int(t.max_memory_gb * GB), "tokenizer.max_memory_gb"
    else:
        have, where = job_memory()
    if need > have:
        fit = max(0, (have - MEMORY_BASE - MEMORY_PER_PIECE * t.vocab_size) // MEMORY_PER_BYTE[t.model_type])
        raise ConfigError(
            f"tokenizer training on a {sample_bytes / 1e6:.1f} MB sample needs about {need / GB:.2f} GB but "
            f"{where} allows {have / GB:.2f} GB; lower tokenizer.sample_bytes (currently {t.sample_bytes}) "
            f"to at most {fit} or raise tokenizer.max_memory_gb / the job's memory")
    log.info("tokenizer training: predicted peak %.2f GB of %.2f GB (%s)", need / GB, have / GB, where)


# ----------------------------------------------------------------------------------------------- steps
def sample_step(ctx: TaskContext) -> None:
    t, clean = ctx.cfg.tokenizer, ctx.input_dir("clean")
    # An adopted tokenizer is not trained: the sample is only written for its held-out documents (the report).
    memory = None if t.from_pretrained else (lambda n: check_memory(ctx.cfg, n))
    build_sample(lambda: read_documents(clean), ctx.out_dir / "sample", alpha=t.alpha, sample_bytes=t.sample_bytes,
                 seed=ctx.cfg.seed, heldout_fraction=t.heldout_fraction, check_memory=memory, progress=ctx.progress)


def trainer_args(cfg, sample: Path, prefix: Path, threads: int) -> dict:
    t = cfg.tokenizer
    user = [NEWLINE] + [s for s in t.user_defined_symbols if s != NEWLINE]
    clash = [s for s in user if s in {name for _, name in SPECIALS.values()}]
    if clash:
        raise ConfigError(f"tokenizer.user_defined_symbols lists {clash[0]!r}, which is already a special token; "
                          "remove it")
    return dict(
        input=str(sample), model_prefix=str(prefix), model_type=t.model_type, vocab_size=t.vocab_size,
        character_coverage=t.character_coverage, byte_fallback=t.byte_fallback, split_digits=t.split_digits,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, split_by_whitespace=t.split_by_whitespace,
        user_defined_symbols=user, num_threads=threads, max_sentence_length=1 << 16,
        input_sentence_size=0, shuffle_input_sentence=False, hard_vocab_limit=True,
        minloglevel=1,
        # "<" starts every control and byte piece; as a piece of its own it keeps them out of the
        # HF unigram lattice's best paths (hf_tokenizer.unigram_score).
        **({"required_chars": "<"} if t.model_type == "unigram" else {}),
        **{f"{k}_id": i for k, (i, _) in SPECIALS.items()},
        **{f"{k}_piece": p for k, (_, p) in SPECIALS.items()},
    )


def write_reproducible(trained: Path, final: Path) -> None:
    """Drop what SentencePiece records about where and how it ran (absolute paths, thread count), so the
    same config and sample give a byte-identical model whatever the run directory or the job's CPUs."""
    proto = load_proto(trained)
    spec = proto.trainer_spec
    del spec.input[:]
    spec.input.append("sample/sample.txt")
    spec.model_prefix = "tokenizer"
    spec.ClearField("num_threads")
    write_atomic(final, proto.SerializeToString(deterministic=True))
    trained.unlink()


def train_step(ctx: TaskContext) -> None:
    cfg, out = ctx.cfg, ctx.out_dir
    if cfg.tokenizer.from_pretrained:
        files = pretrained_tokenizer.adopt(cfg.tokenizer.from_pretrained, out)
        log.info("adopted the tokenizer of %s unchanged (%s)", cfg.tokenizer.from_pretrained,
                 ", ".join(p.name for p in files))
        return
    sample = out / "sample" / "sample.txt"
    if not sample.is_file():
        raise DataError(f"{sample} is missing; the tokenizer's sample step did not finish, re-run the stage")
    check_memory(cfg, sample.stat().st_size)
    threads = cfg.tokenizer.threads or job_cpus()
    prefix = out / ".tokenizer.tmp"
    spm.set_random_generator_seed(cfg.seed)
    log.info("training SentencePiece %s, vocab %d, %d threads", cfg.tokenizer.model_type,
             cfg.tokenizer.vocab_size, threads)
    try:
        spm.SentencePieceTrainer.train(**trainer_args(cfg, sample, prefix, threads))
    except RuntimeError as exc:
        raise DataError(f"SentencePiece training on {sample} failed: {exc}; a vocabulary smaller than the "
                        "sample's characters needs a larger tokenizer.vocab_size or a lower "
                        "tokenizer.character_coverage, one too large for the sample a lower tokenizer.vocab_size "
                        "or a larger tokenizer.sample_bytes") from None
    vocab = Path(f"{prefix}.vocab")
    write_atomic(out / "tokenizer.vocab", vocab.read_bytes())  # durably, like every other file here
    vocab.unlink()
    write_reproducible(Path(f"{prefix}.model"), out / "tokenizer.model")
    write_hf_files(out / "tokenizer.model", out)


def report_step(ctx: TaskContext) -> None:
    if ctx.cfg.tokenizer.from_pretrained:
        return pretrained_report(ctx)
    out = ctx.out_dir
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    per_lang: dict[str, list[int]] = {}  # lang -> [bytes, tokens, words, docs, mismatches]
    with open(out / "sample" / "heldout.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            ids = sp.encode(rec["text"])
            row = per_lang.setdefault(rec["lang"], [0, 0, 0, 0, 0])
            row[0] += len(rec["text"].encode("utf-8", "surrogatepass"))
            row[1] += len(ids)
            row[2] += len(rec["text"].split())
            row[3] += 1
            row[4] += sp.decode(ids) != rec["text"]
    shares = json.loads((out / "sample" / "shares.json").read_text())
    report = {
        "vocab_size": sp.get_piece_size(), "model_type": ctx.cfg.tokenizer.model_type,
        "tokenizer_hash": tokenizer_hash(out),
        "heldout": {k: {"documents": r[3], "bytes": r[0], "tokens": r[1],
                        "bytes_per_token": round(r[0] / max(r[1], 1), 3),
                        "tokens_per_word": round(r[1] / max(r[2], 1), 3), "roundtrip_failures": r[4]}
                    for k, r in sorted(per_lang.items())},
        "sample": {k: v["share"] for k, v in shares["languages"].items()},
        "sample_target": {k: v["target_share"] for k, v in shares["languages"].items()},
        "sample_bytes": shares["bytes"],
    }
    write_json(out / "report.json", report, indent=2, sort_keys=False)


def pretrained_report(ctx: TaskContext) -> None:
    """report.json of an adopted tokenizer: bytes/token, tokens/word, round-trip failures and the share
    of bytes encoded as the unknown token, per language, on clean/'s held-out documents."""
    out = ctx.out_dir
    rows = pretrained_tokenizer.heldout_rows(out, out / "sample" / "heldout.jsonl")
    shares = json.loads((out / "sample" / "shares.json").read_text())
    info = tokenizer_info(out)
    report = {
        "vocab_size": info.vocab_size, "model_type": "pretrained", "from_pretrained": ctx.cfg.tokenizer.from_pretrained,
        "tokenizer_hash": info.hash, "eod_id": info.eod_id,
        "heldout": {k: {"documents": r[3], "bytes": r[0], "tokens": r[1],
                        "bytes_per_token": round(r[0] / max(r[1], 1), 3),
                        "tokens_per_word": round(r[1] / max(r[2], 1), 3), "roundtrip_failures": r[4],
                        "unknown_byte_rate": round(r[5] / max(r[0], 1), 6)}
                    for k, r in sorted(rows.items())},
        "unknown_byte_rate": round(sum(r[5] for r in rows.values()) / max(sum(r[0] for r in rows.values()), 1), 6),
        "sample": {k: v["share"] for k, v in shares["languages"].items()},
        "sample_target": {k: v["target_share"] for k, v in shares["languages"].items()},
        "sample_bytes": shares["bytes"],
    }
    write_json(out / "report.json", report, indent=2, sort_keys=False)


def summary(out: Path) -> str:
    try:
        report = json.loads((Path(out) / "report.json").read_text())
    except (OSError, ValueError):
        return "no report.json"
    langs = report.get("heldout", {})
    bpt = ", ".join(f"{k} {v['bytes_per_token']:.2f}" for k, v in list(langs.items())[:6])
    return (f"vocab {report['vocab_size']} ({report['model_type']}), sample {report['sample_bytes'] / 1e6:.1f} MB "
            f"over {len(report['sample'])} languages; bytes/token: {bpt}")


# ------------------------------------------------------------------------------------------------- API
@dataclass(frozen=True)
class TokenizerInfo:
    vocab_size: int
    eod_id: int  # </s>, appended after every document
    pad_id: int
    bos_id: int
    unk_id: int
    hash: str


def model_path(tokenizer_dir: Path) -> Path:
    """The file that identifies the tokenizer: graine's `tokenizer.model`, or an adopted `tokenizer.json`."""
    path = Path(tokenizer_dir) / "tokenizer.model"
    if not path.is_file():
        if is_pretrained(tokenizer_dir):
            return Path(tokenizer_dir) / pretrained_tokenizer.TOKENIZER_JSON
        raise DataError(f"{path} is missing; run the tokenizer stage (`graine run tokenizer`)")
    return path


def is_pretrained(tokenizer_dir: Path) -> bool:
    """Whether the folder holds an adopted Hugging Face tokenizer (tokenizer.json without tokenizer.model)."""
    d = Path(tokenizer_dir)
    return not (d / "tokenizer.model").is_file() and (d / pretrained_tokenizer.TOKENIZER_JSON).is_file()


def load_tokenizer(tokenizer_dir: Path):
    """An encoder with `encode(texts, num_threads=...) -> ids per text`: SentencePiece's processor, or
    the `tokenizers` batch encoder of an adopted tokenizer."""
    if is_pretrained(tokenizer_dir):
        return pretrained_tokenizer.BatchEncoder(Path(tokenizer_dir))
    return spm.SentencePieceProcessor(model_file=str(model_path(tokenizer_dir)))


@cache
def _hash_file(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def tokenizer_hash(tokenizer_dir: Path) -> str:
    """Identity of a tokenizer: the hash of its `tokenizer.model` bytes (an adopted one's `tokenizer.json`)."""
    path = model_path(tokenizer_dir)
    st = path.stat()
    return _hash_file(str(path), st.st_mtime_ns, st.st_size)


def tokenizer_info(tokenizer_dir: Path) -> TokenizerInfo:
    if is_pretrained(tokenizer_dir):
        tok = pretrained_tokenizer.load(Path(tokenizer_dir))
        ids = pretrained_tokenizer.special_ids(Path(tokenizer_dir), tok)
        return TokenizerInfo(vocab_size=tok.get_vocab_size(with_added_tokens=True), eod_id=ids["eos"],
                             pad_id=ids["pad"], bos_id=ids["bos"], unk_id=ids["unk"],
                             hash=tokenizer_hash(tokenizer_dir))
    sp = load_tokenizer(tokenizer_dir)
    return TokenizerInfo(vocab_size=sp.get_piece_size(), eod_id=sp.eos_id(), pad_id=sp.pad_id(),
                         bos_id=sp.bos_id(), unk_id=sp.unk_id(), hash=tokenizer_hash(tokenizer_dir))


def adopted_files(cfg) -> list[Path]:
    """The adopted tokenizer's files (tokenizer.from_pretrained), hashed into the stage's record: a changed
    tokenizer.json makes the stage stale. None when graine trains its own."""
    if not cfg.tokenizer.from_pretrained:
        return []
    try:
        return pretrained_tokenizer.source_files(cfg.tokenizer.from_pretrained)
    except ConfigError as exc:
        raise DataError(str(exc)) from None


STAGE = Stage(
    name="tokenizer",
    needs=("clean",),
    sections=("seed", "tokenizer"),
    steps=(Step("sample", sample_step), Step("train", train_step), Step("report", report_step)),
    description="α-sampled SentencePiece tokenizer with byte fallback and an identical Hugging Face export "
                "(or an adopted Hugging Face tokenizer: tokenizer.from_pretrained)",
    summary=summary,
    external_inputs=adopted_files,
    config={"tokenizer": TokenizerConfig},
)
