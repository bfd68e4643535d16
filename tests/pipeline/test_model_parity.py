"""graine's BloomModel against transformers' BloomForCausalLM: same random weights, same logits (fp32)."""

import pytest
import torch

from training.config import ModelConfig
from training.hf_mapping import from_hf_state_dict, hf_config, to_hf_state_dict
from training.model import BloomModel

transformers = pytest.importorskip("transformers")


def _randomize(model: torch.nn.Module, seed: int) -> None:
    # Non-trivial biases and LayerNorm affines too, so every parameter's mapping is exercised.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layernorm" in name or name.startswith("ln_f"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)


def _pair(num_layers, hidden, heads, vocab, attention="auto", seed=0):
    cfg = ModelConfig(size="custom", num_layers=num_layers, hidden_size=hidden, num_heads=heads, vocab_size=vocab,
                      kernels="torch", attention=attention)
    ours = BloomModel(cfg, vocab).eval()
    _randomize(ours, seed)
    theirs = transformers.BloomForCausalLM(hf_config(cfg, vocab)).eval()
    theirs.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg), strict=True)
    return cfg, ours, theirs


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("layers,hidden,heads,vocab,batch,seq,attention", [
    (2, 64, 4, 1000, 2, 16, "sdpa"),
    (3, 48, 6, 777, 3, 37, "sdpa"),      # 6 heads: not a power of two (extra interleaved slopes)
    (2, 96, 12, 500, 2, 64, "eager"),    # 12 heads, the reference attention path
    (1, 40, 5, 300, 1, 9, "sdpa"),       # odd everything
])
def test_logits_match_transformers(layers, hidden, heads, vocab, batch, seq, attention):
    cfg, ours, theirs = _pair(layers, hidden, heads, vocab, attention)
    assert ours.padded_vocab_size % cfg.pad_vocab_to_multiple == 0
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = theirs(ids).logits
        out = ours(ids)
    assert out.shape == ref.shape == (batch, seq, ours.padded_vocab_size)
    assert _max_rel(out, ref) <= 1e-5


def test_loss_matches_transformers():
    cfg, ours, theirs = _pair(2, 48, 6, 400, "sdpa", seed=3)
    ids = torch.randint(0, 400, (2, 20), generator=torch.Generator().manual_seed(2))
    # transformers shifts labels inside; graine takes them aligned (labels[t] follows ids[t]).
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    with torch.no_grad():
        ref = theirs(ids, labels=ids).loss
        loss = ours(ids, labels=labels)
    assert abs(loss.item() - ref.item()) / ref.item() <= 1e-5


def test_mapping_round_trip_and_wrapper_prefixes():
    cfg, ours, theirs = _pair(2, 32, 4, 200)
    state = {f"module.{k}": v for k, v in ours.state_dict().items()}  # as a DeepSpeed engine names them
    hf = to_hf_state_dict(state, cfg)
    assert hf["lm_head.weight"] is hf["transformer.word_embeddings.weight"]
    back = from_hf_state_dict(theirs.state_dict(), cfg)
    assert set(back) == set(ours.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_mapping_rejects_wrong_depth():
    from core.errors import CheckpointError

    cfg, ours, _ = _pair(2, 32, 4, 200)
    with pytest.raises(CheckpointError, match="num_layers"):
        to_hf_state_dict(ours.state_dict(), ModelConfig(size="custom", num_layers=3, hidden_size=32, num_heads=4))
