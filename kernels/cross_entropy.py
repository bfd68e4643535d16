"""Output projection + cross-entropy over a large vocabulary, chunked so that the fp32 logits of the whole
batch never exist (BLOOM: 250,880 columns; one 8 x 2048 batch would need 16 GB of fp32 logits).

`linear_cross_entropy(hidden, weight, labels)` equals `F.cross_entropy(hidden @ weight.T, labels)` (mean over
the labels that are not `ignore_index`). It walks the tokens in chunks of `chunk_tokens`: project one chunk
to logits, reduce it to per-token losses and the logits' gradient (softmax - one-hot), and turn that
gradient at once into the chunk's share of dL/dhidden and dL/dweight. Only one chunk's logits are alive.

The gradients are computed in forward, while the chunk's logits are at hand, when autograd will want them
(`grad_in_forward=True`, the default): recomputing the projection in backward would cost one extra
(tokens x hidden x vocab) matrix product, about 15% of a BLOOM-560m training step. With
`grad_in_forward=False` the forward keeps only the losses and the backward recomputes each chunk,
which holds no fp32 weight-gradient buffer between forward and backward.

The per-chunk reduction is a Triton kernel on GPU (two passes over the bf16 logits, the gradient written
in place) and plain torch in fp32 elsewhere.
"""

from __future__ import annotations

import torch

from kernels.triton_attention import _HAS_TRITON, _interpreting

if _HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _ce_rows_kernel(LOGITS, stride, LABELS, LOSS, V, grad_scale, ignore_index, BLOCK_V: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        ptr = LOGITS + row * stride
        cols = tl.arange(0, BLOCK_V)
        # Pass 1: an online log-sum-exp, one running max and sum per lane, combined at the end.
        m = tl.full([BLOCK_V], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_V], tl.float32)
        for start in range(0, V, BLOCK_V):
            x = tl.load(ptr + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, x)
            s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
            m = tl.where(m_new == float("-inf"), m, m_new)
        m_row = tl.max(m, 0)
        lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row), 0))
        label = tl.load(LABELS + row)
        valid = label != ignore_index
        target = tl.load(ptr + tl.where(valid, label, 0)).to(tl.float32)
        tl.store(LOSS + row, tl.where(valid, lse - target, 0.0))
        # Pass 2: d loss / d logits = (softmax - onehot) * scale, over the logits in place.
        if grad_scale != 0.0:
            scale = tl.where(valid, grad_scale, 0.0)
            for start in range(0, V, BLOCK_V):
                idx = start + cols
                x = tl.load(ptr + idx, mask=idx < V, other=0.0).to(tl.float32)
                g = tl.exp(x - lse) * scale - tl.where(idx == label, scale, 0.0)
                tl.store(ptr + idx, g.to(LOGITS.dtype.element_ty), mask=idx < V)


def _rows_torch(logits: torch.Tensor, labels: torch.Tensor, grad_scale: float, ignore_index: int):
    """Per-token losses; with grad_scale != 0 also (softmax - onehot) * grad_scale in logits' dtype."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0)
    loss = torch.where(valid, lse - x.gather(1, safe[:, None]).squeeze(1), 0.0)
    if grad_scale == 0.0:
        return loss, None
    scale = valid.float() * grad_scale
    grad = torch.exp(x - lse[:, None]).mul_(scale[:, None])
    grad.scatter_add_(1, safe[:, None], -scale[:, None])
    return loss, grad.to(logits.dtype)


def _rows(logits: torch.Tensor, labels: torch.Tensor, grad_scale: float, ignore_index: int, backend: str):
    if backend == "triton" and (logits.is_cuda or _interpreting()):
        loss = torch.empty(logits.shape[0], device=logits.device, dtype=torch.float32)
        _ce_rows_kernel[(logits.shape[0],)](logits, logits.stride(0), labels, loss, logits.shape[1], grad_scale,
                                           ignore_index, BLOCK_V=256 if _interpreting() else 4096, num_warps=8)
        return loss, (logits if grad_scale != 0.0 else None)
    return _rows_torch(logits, labels, grad_scale, ignore_index)


def _chunk_grads(h, weight, labels, grad_scale, ignore_index, backend, grad_h, grad_w):
    """Loss of one chunk; adds its gradients into grad_h (rows of this chunk) and grad_w (fp32)."""
    logits = h @ weight.t()
    loss, dlogits = _rows(logits, labels, grad_scale, ignore_index, backend)
    if dlogits is not None:
        grad_h.copy_(dlogits @ weight)
        grad_w.add_(dlogits.t() @ h)
    return loss.sum()


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_tokens, backend, grad_in_forward, needs_grad):
        # The mean's 1/n stays on the device (reading n to the host would stall the GPU every micro-batch):
        # chunks produce unscaled sums and gradients; the loss and, in backward, the gradients take 1/n.
        inv_n = 1.0 / (labels != ignore_index).sum().clamp(min=1).to(torch.float32)
        compute = needs_grad and grad_in_forward
        grad_h = torch.empty_like(hidden) if compute else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if compute else None
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            total += _chunk_grads(hidden[rows], weight, labels[rows], 1.0 if compute else 0.0, ignore_index,
                                  backend, grad_h[rows] if compute else None, grad_w)
        ctx.grad_in_forward = grad_in_forward
        ctx.args = (ignore_index, chunk_tokens, backend)
        ctx.inv_n = inv_n
        if compute:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        elif needs_grad:
            ctx.save_for_backward(hidden, weight, labels)
        return total * inv_n

    @staticmethod
    def backward(ctx, grad_loss):
        scale = grad_loss.to(torch.float32) * ctx.inv_n  # on the device: no read of grad_loss to the host
        if ctx.grad_in_forward:
            grad_h, grad_w = ctx.saved_tensors
            return grad_h * scale.to(grad_h.dtype), grad_w * scale.to(grad_w.dtype), *([None] * 6)
        hidden, weight, labels = ctx.saved_tensors
        ignore_index, chunk_tokens, backend = ctx.args
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            _chunk_grads(hidden[rows], weight, labels[rows], 1.0, ignore_index, backend, grad_h[rows], grad_w)
        return grad_h.mul_(scale.to(grad_h.dtype)), (grad_w * scale).to(weight.dtype), *([None] * 6)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         ignore_index: int = -100, chunk_tokens: int = 4096, backend: str = "torch",
                         grad_in_forward: bool = True) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` (N x V) against `labels` (N), chunked over N."""
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return LinearCrossEntropy.apply(hidden, weight, labels.contiguous(), ignore_index, chunk_tokens, backend,
                                    grad_in_forward, needs_grad)
