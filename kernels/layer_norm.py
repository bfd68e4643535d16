"""LayerNorm: torch's, apex's FusedLayerNorm, or a Triton kernel (one row per program forward; the
backward folds the weight and bias gradients into per-program partial sums instead of atomics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.triton_attention import _HAS_TRITON, _interpreting

if _HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _ln_fwd_kernel(X, Y, W, B, MEAN, RSTD, C, eps, BLOCK_C: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        ok = cols < C
        x = tl.load(X + row * C + cols, mask=ok, other=0.0).to(tl.float32)
        mean = tl.sum(x, 0) / C
        xc = tl.where(ok, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / C + eps)
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(Y + row * C + cols, (xc * rstd * w + b).to(Y.dtype.element_ty), mask=ok)
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _ln_bwd_kernel(X, DY, DX, W, MEAN, RSTD, DW_PART, DB_PART, N, C, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)  # so the loop's row * C below is 64-bit
        cols = tl.arange(0, BLOCK_C)
        ok = cols < C
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_C], tl.float32)
        db = tl.zeros([BLOCK_C], tl.float32)
        for row in range(pid, N, tl.num_programs(0)):
            off = row * C + cols
            x = tl.load(X + off, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(DY + off, mask=ok, other=0.0).to(tl.float32)
            xhat = tl.where(ok, (x - tl.load(MEAN + row)) * tl.load(RSTD + row), 0.0)
            wdy = w * dy
            c1 = tl.sum(xhat * wdy, 0) / C
            c2 = tl.sum(wdy, 0) / C
            tl.store(DX + off, ((wdy - (xhat * c1 + c2)) * tl.load(RSTD + row)).to(DX.dtype.element_ty), mask=ok)
            dw += dy * xhat
            db += dy
        tl.store(DW_PART + pid * C + cols, dw, mask=ok)
        tl.store(DB_PART + pid * C + cols, db, mask=ok)


class TritonLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows, width = x2.shape
        y = torch.empty_like(x2)
        mean = torch.empty(rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        block = triton.next_power_of_2(width)
        _ln_fwd_kernel[(rows,)](x2, y, weight, bias, mean, rstd, width, eps, BLOCK_C=block,
                                num_warps=min(max(block // 256, 1), 8))
        ctx.save_for_backward(x2, weight, mean, rstd)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        rows, width = x2.shape
        dy2 = dy.reshape(rows, width).contiguous()
        dx = torch.empty_like(x2)
        # A few programs per SM, each summing its rows' dW/dB in registers; torch adds the partials.
        programs = 4 if _interpreting() else min(rows, 4 * torch.cuda.get_device_properties(x2.device).multi_processor_count)
        dw_part = torch.empty(programs, width, device=x2.device, dtype=torch.float32)
        db_part = torch.empty_like(dw_part)
        block = triton.next_power_of_2(width)
        _ln_bwd_kernel[(programs,)](x2, dy2, dx, weight, mean, rstd, dw_part, db_part, rows, width, BLOCK_C=block,
                                    num_warps=min(max(block // 256, 1), 8))
        return dx.view(dy.shape), dw_part.sum(0).to(weight.dtype), db_part.sum(0).to(weight.dtype), None


class LayerNorm(nn.Module):
    """nn.LayerNorm's parameters and names (weight, bias), with the Triton kernel on GPU tensors when asked."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, backend: str = "torch"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "triton" and (x.is_cuda or _interpreting()):
            return TritonLayerNormFunction.apply(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, backend={self.backend}"


def make_layer_norm(hidden_size: int, eps: float, backend: str) -> nn.Module:
    """A LayerNorm module for the backend chosen by kernels.dispatch (same parameter names for all)."""
    if backend == "apex":
        from apex.normalization import FusedLayerNorm  # presence checked by kernels.dispatch

        return FusedLayerNorm(hidden_size, eps=eps)
    return LayerNorm(hidden_size, eps, backend)
