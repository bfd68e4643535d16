"""BlendedSampleIndex: samples are windows of the shuffled document stream, blended by weight, cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataError
from data_prep import sample_index as si
from data_prep.indexed_dataset import IndexedDatasetWriter, sha256_file
from data_prep.sample_index import BlendedSampleIndex

SEQ = 16


def write_shards(root: Path, sizes_by_name: dict[str, list[int]], weights: dict[str, float],
                 vocab: int = 1 << 30, max_id: bool = True) -> Path:
    """Datasets whose tokens count up 0, 1, 2, ... in document order, so a sample shows where it came from."""
    datasets = {}
    for name, sizes in sizes_by_name.items():
        w = IndexedDatasetWriter(root / "train" / name, np.int32)
        start = 0
        for n in sizes:
            w.add_document(np.arange(start, start + n))
            start += int(n)
        w.finalize()
        bin_, idx = root / "train" / f"{name}.bin", root / "train" / f"{name}.idx"
        datasets[name] = {"lang": name, "source": None, "weight": weights[name],
                          "train": {"path": f"train/{name}", "documents": len(sizes), "tokens": start,
                                    "bin_sha256": sha256_file(bin_), "idx_sha256": sha256_file(idx),
                                    **({"max_id": start - 1} if max_id else {})}}
    (root / "blend.json").write_text(json.dumps({"tokenizer_hash": "t", "vocab_size": vocab, "datasets": datasets}))
    return root


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {n: list(rng.integers(1, 60, k)) for n, k in (("en", 300), ("fr", 120), ("zh", 60))}
    return write_shards(tmp_path, sizes, {"en": 0.5, "fr": 0.3, "zh": 0.2})


def doc_bounds(ds) -> tuple[set, set]:
    starts = np.concatenate([[0], np.cumsum(ds.sizes)[:-1]])
    return set(starts.tolist()), set((starts + ds.sizes - 1).tolist())


def check_windows(index: BlendedSampleIndex) -> dict[str, list[np.ndarray]]:
    """Every sample: SEQ+1 tokens, consecutive inside a document, or a document's end then a start."""
    bounds = {n: doc_bounds(d) for n, d in zip(index.names, index.datasets)}
    per = {n: [] for n in index.names}
    for g in range(len(index)):
        s, name = index[g], index.dataset_of(g)
        first, last = bounds[name]
        assert s.shape == (SEQ + 1,) and s.dtype == np.int64
        for a, b in zip(s[:-1], s[1:]):
            assert b == a + 1 and a not in last or (a in last and b in first), (g, s)
        per[name].append(s)
    return per


