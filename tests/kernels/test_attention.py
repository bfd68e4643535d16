"""Causal ALiBi attention: every path against the float64 eager reference, outputs and gradients."""

import pytest
import torch

from kernels.attention import (
    alibi_slopes,
    attention_eager,
    attention_flex,
    attention_sdpa,
    has_flex_attention,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")



def rel_err(out, ref):
    """max |out - ref| / max |ref|, in float64."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


SHAPES = [(2, 40, 3, 16), (1, 33, 2, 24), (2, 17, 6, 32)]  # (batch, seq, heads, head_dim); 24 pads to 32


def _reference(qkv, heads, grad):
    x = qkv.detach().double().requires_grad_()
    out = attention_eager(x, heads)
    out.backward(grad.double())
    return out.detach(), x.grad


def _run(fn, qkv, heads, grad):
    x = qkv.detach().clone().requires_grad_()
    out = fn(x, heads)
    out.backward(grad.to(out.dtype))
    return out.detach(), x.grad


def test_slopes_match_bloom_for_any_head_count():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** (-i) for i in range(1, 9)]))
    # 6 heads: the 4 of a power of two, then the odd powers of the 8-head sequence (BLOOM's interleave).
    expected = [2 ** (-2.0 * i) for i in range(1, 5)] + [2 ** (-1.0), 2 ** (-3.0)]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected))
    assert alibi_slopes(112).shape == (112,) and len(set(alibi_slopes(112).tolist())) == 112


def test_eager_is_causal_and_uses_alibi():
    torch.manual_seed(0)
    qkv = torch.randn(1, 8, 2 * 3 * 4, dtype=torch.float64)
    full = attention_eager(qkv, 2)
    changed = qkv.clone()
    changed[:, 5:] += 1.0  # future tokens must not change earlier outputs
    assert torch.equal(attention_eager(changed, 2)[:, :5], full[:, :5])
    # With q = k = 0 the weights are pure ALiBi: softmax(slope * (j - i)) over j <= i.
    zero_qk = qkv.clone().view(1, 8, 2, 3, 4)
    zero_qk[:, :, :, :2] = 0
    out = attention_eager(zero_qk.view(1, 8, -1), 2).view(1, 8, 2, 4)
    slope = alibi_slopes(2)[0].double()
    w = torch.softmax(slope * (torch.arange(8) - 7).double(), 0)
    torch.testing.assert_close(out[0, 7, 0], (w[:, None] * zero_qk[0, :, 0, 2]).sum(0))


@pytest.mark.parametrize("shape", SHAPES)
def test_sdpa_matches_reference_fp32(shape):
    torch.manual_seed(1)
    b, t, h, d = shape
    qkv, grad = torch.randn(b, t, h * 3 * d), torch.randn(b, t, h * d)
    ref_out, ref_grad = _reference(qkv, h, grad)
    out, g = _run(attention_sdpa, qkv, h, grad)
    assert rel_err(out, ref_out) <= 1e-5 and rel_err(g, ref_grad) <= 1e-5


def test_sdpa_bf16_within_1e_2():
    torch.manual_seed(2)
    qkv, grad = torch.randn(2, 64, 4 * 3 * 32), torch.randn(2, 64, 4 * 32)
    ref_out, ref_grad = _reference(qkv.bfloat16().float(), 4, grad.bfloat16().float())
    out, g = _run(attention_sdpa, qkv.bfloat16(), 4, grad.bfloat16())
    assert rel_err(out, ref_out) <= 1e-2 and rel_err(g, ref_grad) <= 1e-2


@pytest.mark.skipif(not has_flex_attention(), reason="torch without flex_attention")
def test_flex_forward_matches_reference():
    # flex_attention has no CPU backward; its gradients are checked by the GPU test and the benchmark.
    torch.manual_seed(3)
    qkv = torch.randn(2, 40, 6 * 3 * 16)
    ref = attention_eager(qkv.double(), 6)
    assert rel_err(attention_flex(qkv, 6, compiled=False), ref) <= 1e-5


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 300, 4, 64), (1, 257, 3, 128), (1, 200, 2, 80)])
def test_triton_matches_reference_bf16_gpu(shape):
    from kernels.triton_attention import attention_triton

    _check_bf16_gpu(attention_triton, shape)


@requires_cuda
@pytest.mark.gpu
def test_flex_matches_reference_bf16_gpu():
    _check_bf16_gpu(attention_flex, (2, 256, 4, 64))


def _check_bf16_gpu(fn, shape):
    torch.manual_seed(5)
    b, t, h, d = shape
    qkv = torch.randn(b, t, h * 3 * d, device="cuda").bfloat16()
    grad = torch.randn(b, t, h * d, device="cuda").bfloat16()
    ref_out, ref_grad = _reference(qkv.float(), h, grad.float())
    out, g = _run(fn, qkv, h, grad)
    assert rel_err(out, ref_out) <= 1e-2 and rel_err(g, ref_grad) <= 1e-2
