"""graine's safetensors writer (checkpoints/safetensors_io.py) against safetensors' own loader: every dtype
graine writes, 0-d, empty and non-contiguous tensors, metadata, and Hugging Face-style sharding."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from checkpoints.safetensors_io import save_tensors, write_sharded


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"f32": torch.randn(3, 4, generator=g), "bf16": torch.randn(5, generator=g).bfloat16(),
            "f16": torch.randn(2, 2, generator=g).half(), "f64": torch.randn(2, generator=g).double(),
            "i64": torch.arange(6).reshape(2, 3), "i32": torch.arange(3, dtype=torch.int32),
            "u8": torch.arange(4, dtype=torch.uint8), "flags": torch.tensor([True, False, True]),
            "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "transposed": torch.randn(4, 3, generator=g).t()}


def test_every_tensor_reads_back_equal_with_its_dtype_shape_and_the_metadata(tmp_path):
    want = tensors()
    save_tensors(want, tmp_path / "x.safetensors", {"format": "pt", "step": 8})
    got = load_file(str(tmp_path / "x.safetensors"))
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape and torch.equal(got[name], value), name
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "step": "8"}
    header_len = int.from_bytes((tmp_path / "x.safetensors").read_bytes()[:8], "little")
    assert header_len % 8 == 0


def test_an_unsupported_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="complex64"):
        save_tensors({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "z.safetensors")


def test_shards_and_index_follow_hugging_face(tmp_path):
    want = {f"layer{i}": torch.full((256,), float(i)) for i in range(5)}  # 1 KB each
    loaded: list[list[str]] = []

    def load(names):
        loaded.append(names)
        return {n: want[n] for n in names}

    files = write_sharded(list(want), lambda n: want[n].numel() * 4, load, tmp_path, "model", max_bytes=2048)
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + ["model.safetensors.index.json"]
    assert loaded == [["layer0", "layer1"], ["layer2", "layer3"], ["layer4"]]  # one shard in memory at a time
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 1024
    for name, file in index["weight_map"].items():
        assert torch.equal(load_file(str(tmp_path / file))[name], want[name])
