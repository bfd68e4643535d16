"""Causal attention with BLOOM's ALiBi bias: the PyTorch paths (eager reference, SDPA, flex_attention).

Every path takes the fused QKV projection in BLOOM's layout, (batch, seq, heads * 3 * head_dim) with each
head's q, k and v side by side, and returns (batch, seq, heads * head_dim) ready for the output projection.
The Triton flash-attention kernel (kernels/triton_attention.py) has the same signature.

ALiBi adds `slope_h * (j - i)` to the score of query i and key j. BLOOM and Hugging Face add `slope_h * j`
instead; the two differ by a constant per row, which softmax ignores, and `j - i` keeps the numbers small
(so fp32 stays exact near the diagonal, where the probability mass is).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)
def _alibi_slopes_cached(num_heads: int, device: str) -> torch.Tensor:
    def geometric(n: int) -> list[float]:
        # For n a power of two, BLOOM's slopes are 2^(-8/n), 2^(-16/n), ..., 2^(-8).
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = geometric(closest)
    if closest < num_heads:
        # Other head counts (BLOOM-176B has 112) take the powers of two below, then every other slope of
        # the next power of two: the odd exponents, which interleave with the ones already used.
        slopes += geometric(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32, device=device)


def alibi_slopes(num_heads: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """BLOOM's per-head ALiBi slopes as fp32, cached per device (never cast with the model's dtype)."""
    return _alibi_slopes_cached(num_heads, str(torch.device(device)))


def split_qkv(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, H*3*D) in BLOOM's per-head layout -> q, k, v views of shape (B, H, T, D)."""
    batch, seq, width = qkv.shape
    fused = qkv.view(batch, seq, num_heads, 3, width // (3 * num_heads))
    return tuple(fused[:, :, :, i].transpose(1, 2) for i in range(3))


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D)."""
    batch, heads, seq, dim = out.shape
    return out.transpose(1, 2).reshape(batch, seq, heads * dim)


def alibi_bias(num_heads: int, seq_len: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, T, T) additive mask: slope * (j - i) on and below the diagonal, -inf above it."""
    pos = torch.arange(seq_len, device=device)
    rel = (pos[None, :] - pos[:, None]).float()
    bias = alibi_slopes(num_heads, device)[:, None, None] * rel
    return bias.masked_fill(rel > 0, float("-inf")).to(dtype)


def attention_eager(qkv: torch.Tensor, num_heads: int, dropout_p: float = 0.0) -> torch.Tensor:
    """The reference: scores materialised, softmax in fp32 (what BloomForCausalLM computes)."""
    q, k, v = split_qkv(qkv, num_heads)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    scores = scores + alibi_bias(num_heads, q.shape[2], q.device)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return merge_heads(torch.matmul(probs, v))


def attention_sdpa(qkv: torch.Tensor, num_heads: int, dropout_p: float = 0.0) -> torch.Tensor:
    """scaled_dot_product_attention with the ALiBi bias as a float mask: a T x T tensor per head, and
    the memory-efficient kernel rather than flash (flash takes no arbitrary bias)."""
    q, k, v = split_qkv(qkv, num_heads)
    mask = alibi_bias(num_heads, q.shape[2], q.device, q.dtype)[None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return merge_heads(out)


# ------------------------------------------------------------------------------------ flex_attention
try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    _HAS_FLEX = True
except ImportError:  # torch < 2.5
    _HAS_FLEX = False


def has_flex_attention() -> bool:
    return _HAS_FLEX


@functools.lru_cache(maxsize=16)
def _causal_block_mask(seq_len: int, device: str):
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return create_block_mask(causal, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    # Compiled once per process: uncompiled flex_attention materialises the scores (a debugging path).
    return torch.compile(flex_attention, dynamic=False)


def attention_flex(qkv: torch.Tensor, num_heads: int, dropout_p: float = 0.0, compiled: bool = True) -> torch.Tensor:
    """flex_attention with ALiBi as a score_mod and a causal block mask (blocks above the diagonal skipped)."""
    if dropout_p:
        raise ValueError("flex_attention has no attention dropout; set model.attention_dropout=0 or model.attention=sdpa")
    q, k, v = split_qkv(qkv, num_heads)
    block_mask = _causal_block_mask(q.shape[2], str(q.device))
    fn = _compiled_flex() if compiled else flex_attention
    return merge_heads(fn(q, k, v, score_mod=_alibi_score_mod(num_heads, str(q.device)), block_mask=block_mask))


@functools.lru_cache(maxsize=16)
def _alibi_score_mod(num_heads: int, device: str):
    # One function object per (heads, device): a fresh closure each call would make torch.compile recompile.
    slopes = alibi_slopes(num_heads, device)

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    return alibi
