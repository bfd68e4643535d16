"""LayerNorm, bias-GeLU and the chunked linear cross-entropy on their torch paths (CPU), the dispatch,
and the same ops' Triton kernels on a GPU when there is one."""

import logging

import pytest
import torch
import torch.nn.functional as F

from kernels.bias_gelu import bias_gelu, bias_gelu_torch
from kernels.cross_entropy import linear_cross_entropy
from kernels.dispatch import select_kernels
from kernels.layer_norm import LayerNorm

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel_err(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _hf_bloom_gelu(x):
    # transformers' bloom_gelu_forward, the function the exported model will run.
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


def test_bias_gelu_reference_is_blooms_gelu():
    x, b = torch.randn(4, 32, dtype=torch.float64) * 3, torch.randn(32, dtype=torch.float64)
    assert rel_err(bias_gelu_torch(x, b), _hf_bloom_gelu(x + b)) <= 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [5, 64, 1000])
def test_linear_cross_entropy_torch_path(dtype, chunk):
    torch.manual_seed(0)
    n, c, v = 50, 24, 3000
    h, w = torch.randn(n, c), torch.randn(v, c) * 0.3
    labels = torch.randint(0, v, (n,))
    labels[3:9] = -100
    hr, wr = h.to(dtype).double().requires_grad_(), w.to(dtype).double().requires_grad_()
    ref = F.cross_entropy(hr @ wr.t(), labels, ignore_index=-100)
    ref.backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for grad_in_forward in (True, False):
        ht, wt = h.to(dtype).clone().requires_grad_(), w.to(dtype).clone().requires_grad_()
        loss = linear_cross_entropy(ht, wt, labels, chunk_tokens=chunk, grad_in_forward=grad_in_forward)
        (0.5 * loss).backward()
        assert abs(loss.item() - ref.item()) / ref.item() <= tol
        assert rel_err(ht.grad, 0.5 * hr.grad) <= tol and rel_err(wt.grad, 0.5 * wr.grad) <= tol


def test_linear_cross_entropy_without_grad_and_all_ignored():
    h, w, labels = torch.randn(6, 8), torch.randn(40, 8), torch.randint(0, 40, (6,))
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, labels, chunk_tokens=4)
    assert torch.isclose(loss, F.cross_entropy(h @ w.t(), labels), rtol=1e-5)
    h.requires_grad_()
    loss = linear_cross_entropy(h, w, torch.full((6,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(h.grad) == 0


def test_layer_norm_torch_path_matches_nn_layernorm():
    ln, ref = LayerNorm(40, 1e-5), torch.nn.LayerNorm(40, eps=1e-5)
    x = torch.randn(3, 40)
    assert torch.allclose(ln(x), ref(x), atol=1e-6)
    assert [n for n, _ in ln.named_parameters()] == ["weight", "bias"]


def test_dispatch_on_cpu_picks_torch_and_logs_once(caplog, monkeypatch):
    import kernels.dispatch as dispatch

    monkeypatch.setattr(dispatch, "_LOGGED", set())
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine auto picks the GPU kernels")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "_HAS_APEX", False)
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        first = select_kernels("auto")
        select_kernels("auto")
    assert first.attention == "sdpa" and first.layer_norm == "torch" and first.cross_entropy == "torch"
    assert sum("kernels (model.kernels=auto" in r.message for r in caplog.records) == 1
    assert select_kernels("torch", "eager").attention == "eager"


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_elementwise_ops_gpu(dtype):
    torch.manual_seed(1)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    x, b, dy = (torch.randn(64, 1024, device="cuda") * 2).to(dtype), torch.randn(1024, device="cuda").to(dtype), \
        torch.randn(64, 1024, device="cuda").to(dtype)
    xr, br = x.double().requires_grad_(), b.double().requires_grad_()
    ref = bias_gelu_torch(xr, br)
    ref.backward(dy.double())
    xt, bt = x.clone().requires_grad_(), b.clone().requires_grad_()
    out = bias_gelu(xt, bt, backend="triton")
    out.backward(dy)
    assert rel_err(out, ref) <= tol and rel_err(xt.grad, xr.grad) <= tol and rel_err(bt.grad, br.grad) <= tol
    ln = LayerNorm(1024, backend="triton").cuda().to(dtype)
    xt = x.clone().requires_grad_()
    xr = x.double().requires_grad_()
    out = ln(xt)
    out.backward(dy)
    ref = F.layer_norm(xr, (1024,), ln.weight.double(), ln.bias.double())
    ref.backward(dy.double())
    assert rel_err(out, ref) <= tol and rel_err(xt.grad, xr.grad) <= tol


@requires_cuda
@pytest.mark.gpu
def test_triton_cross_entropy_gpu_bf16():
    torch.manual_seed(2)
    h = torch.randn(300, 64, device="cuda").bfloat16().requires_grad_()
    w = (torch.randn(50_000, 64, device="cuda") * 0.2).bfloat16().requires_grad_()
    labels = torch.randint(0, 50_000, (300,), device="cuda")
    loss = linear_cross_entropy(h, w, labels, chunk_tokens=128, backend="triton")
    loss.backward()
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.cross_entropy(hr @ wr.t(), labels)
    ref.backward()
    assert abs(loss.item() - ref.item()) / ref.item() <= 1e-2
    assert rel_err(h.grad, hr.grad) <= 1e-2 and rel_err(w.grad, wr.grad) <= 1e-2
