"""BLOOM family sizes: the one table `model.size` is looked up in.

Shapes are those of the released checkpoints' `config.json` (bigscience/bloom-560m ... bigscience/bloom:
`n_layer`, `hidden_size`, `n_head`). Every released model uses the same tokenizer: 250,680 tokens, embedding
rows padded to 250,880 (`BLOOM_VOCAB_SIZE`) so the matrix splits evenly over tensor-parallel ranks. graine
trains its own tokenizer, so a preset does not fix the vocabulary: `model.vocab_size=0` takes the
tokenizer's, and `model.vocab_size=250880` reproduces BLOOM's embedding exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOOM_VOCAB_SIZE = 250_880


@dataclass(frozen=True)
class ModelPreset:
    num_layers: int
    hidden_size: int
    num_heads: int


PRESETS: dict[str, ModelPreset] = {
    # Small enough to show learning on two CPU cores within the demo budget.
    "demo": ModelPreset(num_layers=2, hidden_size=64, num_heads=4),
    "560m": ModelPreset(num_layers=24, hidden_size=1024, num_heads=16),
    "1b1": ModelPreset(num_layers=24, hidden_size=1536, num_heads=16),
    "1b7": ModelPreset(num_layers=24, hidden_size=2048, num_heads=16),
    "3b": ModelPreset(num_layers=30, hidden_size=2560, num_heads=32),
    "7b1": ModelPreset(num_layers=30, hidden_size=4096, num_heads=32),
    # 112 heads: not a power of two, so ALiBi uses the interleaved extra slopes (see alibi_slopes).
    "176b": ModelPreset(num_layers=70, hidden_size=14336, num_heads=112),
}
