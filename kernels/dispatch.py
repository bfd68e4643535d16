"""Which implementation each fused op uses, from `model.kernels` (auto|triton|apex|torch) and
`model.attention` (auto|triton|flex|sdpa|eager).

- `torch`: PyTorch only: SDPA with an ALiBi float mask, F.layer_norm, F.gelu, chunked cross-entropy.
- `triton`: the Triton kernels of this package (flash attention with in-kernel ALiBi, LayerNorm,
  bias-GeLU, cross-entropy rows); needs the `triton` package and a CUDA GPU.
- `apex`: NVIDIA apex's FusedLayerNorm; the other ops as `auto` picks them.
- `auto`: the fastest available: Triton on a CUDA machine with triton installed, apex LayerNorm when apex is
  importable, else torch. Logged once.

A backend asked for by name but missing raises `KernelUnavailable` when the model is built, naming the package.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from kernels.attention import has_flex_attention

log = logging.getLogger(__name__)

try:
    import triton  # noqa: F401

    _HAS_TRITON = True
except ImportError:
    _HAS_TRITON = False

try:
    from apex.normalization import FusedLayerNorm  # noqa: F401

    _HAS_APEX = True
except ImportError:
    _HAS_APEX = False

_LOGGED: set[tuple] = set()


class KernelUnavailable(RuntimeError):
    """A kernel backend was asked for by config but cannot run here."""


def has_triton() -> bool:
    """True when the `triton` package imports (running it also needs a CUDA GPU or TRITON_INTERPRET=1)."""
    return _HAS_TRITON


def has_apex() -> bool:
    """True when NVIDIA apex with its CUDA extensions imports (apex.normalization.FusedLayerNorm)."""
    return _HAS_APEX


def _triton_runs() -> bool:
    return _HAS_TRITON and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


@dataclass(frozen=True)
class KernelChoice:
    attention: str  # triton | flex | sdpa | eager
    layer_norm: str  # apex | triton | torch
    bias_gelu: str  # triton | torch
    cross_entropy: str  # triton | torch

    def describe(self) -> str:
        return (f"attention={self.attention} layer_norm={self.layer_norm} bias_gelu={self.bias_gelu} "
                f"cross_entropy={self.cross_entropy}")


def select_kernels(kernels: str = "auto", attention: str = "auto") -> KernelChoice:
    """Resolve `model.kernels` / `model.attention` on this machine; raise KernelUnavailable if impossible."""
    if kernels not in ("auto", "triton", "apex", "torch"):
        raise KernelUnavailable(f"model.kernels={kernels!r} is not one of auto, triton, apex, torch")
    if kernels == "triton" and not _triton_runs():
        why = ("the 'triton' package is not installed (pip install triton)" if not _HAS_TRITON
               else "no CUDA GPU is visible (TRITON_INTERPRET=1 runs the kernels on CPU, slowly, for tests)")
        raise KernelUnavailable(f"model.kernels=triton but {why}; set model.kernels=auto or torch")
    if kernels == "apex" and not _HAS_APEX:
        raise KernelUnavailable("model.kernels=apex but NVIDIA apex is not importable; build it from "
                                "https://github.com/NVIDIA/apex with --cuda_ext (not `pip install apex`, an "
                                "unrelated package), or set model.kernels=auto")
    fast = kernels == "triton" or (kernels in ("auto", "apex") and _triton_runs())
    elementwise = "triton" if fast else "torch"
    if kernels == "apex" or (kernels == "auto" and _HAS_APEX):
        layer_norm = "apex"
    else:
        layer_norm = elementwise
    attn = _select_attention(attention, fast)
    choice = KernelChoice(attention=attn, layer_norm=layer_norm, bias_gelu=elementwise, cross_entropy=elementwise)
    key = (kernels, attention, choice)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("kernels (model.kernels=%s, model.attention=%s): %s", kernels, attention, choice.describe())
    return choice


def _select_attention(attention: str, fast: bool) -> str:
    if attention == "auto":
        return "triton" if fast else "sdpa"
    if attention == "triton" and not _triton_runs():
        raise KernelUnavailable("model.attention=triton needs the 'triton' package and a CUDA GPU; "
                                "set model.attention=auto")
    if attention == "flex" and not has_flex_attention():
        raise KernelUnavailable("model.attention=flex needs torch>=2.5 (torch.nn.attention.flex_attention); "
                                "set model.attention=auto")
    if attention not in ("triton", "flex", "sdpa", "eager"):
        raise KernelUnavailable(f"model.attention={attention!r} is not one of auto, triton, flex, sdpa, eager")
    return attention


def attention_function(name: str):
    """The attention callable for a resolved name: f(qkv, num_heads, dropout_p) -> (B, T, H*D)."""
    from kernels import attention as attn

    if name == "triton":
        from kernels.triton_attention import attention_triton

        return attention_triton
    return {"flex": attn.attention_flex, "sdpa": attn.attention_sdpa, "eager": attn.attention_eager}[name]
