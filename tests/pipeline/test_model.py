"""BloomModel's interface: presets, vocabulary padding, loss, parameter groups, FLOPs, checkpointing."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from pipeline.config import load_config
from training.config import ModelConfig
from training.model import BloomModel
from training.presets import PRESETS


def _tiny(**kw):
    args = dict(size="custom", num_layers=2, hidden_size=32, num_heads=4, kernels="torch")
    args.update(kw)
    return ModelConfig(**args)


def test_presets_are_blooms_published_shapes():
    shapes = {k: (p.num_layers, p.hidden_size, p.num_heads) for k, p in PRESETS.items()}
    assert shapes["560m"] == (24, 1024, 16) and shapes["1b1"] == (24, 1536, 16)
    assert shapes["1b7"] == (24, 2048, 16) and shapes["3b"] == (30, 2560, 32)
    assert shapes["7b1"] == (30, 4096, 32) and shapes["176b"] == (70, 14336, 112)
    cfg = load_config(None, ["model.size=560m", "model.vocab_size=250880"])
    assert cfg.model.num_layers == 24 and cfg.model.hidden_size == 1024


def test_560m_parameter_count_matches_bloom():
    # bigscience/bloom-560m has 559,214,592 parameters.
    with torch.device("meta"):
        model = BloomModel(ModelConfig(size="560m", kernels="torch"), 250_880)
    assert model.num_parameters() == 559_214_592


def test_explicit_fields_override_the_preset_and_bad_size_is_an_error():
    assert ModelConfig(size="1b7", num_layers=2).hidden_size == 2048
    with pytest.raises(ConfigError, match="model.size"):
        ModelConfig(size="13b")
    with pytest.raises(ConfigError, match="model.num_layers"):
        ModelConfig(size="custom", hidden_size=64, num_heads=4)


def test_vocab_is_padded_and_needs_a_size():
    model = BloomModel(_tiny(pad_vocab_to_multiple=64), 1000)
    assert model.padded_vocab_size == 1024 and model.vocab_size == 1000
    assert model(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 1024)
    with pytest.raises(ConfigError, match="vocab_size"):
        BloomModel(_tiny(), 0)


def test_loss_is_mean_cross_entropy_of_the_logits_and_ignores_minus_100():
    torch.manual_seed(0)
    model = BloomModel(_tiny(loss_chunk_tokens=5), 100)
    ids = torch.randint(0, 100, (3, 7))
    labels = torch.randint(0, 100, (3, 7))
    labels[0, :4] = -100
    loss = model(ids, labels)
    ref = F.cross_entropy(model(ids).flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(loss, ref, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_param_groups_exclude_biases_and_norms_from_decay():
    model = BloomModel(_tiny(), 100)
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.word_embeddings.weight for p in decay["params"])


def test_flops_per_token_formula():
    model = BloomModel(_tiny(), 128)
    L, h, V, T = 2, 32, 128, 64
    assert model.flops_per_token(T) == 6 * (12 * L * h * h + V * h) + 12 * L * h * T
    # The matmul term is 6x the weight-matrix parameters (embedding counted once, as the output projection).
    matrices = sum(p.numel() for p in model.parameters() if p.ndim == 2)
    assert model.flops_per_token(0) == 6 * matrices


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = BloomModel(_tiny(), 64)
    ids, labels = torch.randint(0, 64, (2, 9)), torch.randint(0, 64, (2, 9))
    model(ids, labels).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_activation_checkpointing(True)
    model(ids, labels).backward()
    for a, b in zip(plain, (p.grad for p in model.parameters())):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_init_scales_residual_output_projections():
    model = BloomModel(_tiny(size="custom", num_layers=8, hidden_size=256, num_heads=4, init_std=0.02), 256)
    std = model.h[0].self_attention.dense.weight.std().item()
    assert math.isclose(std, 0.02 / math.sqrt(16), rel_tol=0.1)
    assert math.isclose(model.h[0].mlp.dense_h_to_4h.weight.std().item(), 0.02, rel_tol=0.1)


def test_missing_backend_fails_at_build_naming_the_package(monkeypatch):
    import kernels.dispatch as dispatch

    monkeypatch.setattr(dispatch, "_HAS_APEX", False)
    with pytest.raises(ConfigError, match="apex"):
        BloomModel(_tiny(kernels="apex"), 64)
    monkeypatch.setattr(dispatch, "_HAS_TRITON", False)
    with pytest.raises(ConfigError, match="triton"):
        BloomModel(_tiny(kernels="triton"), 64)
