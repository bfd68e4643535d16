"""graine's safetensors writer (checkpoints/safetensors_io.py) against safetensors' own loader: every dtype
graine writes, 0-d, empty and non-contiguous tensors, metadata, Hugging Face-style sharding, and files
written as their tensors are read, one batch at a time."""

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

    files = write_sharded(list(want), lambda n: ((256,), torch.float32), load, tmp_path, "model", max_bytes=2048)
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + ["model.safetensors.index.json"]
    assert loaded == [["layer0", "layer1"], ["layer2", "layer3"], ["layer4"]]  # one shard in memory at a time
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 1024
    for name, file in index["weight_map"].items():
        assert torch.equal(load_file(str(tmp_path / file))[name], want[name])


def test_a_file_is_written_as_its_tensors_are_read_one_batch_at_a_time(tmp_path):
    """One 8 KB file asked for in batches of at most 2 KB (or one tensor, if larger); the batch read before
    is already freed (only a weak reference is kept) when the next one is asked for."""
    import weakref

    sizes = {"a": 100, "b": 300, "c": 1024, "d": 200, "e": 200, "f": 225}  # fp32 elements
    want = {n: torch.arange(k, dtype=torch.float32) + i for i, (n, k) in enumerate(sizes.items())}
    loaded, alive = [], []

    def load(names):
        assert not any(ref() is not None for ref in alive), "the previous batch is still in memory"
        loaded.append(names)
        batch = {n: want[n].clone() for n in names}
        alive.extend(weakref.ref(t) for t in batch.values())
        return batch

    files = write_sharded(list(sizes), lambda n: ((sizes[n],), torch.float32), load, tmp_path, "model",
                          max_bytes=1 << 20, read_bytes=2048)
    assert files == ["model.safetensors"]
    assert loaded == [["a", "b"], ["c"], ["d", "e"], ["f"]]  # 1.6 KB, 4 KB alone, 1.6 KB, 0.9 KB
    got = load_file(str(tmp_path / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)


def test_a_tensor_bigger_than_a_batch_is_asked_for_a_range_of_elements_at_a_time(tmp_path):
    """With read batches of 1 KB, a 4 x 300 fp32 tensor (4.8 KB) comes from `load_range` in five ranges of
    256 elements at most, between the whole tensors before and after it; it reads back equal."""
    want = {"a": torch.arange(10.0), "big": torch.randn(4, 300, generator=torch.Generator().manual_seed(1)),
            "c": torch.arange(5.0)}
    asked = []

    def load(names):
        asked.append(names)
        return {n: want[n] for n in names}

    def load_range(name, start, stop):
        asked.append((name, start, stop))
        return want[name].reshape(-1)[start:stop]

    write_sharded(list(want), lambda n: (tuple(want[n].shape), torch.float32), load, tmp_path, "model",
                  max_bytes=1 << 20, read_bytes=1024, load_range=load_range)
    assert asked == [["a"], *[("big", lo, min(lo + 256, 1200)) for lo in range(0, 1200, 256)], ["c"]]
    got = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_ranges_that_do_not_add_up_to_the_tensor_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no tensor given for 112 elements of big"):
        write_sharded(["big"], lambda n: ((600,), torch.float32), lambda names: {}, tmp_path, "model",
                      max_bytes=1 << 20, read_bytes=1024,
                      load_range=lambda n, a, b: torch.zeros(min(b - a, 200)))  # 200 + 200 + 88 of 600
    with pytest.raises(ValueError, match="was given big \\[2, 128\\]"):
        write_sharded(["big"], lambda n: ((600,), torch.float32), lambda names: {}, tmp_path, "model",
                      max_bytes=1 << 20, read_bytes=1024, load_range=lambda n, a, b: torch.zeros(2, 128))


@pytest.mark.parametrize("given,message", [
    (lambda n: torch.zeros(3), "expected a \\[2\\] torch.float32, was given a \\[3\\]"),
    (lambda n: torch.zeros(2, dtype=torch.float16), "was given a \\[2\\] torch.float16"),
])
def test_a_tensor_that_does_not_match_its_spec_is_refused(tmp_path, given, message):
    with pytest.raises(ValueError, match=message):
        write_sharded(["a"], lambda n: ((2,), torch.float32), lambda names: {n: given(n) for n in names},
                      tmp_path, "model", max_bytes=1 << 20)


def test_a_tensor_missing_from_its_batch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no tensor given for b"):
        write_sharded(["a", "b"], lambda n: ((2,), torch.float32), lambda names: {"a": torch.zeros(2)},
                      tmp_path, "model", max_bytes=1 << 20)
