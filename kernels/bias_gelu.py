"""Bias add + GeLU (tanh approximation, as BLOOM and Megatron use) in one pass, forward and backward.

The MLP's first projection runs without its bias; this kernel adds it inside the activation, so the
4x-wide intermediate is written once in forward and read once in backward. The bias gradient is the
column sum of the input gradient (torch, in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.triton_attention import _HAS_TRITON, _interpreting

SQRT_2_OVER_PI = 0.7978845608028654

if _HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _tanh(z):
        # 1 - 2 / (e^{2z} + 1): saturates correctly at +-inf and needs only exp.
        return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)

    @triton.jit
    def _bias_gelu_fwd_kernel(X, B, Y, numel, C, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < numel
        x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32) + tl.load(B + offs % C, mask=ok, other=0.0).to(tl.float32)
        t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
        tl.store(Y + offs, (0.5 * x * (1.0 + t)).to(Y.dtype.element_ty), mask=ok)

    @triton.jit
    def _bias_gelu_bwd_kernel(X, B, DY, DX, numel, C, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < numel
        x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32) + tl.load(B + offs % C, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=ok, other=0.0).to(tl.float32)
        t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
        grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
        tl.store(DX + offs, (dy * grad).to(DX.dtype.element_ty), mask=ok)


class TritonBiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        x = x.contiguous()
        y = torch.empty_like(x)
        block = 1024
        grid = (triton.cdiv(x.numel(), block),)
        _bias_gelu_fwd_kernel[grid](x, bias, y, x.numel(), bias.numel(), BLOCK=block)
        ctx.save_for_backward(x, bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dx = torch.empty_like(x)
        block = 1024
        _bias_gelu_bwd_kernel[(triton.cdiv(x.numel(), block),)](x, bias, dy.contiguous(), dx, x.numel(), bias.numel(),
                                                                  BLOCK=block)
        dbias = dx.reshape(-1, bias.numel()).sum(0, dtype=torch.float32).to(bias.dtype)
        return dx, dbias


def bias_gelu_torch(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The reference: gelu_tanh(x + bias)."""
    return F.gelu(x + bias, approximate="tanh")


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    if backend == "triton" and (x.is_cuda or _interpreting()):
        return TritonBiasGelu.apply(x, bias)
    return bias_gelu_torch(x, bias)
