"""Triton kernels against their references on CPU, through Triton's interpreter.

Not collected by `make test` directly (the interpreter must be on before triton is imported);
tests/kernels/test_triton_interpreted.py runs this file with TRITON_INTERPRET=1 in a child process.
The interpreter computes bf16 matrix products wrongly (triton 3.9), so attention is checked in fp32 here and
in bf16 by the GPU tests; the element-wise kernels are checked in both.
"""

import os

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


def rel_err(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("shape", [(2, 40, 3, 16), (1, 33, 2, 24), (2, 17, 6, 32), (1, 1, 2, 16)])
def test_attention_fp32(shape):
    from kernels.attention import attention_eager
    from kernels.triton_attention import attention_triton

    torch.manual_seed(0)
    b, t, h, d = shape
    qkv, grad = torch.randn(b, t, h * 3 * d), torch.randn(b, t, h * d)
    ref_in = qkv.double().requires_grad_()
    ref = attention_eager(ref_in, h)
    ref.backward(grad.double())
    x = qkv.clone().requires_grad_()
    out = attention_triton(x, h)
    out.backward(grad)
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(x.grad, ref_in.grad) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [64, 100])
def test_layer_norm(dtype, width):
    from kernels.layer_norm import LayerNorm

    torch.manual_seed(1)
    ln = LayerNorm(width, 1e-5, backend="triton")
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.2)
        ln.bias.normal_(0.0, 0.2)
    x, dy = torch.randn(3, 7, width) * 2 + 0.5, torch.randn(3, 7, width)
    w, b = ln.weight.detach().double().requires_grad_(), ln.bias.detach().double().requires_grad_()
    xr = x.to(dtype).double().requires_grad_()
    ref = F.layer_norm(xr, (width,), w, b, 1e-5)
    ref.backward(dy.to(dtype).double())
    ln = ln.to(dtype)
    xt = x.to(dtype).requires_grad_()
    out = ln(xt)
    out.backward(dy.to(dtype))
    assert out.dtype == dtype
    for got, want in ((out, ref), (xt.grad, xr.grad), (ln.weight.grad, w.grad), (ln.bias.grad, b.grad)):
        assert rel_err(got, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_gelu(dtype):
    from kernels.bias_gelu import bias_gelu, bias_gelu_torch

    torch.manual_seed(2)
    x, bias, dy = torch.randn(5, 9, 48) * 3, torch.randn(48), torch.randn(5, 9, 48)
    xr, br = x.to(dtype).double().requires_grad_(), bias.to(dtype).double().requires_grad_()
    ref = bias_gelu_torch(xr, br)
    ref.backward(dy.to(dtype).double())
    xt, bt = x.to(dtype).requires_grad_(), bias.to(dtype).requires_grad_()
    out = bias_gelu(xt, bt, backend="triton")
    out.backward(dy.to(dtype))
    for got, want in ((out, ref), (xt.grad, xr.grad), (bt.grad, br.grad)):
        assert rel_err(got, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad_in_forward", [True, False])
def test_linear_cross_entropy(dtype, grad_in_forward):
    from kernels.cross_entropy import linear_cross_entropy

    torch.manual_seed(3)
    n, c, v = 37, 16, 1000
    h, w = torch.randn(n, c), torch.randn(v, c) * 0.3
    labels = torch.randint(0, v, (n,))
    labels[::5] = -100
    hr, wr = h.to(dtype).double().requires_grad_(), w.to(dtype).double().requires_grad_()
    ref = F.cross_entropy(hr @ wr.t(), labels, ignore_index=-100)
    ref.backward()
    ht, wt = h.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
    loss = linear_cross_entropy(ht, wt, labels, chunk_tokens=16, backend="triton", grad_in_forward=grad_in_forward)
    (2.0 * loss).backward()  # a non-unit upstream gradient must scale both gradients
    assert abs(loss.item() - ref.item()) / ref.item() <= TOL[dtype]
    assert rel_err(ht.grad, 2 * hr.grad) <= TOL[dtype]
    assert rel_err(wt.grad, 2 * wr.grad) <= TOL[dtype]
