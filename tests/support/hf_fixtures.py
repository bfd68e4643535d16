"""Hugging Face fixtures built in the test, offline: a small random `BloomForCausalLM` saved by transformers
itself (fp32, bf16 or fp16; one file or shards), and a byte-level BPE `tokenizer.json` trained with
`tokenizers` on a corpus's documents, saved with the config files AutoTokenizer reads."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from training.hf_compat import import_transformers

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

import_transformers()  # before any of transformers' models is imported


def save_bloom(folder: Path, *, vocab_size: int, num_layers: int = 2, hidden_size: int = 32, num_heads: int = 2,
               dtype: str = "fp32", max_shard_size: str | None = None, seed: int = 0) -> Path:
    """A random BloomForCausalLM (std 0.2 so that its logits are far from uniform) saved as safetensors."""
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(seed)
    config = BloomConfig(vocab_size=vocab_size, hidden_size=hidden_size, n_layer=num_layers, n_head=num_heads,
                         initializer_range=0.2, layer_norm_epsilon=1e-5, hidden_dropout=0.0, attention_dropout=0.0,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = BloomForCausalLM(config).eval()
    with torch.no_grad():  # LayerNorms and biases away from 1 and 0, so a mapping mistake shows
        for name, p in model.named_parameters():
            if "layernorm" in name or "ln_f" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model = model.to(DTYPES[dtype])
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(folder), safe_serialization=True, **kwargs)
    return folder


def load_bloom(folder: Path):
    from transformers import BloomForCausalLM

    return BloomForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()


def train_byte_bpe(folder: Path, texts: Iterable[str], vocab_size: int) -> Path:
    """A byte-level BPE (BLOOM's kind of tokenizer) with <unk> <s> </s> <pad> as ids 0-3, saved as a
    Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    names = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(names))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                              "add_prefix_space": False, **names}))
    return folder
