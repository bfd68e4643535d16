"""graine <-> transformers' BloomForCausalLM: config and state-dict names (used by the export stage).

graine's module tree mirrors BloomModel's, so the mapping is a prefix: `h.0.mlp.dense_h_to_4h.weight` ->
`transformer.h.0.mlp.dense_h_to_4h.weight`; the fused QKV weight already has BLOOM's per-head layout. The
output projection is tied to the embeddings; `lm_head.weight` is written as that same tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import CheckpointError
from training.config import ModelConfig

if TYPE_CHECKING:
    import torch

# Wrappers that prefix parameter names: DeepSpeed's engine (`module.`) and torch.compile (`_orig_mod.`).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_TOP_LEVEL = ("word_embeddings.weight", "word_embeddings_layernorm.weight", "word_embeddings_layernorm.bias",
              "ln_f.weight", "ln_f.bias")
_PER_LAYER = ("input_layernorm.weight", "input_layernorm.bias", "self_attention.query_key_value.weight",
              "self_attention.query_key_value.bias", "self_attention.dense.weight", "self_attention.dense.bias",
              "post_attention_layernorm.weight", "post_attention_layernorm.bias", "mlp.dense_h_to_4h.weight",
              "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias")


def expected_keys(num_layers: int) -> list[str]:
    return list(_TOP_LEVEL) + [f"h.{i}.{name}" for i in range(num_layers) for name in _PER_LAYER]


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def strip_wrappers(state: dict) -> dict:
    """The state dict with the wrapper prefixes (`module.`, `_orig_mod.`) removed from its keys."""
    return {_strip(k): v for k, v in state.items()}


def to_hf_state_dict(graine_state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """BloomForCausalLM state dict from graine's (wrapper prefixes removed, keys checked both ways)."""
    state = {_strip(k): v for k, v in graine_state_dict.items()}
    expected = expected_keys(cfg.num_layers)
    missing = [k for k in expected if k not in state]
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"the state dict does not match model.num_layers={cfg.num_layers}: "
                              f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                              f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}; export with the run's "
                              "config (its model section)")
    hf = {f"transformer.{k}": state[k] for k in expected}
    hf["lm_head.weight"] = state["word_embeddings.weight"]
    return hf


def from_hf_state_dict(hf_state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """graine's state dict from a BloomForCausalLM one (continued pretraining, training.init_from). Only
    membership and lookup are used, so `hf_state_dict` may be any mapping (init_from's values are loaders)."""
    state = {}
    for key in expected_keys(cfg.num_layers):
        if f"transformer.{key}" not in hf_state_dict:
            raise CheckpointError(f"transformer.{key} is missing from the Hugging Face state dict; is it a BLOOM "
                                  f"model with {cfg.num_layers} layers (model.num_layers)?")
        state[key] = hf_state_dict[f"transformer.{key}"]
    return state


def hf_config(cfg: ModelConfig, vocab_size: int | None = None, **extra):
    """transformers.BloomConfig for this model; `vocab_size` is the tokenizer's (padded here as the model does).
    `extra` passes token ids and the like (bos_token_id=..., eos_token_id=...)."""
    from transformers import BloomConfig

    return BloomConfig(
        vocab_size=cfg.padded_vocab_size(vocab_size or 0),
        hidden_size=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        layer_norm_epsilon=cfg.layer_norm_eps,
        initializer_range=cfg.init_std,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        apply_residual_connection_post_layernorm=False,
        pretraining_tp=1,
        slow_but_exact=False,
        tie_word_embeddings=True,
        architectures=["BloomForCausalLM"],
        **extra,
    )