def test_samples_are_windows_covering_each_epoch_once(shards):
    index = BlendedSampleIndex(shards, SEQ, seed=7, cache=False)
    per = check_windows(index)
    for name, ds in zip(index.names, index.datasets):
        per_epoch = (ds.num_tokens - 1) // SEQ
        first_epoch = per[name][:per_epoch] if len(per[name]) >= per_epoch else per[name]
        starts = [int(s[0]) for s in first_epoch]
        assert len(set(starts)) == len(starts)  # no sample twice within an epoch
        covered = np.concatenate([s[:-1] for s in first_epoch])
        assert len(np.unique(covered)) == len(covered)
    assert len(index) == sum((d.num_tokens - 1) // SEQ for d in index.datasets)


def test_deterministic_and_seeded(shards):
    a = BlendedSampleIndex(shards, SEQ, seed=7, cache=False)
    b = BlendedSampleIndex(shards, SEQ, seed=7, cache=False)
    c = BlendedSampleIndex(shards, SEQ, seed=8, cache=False)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert all(np.array_equal(a[g], b[g]) for g in range(len(a)))
    assert not all(np.array_equal(a[g], c[g]) for g in range(len(a)))


def test_any_window_has_the_weights_proportions(shards):
    index = BlendedSampleIndex(shards, SEQ, seed=7, num_samples=5000, cache=False)
    n = np.arange(len(index) + 1)
    for d, w in enumerate(index.weights):
        err = np.concatenate([[0], np.cumsum(index.ds_index == d)]) - w * n
        assert np.abs(err).max() < 1  # every prefix within one sample
        assert err.max() - err.min() < 2  # so every window within two; e.g. a global batch of 64:
    for g in range(0, len(index) - 64, 64):
        counts = np.bincount(index.ds_index[g:g + 64], minlength=3)
        assert np.all(np.abs(counts - 64 * index.weights) < 2)


def test_random_weights_stay_within_bounds():
    rng = np.random.default_rng(1)
    for _ in range(20):
        w = rng.dirichlet(np.ones(rng.integers(2, 10)) * 0.5)
        ds, k = si.blend_order(w, 3000)
        for d in range(len(w)):
            err = np.concatenate([[0], np.cumsum(ds == d)]) - w[d] * np.arange(3001)
            assert np.abs(err).max() < 1 and err.max() - err.min() < 2
            assert np.array_equal(k[ds == d], np.arange((ds == d).sum()))


def test_more_samples_than_an_epoch_reshuffle_each_epoch(shards):
    index = BlendedSampleIndex(shards, SEQ, seed=7, num_samples=4000, cache=False)
    per = check_windows(index)
    zh = index.names.index("zh")
    per_epoch = (index.datasets[zh].num_tokens - 1) // SEQ
    assert len(per["zh"]) > 3 * per_epoch
    e0, e1 = [int(s[0]) for s in per["zh"][:per_epoch]], [int(s[0]) for s in per["zh"][per_epoch:2 * per_epoch]]
    assert e0 != e1


def test_a_longer_index_extends_a_shorter_one(shards):
    # Raising train.train_tokens must not change the samples already trained on (resume stays valid).
    short = BlendedSampleIndex(shards, SEQ, seed=7, num_samples=1500, cache=False)
    long = BlendedSampleIndex(shards, SEQ, seed=7, num_samples=4000, cache=False)
    assert short.fingerprint == long.fingerprint
    assert all(np.array_equal(short[g], long[g]) for g in range(len(short)))


def test_cache_is_reused_and_rebuilt_when_the_shards_change(shards, monkeypatch):
    first = BlendedSampleIndex(shards, SEQ, seed=7)
    cached = list((shards / "index-cache").glob("train-*"))
    assert len(cached) == 1 and first.fingerprint in cached[0].name
    monkeypatch.setattr(BlendedSampleIndex, "_build", lambda self: pytest.fail("rebuilt a cached index"))
    again = BlendedSampleIndex(shards, SEQ, seed=7)
    assert all(np.array_equal(first[g], again[g]) for g in range(0, len(first), 7))
    monkeypatch.undo()
    blend = json.loads((shards / "blend.json").read_text())
    blend["datasets"]["zh"]["weight"] = 0.6
    (shards / "blend.json").write_text(json.dumps(blend))
    changed = BlendedSampleIndex(shards, SEQ, seed=7)
    assert changed.fingerprint != first.fingerprint
    assert len(list((shards / "index-cache").glob("train-*"))) == 2
    assert isinstance(again.ds_index, np.memmap)  # mapped read-only, not read into every rank's memory
    with pytest.raises(ValueError, match="read-only"):
        again.ds_index[0] = 1


def test_damaged_shards_are_refused(shards):
    with pytest.raises(DataError, match=r"zh\.bin holds token ids up to 199, outside the tokenizer's vocabulary"):
        write_shards(shards, {"zh": [5] * 40}, {"zh": 1.0}, vocab=100)
        BlendedSampleIndex(shards, SEQ, seed=7, cache=False)
    with pytest.raises(DataError, match=r"zh\.bin holds token ids outside"):  # no max_id: the ids are scanned
        write_shards(shards, {"zh": [5] * 40}, {"zh": 1.0}, vocab=100, max_id=False)
        BlendedSampleIndex(shards, SEQ, seed=7, cache=False)
    bin_ = shards / "train" / "zh.bin"
    bin_.write_bytes(bin_.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"zh\.bin is truncated"):
        BlendedSampleIndex(shards, SEQ, seed=7, cache=False)
    with pytest.raises(DataError, match=r"blend\.json not found; run the preprocess stage"):
        BlendedSampleIndex(shards / "nowhere", SEQ, seed=7)


def test_compiled_blend_follows_the_rule_as_written():
    """numba's loop against the Python transcription, position by position: 1 to 46 datasets (BLOOM's
    languages), skewed weights and datasets of weight 0 included."""
    rng = np.random.default_rng(3)
    cases = [np.array([1.0]), np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.999, 0.001])]
    cases += [rng.dirichlet(np.ones(k) * a) for k in (2, 3, 7, 13, 46) for a in (0.1, 1.0)]
    with_zero = rng.dirichlet(np.ones(5))
    with_zero[2] = 0.0
    cases.append(with_zero / with_zero.sum())
    for w in cases:
        fast, slow = si.blend_order(w, 5000), si.blend_order_reference(w, 5000)
        assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1]), w
        assert fast[0].dtype == np.int16 and fast[1].dtype == np.int64


def test_the_vocabulary_check_reads_no_token(shards, monkeypatch):
    """With max_id in blend.json (preprocess records it), building the index never scans the ids."""
    monkeypatch.setattr(si.IndexedDataset, "check_ids", lambda *a: pytest.fail("scanned the token ids"))
    index = BlendedSampleIndex(shards, SEQ, seed=7, cache=False)
    assert len(index) > 0
