"""Megatron mmap indexed datasets: the format as described in issue 5, merging, and damage detection."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from core.errors import DataError
from data_prep.indexed_dataset import IndexedDataset, IndexedDatasetWriter, dtype_for_vocab, merge_datasets


def read_megatron(prefix) -> list[np.ndarray]:
    """A reader written from the format description alone (not graine's code)."""
    raw = open(f"{prefix}.idx", "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack_from("<Q", raw, 9)
    (code,) = struct.unpack_from("<B", raw, 17)
    n_seq, n_doc = struct.unpack_from("<QQ", raw, 18)
    assert version == 1 and n_doc == n_seq + 1
    dtype = {8: np.uint16, 4: np.int32}[code]
    off = 34
    lengths = np.frombuffer(raw, np.int32, n_seq, off)
    pointers = np.frombuffer(raw, np.int64, n_seq, off + 4 * n_seq)
    docs = np.frombuffer(raw, np.int64, n_doc, off + 12 * n_seq)
    assert list(docs) == list(range(n_seq + 1)) and off + 12 * n_seq + 8 * n_doc == len(raw)
    data = open(f"{prefix}.bin", "rb").read()
    return [np.frombuffer(data, dtype, int(n), int(p)) for n, p in zip(lengths, pointers)]


def random_docs(n: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, rng.integers(0, 50)) for _ in range(n)]


@pytest.mark.parametrize("vocab", [800, 65499, 65500, 250_680])
def test_written_datasets_follow_the_megatron_format(tmp_path, vocab):
    docs = random_docs(200, vocab)
    w = IndexedDatasetWriter(tmp_path / "ds", dtype_for_vocab(vocab))
    for d in docs[:100]:
        w.add_document(d)
    w.add_documents([list(d) for d in docs[100:]])
    assert not (tmp_path / "ds.bin").exists()  # invisible until finalised
    w.finalize()
    ours = IndexedDataset(tmp_path / "ds")
    theirs = read_megatron(tmp_path / "ds")
    assert ours.dtype == (np.uint16 if vocab < 65500 else np.int32)
    assert len(ours) == len(theirs) == len(docs) and ours.num_tokens == sum(map(len, docs))
    for a, b, c in zip(docs, theirs, (ours[i] for i in range(len(ours)))):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.bin", "ds.idx"]


def test_merge_concatenates_in_order(tmp_path):
    docs = random_docs(90, 1000, seed=3)
    parts = []
    for k in range(3):
        w = IndexedDatasetWriter(tmp_path / f"p{k}", np.uint16)
        w.add_documents([list(d) for d in docs[k * 30:(k + 1) * 30]])
        w.finalize()
        parts.append(tmp_path / f"p{k}")
    info = merge_datasets(parts, tmp_path / "merged")
    back = read_megatron(tmp_path / "merged")
    assert info["documents"] == 90 and info["tokens"] == sum(map(len, docs))
    assert all(np.array_equal(a, b) for a, b in zip(docs, back))


@pytest.fixture
def dataset(tmp_path):
    w = IndexedDatasetWriter(tmp_path / "ds", np.uint16)
    w.add_documents([list(d) for d in random_docs(20, 500)])
    w.finalize()
    return tmp_path / "ds"


def test_truncated_bin_is_named(dataset):
    data = (dataset.parent / "ds.bin").read_bytes()
    (dataset.parent / "ds.bin").write_bytes(data[:-6])
    with pytest.raises(DataError, match=r"ds\.bin is truncated.*re-run `graine run preprocess`"):
        IndexedDataset(dataset)


def test_idx_inconsistent_with_bin_is_named(dataset):
    raw = bytearray((dataset.parent / "ds.idx").read_bytes())
    struct.pack_into("<i", raw, 34, struct.unpack_from("<i", raw, 34)[0] + 1)  # first length + 1
    (dataset.parent / "ds.idx").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"ds\.idx.*disagree|ds\.bin"):
        IndexedDataset(dataset)
    (dataset.parent / "ds.idx").write_bytes(bytes(raw[:-8]))
    with pytest.raises(DataError, match=r"ds\.idx has .* bytes"):
        IndexedDataset(dataset)
    (dataset.parent / "ds.idx").write_bytes(b"NOTANIDX" + bytes(raw[8:]))
    with pytest.raises(DataError, match="bad magic"):
        IndexedDataset(dataset)


def test_ids_outside_the_vocabulary_are_named(dataset):
    ds = IndexedDataset(dataset)
    ds.check_ids(500)
    with pytest.raises(DataError, match=r"ds\.bin holds token ids outside .*size 100"):
        ds.check_ids(100)
