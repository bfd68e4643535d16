"""A Hugging Face `tokenizer.json` built from a SentencePiece model so that both give the same ids.

Why each piece is what it is:
- SentencePiece BPE encodes a whole normalised string at once, merging at each step the adjacent pair
  whose concatenation is the best-scoring piece (leftmost on ties). The `tokenizers` BPE does the same
  with merge ranks, so the merges are every split of every piece into two pieces, ranked by the score of
  the piece they make. There is no pre-tokenizer: no piece spans a word boundary anyway, and splitting
  would change nothing but speed.
- The normaliser is the `identity` rule plus SentencePiece's space escaping: " " becomes "▁".
  `add_dummy_prefix` is off in graine's models (tokenizer.py) because the HF equivalent (Metaspace
  "first") skips the prefix when a text starts with a space and re-adds it after user-defined tokens.
- Unknown characters fall back to `<0xXX>` byte pieces in both.
- `<s>`, `</s>`, `<pad>`, `<unk>` written in a document are plain text for SentencePiece (control
  pieces are never matched in text), so the HF tokenizer is told to split special tokens too.
- User-defined pieces (the newline and the config's) are matched in text by both, as added tokens here.
"""

from __future__ import annotations

import json
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from core.errors import DataError
from core.fs import write_atomic

Piece = sp_pb2.ModelProto.SentencePiece
SPECIAL_TYPES = (Piece.CONTROL, Piece.UNKNOWN)
UNREACHABLE = -1e9


def load_proto(model_path: Path) -> sp_pb2.ModelProto:
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    return proto


def bpe_merges(proto: sp_pb2.ModelProto) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a normal piece, best-scoring product first."""
    normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == Piece.NORMAL}
    scored = []
    for piece, pid in normal.items():
        score = proto.pieces[pid].score
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                scored.append((-score, pid, normal[left], normal[right], left, right))
    scored.sort()
    return [(left, right) for *_, left, right in scored]


def unigram_score(p) -> float:
    # SentencePiece never matches control, byte or unknown pieces in text; the HF lattice holds every
    # piece, so those get a score no path prefers. It can always avoid them because "<", the first
    # character of each, is a required character of graine's unigram models (tokenizer.py).
    return p.score if p.type in (Piece.NORMAL, Piece.USER_DEFINED) else UNREACHABLE


def check_normalizer(proto: sp_pb2.ModelProto, model_path: Path) -> None:
    spec = proto.normalizer_spec
    if spec.name != "identity" or spec.add_dummy_prefix or spec.remove_extra_whitespaces:
        raise DataError(f"{model_path}: only models trained by graine (identity normalisation, no dummy prefix, "
                        "whitespace kept) can be exported with identical ids; re-run `graine run tokenizer`")


def build_hf_tokenizer(model_path: Path) -> Tokenizer:
    """The `tokenizers` equivalent of the SentencePiece model at `model_path`."""
    proto = load_proto(model_path)
    check_normalizer(proto, model_path)
    pieces = list(proto.pieces)
    unk = next(p.piece for p in pieces if p.type == Piece.UNKNOWN)
    byte_fallback = proto.trainer_spec.byte_fallback
    if proto.trainer_spec.model_type == sp_pb2.TrainerSpec.BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        model = models.BPE(vocab=vocab, merges=bpe_merges(proto), unk_token=unk, fuse_unk=True,
                           byte_fallback=byte_fallback)
    elif proto.trainer_spec.model_type == sp_pb2.TrainerSpec.UNIGRAM:
        unk_id = next(i for i, p in enumerate(pieces) if p.type == Piece.UNKNOWN)
        model = models.Unigram([(p.piece, unigram_score(p)) for p in pieces], unk_id=unk_id,
                               byte_fallback=byte_fallback)
    else:
        raise DataError(f"{model_path}: model type {proto.trainer_spec.model_type} has no HF export; "
                        "set tokenizer.model_type to bpe or unigram")
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in pieces if p.type in SPECIAL_TYPES])
    tok.add_tokens([AddedToken(p.piece, special=False, normalized=False)
                    for p in pieces if p.type == Piece.USER_DEFINED])
    tok.encode_special_tokens = True
    return tok


def special_piece(proto: sp_pb2.ModelProto, spec_id: int) -> str | None:
    return proto.pieces[spec_id].piece if 0 <= spec_id < len(proto.pieces) else None


def write_hf_files(model_path: Path, out_dir: Path, model_max_length: int = 1_000_000_000) -> list[Path]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for `AutoTokenizer`."""
    proto = load_proto(model_path)
    tok = build_hf_tokenizer(model_path)
    t = proto.trainer_spec
    specials = {"unk_token": special_piece(proto, t.unk_id), "bos_token": special_piece(proto, t.bos_id),
                "eos_token": special_piece(proto, t.eos_id), "pad_token": special_piece(proto, t.pad_id)}
    specials = {k: v for k, v in specials.items() if v is not None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        # SentencePiece's encode adds nothing; the pretraining data appends </s> itself.
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        # "<s>" inside a document is text, as it is for SentencePiece.
        "split_special_tokens": True,
        "model_max_length": model_max_length,
    }
    files = {"tokenizer.json": tok.to_str(pretty=True), "tokenizer_config.json": json.dumps(config, indent=2),
             "special_tokens_map.json": json.dumps(specials, indent=2)}
    written = []
    for name, text in files.items():
        write_atomic(out_dir / name, text + "\n")
        written.append(out_dir / name)
    return written
