"""Causal flash attention with BLOOM's ALiBi bias computed in the kernel (Triton), forward and backward.

No T x T tensor exists at any point: each program holds one tile of scores in registers, adds
`slope_h * (j - i)` to it, and keeps a running softmax (the flash-attention recurrence). The softmax runs in
base 2 (`exp2` is one instruction): scores and slopes are pre-multiplied by log2(e), and the saved
log-sum-exp is in base 2 as well.

Layout: reads the fused QKV projection (B, T, H, 3, D) in place, writes O as (B, T, H*D) so the output
projection needs no copy, and the backward writes dQ, dK, dV straight into one (B, T, H, 3, D) gradient.

Backward without atomics: one kernel walks the query blocks for each key block (dK, dV), another walks the
key blocks for each query block (dQ); both recompute the probabilities from the saved log-sum-exp.
Causality skips every tile above the diagonal; only the tiles on it are masked element by element.
Head dimensions that are not powers of two (BLOOM-1b1: 96, 3b: 80) are padded to one inside the kernel.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:
    _HAS_TRITON = False

LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if _HAS_TRITON:

    def _configs(choices):
        if _interpreting():  # the CPU interpreter runs every config; one small one keeps tests fast
            return [triton.Config({"BLOCK_A": 32, "BLOCK_B": 16}, num_warps=4, num_stages=1)]
        return [triton.Config({"BLOCK_A": a, "BLOCK_B": b}, num_warps=w, num_stages=s) for a, b, w, s in choices]

    # Tuned once per head size (the first call's sequence length decides; a training run has one).
    # (BLOCK_A, BLOCK_B, warps, stages). BLOCK_A is the block a program owns (queries in forward and dQ, keys in
    # dK/dV), BLOCK_B the block it loops over. Few choices: autotuning compiles each once per shape.
    _FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3)])
    _BWD_CONFIGS = _configs([(128, 32, 4, 3), (128, 32, 8, 3), (64, 32, 4, 3), (128, 64, 8, 2)])

    @triton.jit
    def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, offs_m, offs_d, slope, qk_scale, T, s_t, lo, hi,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, DIAGONAL: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
        offs_n0 = tl.arange(0, BLOCK_N)
        d_mask = offs_d[None, :] < HEAD_DIM
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + offs_n0
            kv_mask = (offs_n[:, None] < T) & d_mask
            k = tl.load(k_base + offs_n[:, None] * s_t + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            s += slope * (offs_n[None, :] - offs_m[:, None]).to(tl.float32)
            if DIAGONAL:
                s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + offs_n[:, None] * s_t + offs_d[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
        return acc, l_i, m_i

    @triton.autotune(configs=_FWD_CONFIGS, key=["HEAD_DIM", "DOT_PRECISION"])
    @triton.jit
    def _fwd_kernel(QKV, OUT, LSE, SLOPES, qk_scale, T, s_b, s_t, s_h, so_b, so_t, so_h,
                    H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
        # Last query blocks first: they have the most key blocks to visit (causal), and starting the long
        # programs early keeps the SMs busy at the end of the launch.
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        slope = tl.load(SLOPES + h) * 1.4426950408889634  # base-2 domain, like qk_scale
        offs_m = pid_m * BLOCK_A + tl.arange(0, BLOCK_A)
        offs_d = tl.arange(0, BLOCK_D)
        base = QKV + b.to(tl.int64) * s_b + h * s_h
        q_mask = (offs_m[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
        q = tl.load(base + offs_m[:, None] * s_t + offs_d[None, :], mask=q_mask, other=0.0)
        m_i = tl.full([BLOCK_A], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_A], tl.float32)
        acc = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
        diag = pid_m * BLOCK_A
        # Tiles strictly below the diagonal need no mask; the diagonal ones do.
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, base + HEAD_DIM, base + 2 * HEAD_DIM, offs_m, offs_d,
                                  slope, qk_scale, T, s_t, 0, diag, HEAD_DIM, BLOCK_B, False, DOT_PRECISION)
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, base + HEAD_DIM, base + 2 * HEAD_DIM, offs_m, offs_d,
                                  slope, qk_scale, T, s_t, diag, tl.minimum(diag + BLOCK_A, T), HEAD_DIM,
                                  BLOCK_B, True, DOT_PRECISION)
        acc = acc / l_i[:, None]
        o_ptrs = OUT + b.to(tl.int64) * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :]
        tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=q_mask)
        tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < T)

    @triton.jit
    def _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, offs_n, offs_d, slope, qk_scale, T,
                   s_t, so_t, lo, hi, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, DIAGONAL: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
        offs_m0 = tl.arange(0, BLOCK_M)
        d_mask = offs_d[None, :] < HEAD_DIM
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + offs_m0
            row_ok = offs_m < T
            q = tl.load(q_base + offs_m[:, None] * s_t + offs_d[None, :], mask=row_ok[:, None] & d_mask, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * so_t + offs_d[None, :], mask=row_ok[:, None] & d_mask,
                         other=0.0)
            # +inf for rows past the end makes their probabilities exactly 0.
            lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_ptr + offs_m, mask=row_ok, other=0.0)
            s_t_ = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
            s_t_ += slope * (offs_n[:, None] - offs_m[None, :]).to(tl.float32)
            p_t = tl.math.exp2(s_t_ - lse[None, :])
            if DIAGONAL:
                p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
        return dk, dv

    @triton.autotune(configs=_BWD_CONFIGS, key=["HEAD_DIM", "DOT_PRECISION"])
    @triton.jit
    def _bwd_dkdv_kernel(QKV, DO, LSE, DELTA, DQKV, SLOPES, qk_scale, sm_scale, T, s_b, s_t, s_h,
                         so_b, so_t, so_h, H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
        pid_n = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        slope = tl.load(SLOPES + h) * 1.4426950408889634
        offs_n = pid_n * BLOCK_A + tl.arange(0, BLOCK_A)
        offs_d = tl.arange(0, BLOCK_D)
        base = QKV + b.to(tl.int64) * s_b + h * s_h
        do_base = DO + b.to(tl.int64) * so_b + h * so_h
        kv_mask = (offs_n[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(base + HEAD_DIM + offs_n[:, None] * s_t + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(base + 2 * HEAD_DIM + offs_n[:, None] * s_t + offs_d[None, :], mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
        lse_ptr = LSE + bh.to(tl.int64) * T
        delta_ptr = DELTA + bh.to(tl.int64) * T
        diag = pid_n * BLOCK_A
        # Queries on the diagonal block see part of these keys; every later query sees all of them.
        dk, dv = _dkdv_tile(dk, dv, k, v, base, do_base, lse_ptr, delta_ptr, offs_n, offs_d, slope, qk_scale,
                            T, s_t, so_t, diag, tl.minimum(diag + BLOCK_A, T), HEAD_DIM, BLOCK_B, True,
                            DOT_PRECISION)
        dk, dv = _dkdv_tile(dk, dv, k, v, base, do_base, lse_ptr, delta_ptr, offs_n, offs_d, slope, qk_scale,
                            T, s_t, so_t, diag + BLOCK_A, T, HEAD_DIM, BLOCK_B, False, DOT_PRECISION)
        out = DQKV + b.to(tl.int64) * s_b + h * s_h + offs_n[:, None] * s_t + offs_d[None, :]
        tl.store(out + HEAD_DIM, (dk * sm_scale).to(DQKV.dtype.element_ty), mask=kv_mask)
        tl.store(out + 2 * HEAD_DIM, dv.to(DQKV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _dq_tile(dq, q, do, lse, delta, k_base, v_base, offs_m, offs_d, slope, qk_scale, T, s_t, lo, hi,
                 HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, DIAGONAL: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
        offs_n0 = tl.arange(0, BLOCK_N)
        d_mask = offs_d[None, :] < HEAD_DIM
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + offs_n0
            kv_mask = (offs_n[:, None] < T) & d_mask
            k = tl.load(k_base + offs_n[:, None] * s_t + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * s_t + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            s += slope * (offs_n[None, :] - offs_m[:, None]).to(tl.float32)
            p = tl.math.exp2(s - lse[:, None])
            if DIAGONAL:
                p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        return dq

    @triton.autotune(configs=_BWD_CONFIGS, key=["HEAD_DIM", "DOT_PRECISION"])
    @triton.jit
    def _bwd_dq_kernel(QKV, DO, LSE, DELTA, DQKV, SLOPES, qk_scale, sm_scale, T, s_b, s_t, s_h,
                       so_b, so_t, so_h, H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                       DOT_PRECISION: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest programs first, as in forward
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        slope = tl.load(SLOPES + h) * 1.4426950408889634
        offs_m = pid_m * BLOCK_A + tl.arange(0, BLOCK_A)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < T
        mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
        base = QKV + b.to(tl.int64) * s_b + h * s_h
        q = tl.load(base + offs_m[:, None] * s_t + offs_d[None, :], mask=mask, other=0.0)
        do = tl.load(DO + b.to(tl.int64) * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :],
                     mask=mask, other=0.0)
        lse = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
        diag = pid_m * BLOCK_A
        dq = _dq_tile(dq, q, do, lse, delta, base + HEAD_DIM, base + 2 * HEAD_DIM, offs_m, offs_d, slope,
                      qk_scale, T, s_t, 0, diag, HEAD_DIM, BLOCK_B, False, DOT_PRECISION)
        dq = _dq_tile(dq, q, do, lse, delta, base + HEAD_DIM, base + 2 * HEAD_DIM, offs_m, offs_d, slope,
                      qk_scale, T, s_t, diag, tl.minimum(diag + BLOCK_A, T), HEAD_DIM, BLOCK_B, True,
                      DOT_PRECISION)
        out = DQKV + b.to(tl.int64) * s_b + h * s_h + offs_m[:, None] * s_t + offs_d[None, :]
        tl.store(out, (dq * sm_scale).to(DQKV.dtype.element_ty), mask=mask)


def _strides(qkv: torch.Tensor, num_heads: int) -> tuple[int, int, int, int]:
    batch, seq, width = qkv.shape
    head_dim = width // (3 * num_heads)
    return head_dim, seq * width, width, 3 * head_dim  # head_dim, batch, token and head strides


def _grid(block_key: str, seq: int, bh: int):
    return lambda meta: (triton.cdiv(seq, meta[block_key]), bh)


class TritonAlibiAttention(torch.autograd.Function):
    """qkv (B, T, H*3*D), BLOOM layout -> (B, T, H*D); causal, ALiBi slopes (H,) fp32."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, slopes: torch.Tensor, num_heads: int) -> torch.Tensor:
        qkv = qkv.contiguous()
        batch, seq, _ = qkv.shape
        head_dim, s_b, s_t, s_h = _strides(qkv, num_heads)
        out = torch.empty(batch, seq, num_heads * head_dim, device=qkv.device, dtype=qkv.dtype)
        lse = torch.empty(batch * num_heads, seq, device=qkv.device, dtype=torch.float32)
        sm_scale = 1.0 / math.sqrt(head_dim)
        # fp32 inputs get exact fp32 products; bf16/fp16 use the tensor cores.
        precision = "ieee" if qkv.dtype == torch.float32 else "tf32"
        _fwd_kernel[_grid("BLOCK_A", seq, batch * num_heads)](
            qkv, out, lse, slopes, sm_scale * LOG2E, seq, s_b, s_t, s_h, seq * num_heads * head_dim,
            num_heads * head_dim, head_dim, H=num_heads, HEAD_DIM=head_dim,
            BLOCK_D=max(16, triton.next_power_of_2(head_dim)), DOT_PRECISION=precision)
        ctx.save_for_backward(qkv, out, lse, slopes)
        ctx.num_heads = num_heads
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        qkv, out, lse, slopes = ctx.saved_tensors
        num_heads = ctx.num_heads
        batch, seq, _ = qkv.shape
        head_dim, s_b, s_t, s_h = _strides(qkv, num_heads)
        grad_out = grad_out.contiguous()
        # delta_i = sum_d O_id * dO_id: the softmax backward's row term, computed once for both kernels.
        delta = (out.float() * grad_out.float()).view(batch, seq, num_heads, head_dim).sum(-1)
        delta = delta.transpose(1, 2).contiguous().view(batch * num_heads, seq)
        dqkv = torch.empty_like(qkv)
        sm_scale = 1.0 / math.sqrt(head_dim)
        precision = "ieee" if qkv.dtype == torch.float32 else "tf32"
        args = (qkv, grad_out, lse, delta, dqkv, slopes, sm_scale * LOG2E, sm_scale, seq, s_b, s_t, s_h,
                seq * num_heads * head_dim, num_heads * head_dim, head_dim)
        meta = dict(H=num_heads, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                    DOT_PRECISION=precision)
        _bwd_dkdv_kernel[_grid("BLOCK_A", seq, batch * num_heads)](*args, **meta)
        _bwd_dq_kernel[_grid("BLOCK_A", seq, batch * num_heads)](*args, **meta)
        return dqkv, None, None


def attention_triton(qkv: torch.Tensor, num_heads: int, dropout_p: float = 0.0) -> torch.Tensor:
    if not _HAS_TRITON:
        raise ImportError("the Triton attention kernel needs the 'triton' package (pip install triton)")
    if dropout_p:
        raise ValueError("the Triton attention kernel has no attention dropout; set model.attention_dropout=0 "
                         "or model.attention=sdpa")
    from kernels.attention import alibi_slopes, attention_sdpa

    if not (qkv.is_cuda or _interpreting()):  # a model built for GPU but run on CPU (tests, export)
        return attention_sdpa(qkv, num_heads)
    return TritonAlibiAttention.apply(qkv, alibi_slopes(num_heads, qkv.device), num_heads)
