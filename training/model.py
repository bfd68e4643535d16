"""The BLOOM architecture (Le Scao et al., 2022), in one file, beside its config (pipeline.config.ModelConfig).

    tokens -> word embeddings -> LayerNorm -> L x [pre-LN block] -> final LayerNorm -> logits (tied embeddings)
    block:  x = x + Dense(Attention_ALiBi(QKV(LN(x))));  x = x + Dense_4h_to_h(GeLU_tanh(Dense_h_to_4h(LN(x))))

What makes it BLOOM rather than GPT-2:
- no position embeddings: ALiBi adds `slope_h * (j - i)` to attention scores, with BLOOM's slopes
  (kernels.attention.alibi_slopes, including head counts that are not powers of two);
- a LayerNorm right after the word embeddings (it stabilised the 176B run);
- a vocabulary of 250,880 rows (tokenizer size padded to a multiple), tied to the output projection.

Module and parameter names are those of transformers' `BloomModel` (`word_embeddings`, `h.N.self_attention.
query_key_value`, ...), and the fused QKV weight keeps BLOOM's per-head interleaving [q_h, k_h, v_h], so
exporting to `BloomForCausalLM` is a rename (training/hf_mapping.py).

Fused ops (attention, LayerNorm, bias-GeLU, cross-entropy) come from kernels/ through kernels.dispatch,
chosen by `model.kernels` / `model.attention`.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.errors import ConfigError
from kernels.bias_gelu import bias_gelu
from kernels.cross_entropy import linear_cross_entropy
from kernels.dispatch import KernelChoice, KernelUnavailable, attention_function, select_kernels
from kernels.layer_norm import make_layer_norm
from training.config import ModelConfig


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, kernels: KernelChoice):
        super().__init__()
        self.num_heads = cfg.num_heads
        # Output columns ordered (head, {q,k,v}, head_dim): BLOOM's layout, so one head's q, k, v are adjacent.
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout
        self.attend = attention_function(kernels.attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        return self.dense(self.attend(self.query_key_value(x), self.num_heads, dropout_p))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, kernels: KernelChoice):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, 4 * cfg.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * cfg.hidden_size, cfg.hidden_size)
        self.gelu_backend = kernels.bias_gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The first bias is added inside the fused GeLU: one pass over the 4h-wide activation instead of two.
        h = F.linear(x, self.dense_h_to_4h.weight)
        return self.dense_4h_to_h(bias_gelu(h, self.dense_h_to_4h.bias, self.gelu_backend))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, kernels: KernelChoice):
        super().__init__()
        self.input_layernorm = make_layer_norm(cfg.hidden_size, cfg.layer_norm_eps, kernels.layer_norm)
        self.self_attention = Attention(cfg, kernels)
        self.post_attention_layernorm = make_layer_norm(cfg.hidden_size, cfg.layer_norm_eps, kernels.layer_norm)
        self.mlp = MLP(cfg, kernels)
        self.hidden_dropout = cfg.hidden_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pre-LN; the residual is the block input, not the normalised one
        # (BLOOM's apply_residual_connection_post_layernorm=False).
        x = x + F.dropout(self.self_attention(self.input_layernorm(x)), self.hidden_dropout, self.training)
        return x + F.dropout(self.mlp(self.post_attention_layernorm(x)), self.hidden_dropout, self.training)


class BloomModel(nn.Module):
    """BLOOM decoder with a tied output projection.

    forward(input_ids, labels=None): logits (B, T, padded_vocab) without labels; with labels, the mean
    cross-entropy over labels != -100. Labels are aligned with input_ids (labels[:, t] is the token that
    should follow input_ids[:, t], Megatron's convention); the model does not shift them.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, seed: int | None = None, init: bool = True):
        super().__init__()
        self.cfg = cfg
        try:
            self.kernels = select_kernels(cfg.kernels, cfg.attention)
        except KernelUnavailable as exc:
            raise ConfigError(str(exc)) from None
        if cfg.hidden_size % cfg.num_heads:
            raise ConfigError(f"model.hidden_size={cfg.hidden_size} is not divisible by model.num_heads="
                              f"{cfg.num_heads}; pick a head count that divides it")
        self.vocab_size = cfg.vocab_size or vocab_size
        self.padded_vocab_size = cfg.padded_vocab_size(vocab_size)
        self.word_embeddings = nn.Embedding(self.padded_vocab_size, cfg.hidden_size)
        self.word_embeddings_layernorm = make_layer_norm(cfg.hidden_size, cfg.layer_norm_eps, self.kernels.layer_norm)
        self.h = nn.ModuleList(Block(cfg, self.kernels) for _ in range(cfg.num_layers))
        self.ln_f = make_layer_norm(cfg.hidden_size, cfg.layer_norm_eps, self.kernels.layer_norm)
        # Recompute each block in backward instead of storing its activations (train.activation_checkpointing).
        self.activation_checkpointing = False
        if init:  # off when built on the meta device or under zero.Init (training.engine.build_model)
            self.reset_parameters(torch.initial_seed() if seed is None else seed)
        if cfg.compile:
            # Per block and in place: parameter names stay unchanged (no `_orig_mod.` prefix in checkpoints),
            # and one compiled graph serves every layer.
            for block in self.h:
                block.compile()

    def reset_parameters(self, seed: int) -> None:
        """Megatron's init, which BLOOM used: N(0, init_std) everywhere, output projections of the residual
        branches scaled by 1/sqrt(2 * num_layers) so the residual stream's variance does not grow with depth.

        Each parameter is drawn from its own generator, seeded by (`seed`, its name) (`init_parameter`):
        its values do not depend on the order parameters are created in, on the device, or on whether
        the model is built whole, on the meta device or partitioned under ZeRO-3's zero.Init."""
        for name, p in self.named_parameters():
            init_parameter(self.cfg, name, p, seed)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.word_embeddings_layernorm(self.word_embeddings(input_ids))
        for block in self.h:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.ln_f(x)
        if labels is None:
            return F.linear(x, self.word_embeddings.weight)
        # Chunked projection + loss: the (tokens x vocab) fp32 logits are never held for the whole batch.
        return linear_cross_entropy(x.flatten(0, 1), self.word_embeddings.weight, labels.flatten(),
                                    chunk_tokens=self.cfg.loss_chunk_tokens, backend=self.kernels.cross_entropy)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in backward (train.activation_checkpointing): memory for one extra forward."""
        self.activation_checkpointing = enabled

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: matrices (projections, embeddings) decay; biases and LayerNorm parameters do not."""
        decay, no_decay = [], []
        for p in self.parameters():  # parameters() yields the tied embedding once
            if p.requires_grad:  # ZeRO-3 partitions keep the parameter's shape in ds_shape
                (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def num_parameters(self) -> int:
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token, for TFLOP/s and MFU:

            6 * (12 * L * h^2 + V * h)  +  12 * L * h * T

        The first term is the matrix products with weights (QKV 3h^2, attention output h^2, MLP 8h^2 per
        layer, and the V x h output projection), 2 FLOPs per multiply-add, x3 for forward + backward. The
        second is attention's QK^T and PV: 2 * 2 * T * h per layer per token forward, x3 for backward,
        counted over the full T x T as Megatron-LM and the BLOOM paper do (causal kernels skip half of it;
        MFU here is comparable with theirs, not an upper bound on it). Biases, norms, softmax and the
        embedding lookup are left out; activation recomputation is not counted (it is overhead, not model
        FLOPs).
        """
        from training.plan import ModelShape, flops_per_token

        shape = ModelShape(self.cfg.num_layers, self.cfg.hidden_size, self.cfg.num_heads, self.padded_vocab_size)
        return flops_per_token(shape, seq_len)


def parameter_seed(seed: int, name: str) -> int:
    """The seed of parameter `name`'s generator: a hash, so that neighbouring run seeds or names give
    unrelated streams."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def initial_value(cfg: ModelConfig, name: str, shape: torch.Size | tuple[int, ...], seed: int) -> torch.Tensor:
    """Parameter `name`'s initial value in fp32 on the CPU (its own generator: see reset_parameters)."""
    if name.endswith("layernorm.weight") or name.startswith("ln_f.weight"):
        return torch.ones(shape)
    if name.endswith("bias"):
        return torch.zeros(shape)
    std = cfg.init_std
    if name.endswith(("self_attention.dense.weight", "dense_4h_to_h.weight")):
        std /= math.sqrt(2 * cfg.num_layers)
    generator = torch.Generator().manual_seed(parameter_seed(seed, name))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


@torch.no_grad()
def init_parameter(cfg: ModelConfig, name: str, p: torch.Tensor, seed: int) -> None:
    """Set `p` (any device and dtype) to its initial value, drawn in fp32 then rounded once."""
    p.copy_(initial_value(cfg, name, p.shape, seed))
