"""The pretraining data source: a deterministic, blended, cached index of samples of seq_len + 1 tokens.

Per dataset, each epoch shuffles the document order (seeded by seed, dataset name, epoch), lays the
documents end to end and cuts samples every seq_len tokens, each seq_len + 1 long (the last token of
one sample is the first of the next, as in Megatron), so samples run across document boundaries; the
samples of an epoch are then shuffled. Across datasets, each global position goes to a dataset behind
its weight (Tijdeman's rule, `blend_order`), so every prefix holds each dataset's share to within one
sample and any window to within two (measured: under 1.75).

Per-dataset work is vectorised numpy (no Python loop over documents or samples); the blend order is
one loop per sample, compiled by numba. No token id is read: the vocabulary check uses the maximum
id per dataset that preprocess recorded in blend.json. Everything is cached in `shards/index-cache/<name>/` (one .npy file per
array, published by one rename of the folder, mapped read-only) under a fingerprint of the settings and
of the shards' hashes from blend.json; a change of either builds a new index. In a training job rank 0
builds it and the other ranks map it once it is published (training.pretrain.build_data).
Global batch g is samples [g·B, (g+1)·B) of this order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import zlib
from pathlib import Path

import numpy as np

from core.errors import DataError
from core.fs import atomic_open, write_atomic
from core.progress import Progress
from data_prep.indexed_dataset import IndexedDataset

log = logging.getLogger("graine.sample_index")

INDEX_VERSION = 1
COMPLETE = "arrays.json"  # written last in a cache folder: the names of its arrays
FIX = "re-run `graine run preprocess`"


def load_blend(shards_dir: Path) -> dict:
    path = Path(shards_dir) / "blend.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found; run the preprocess stage (`graine run preprocess`)") from None
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); {FIX}") from None


def blend_order(weights: np.ndarray, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset of each global sample, its rank within that dataset) for `num_samples` samples.

    Tijdeman's chairman-assignment rule: position n (from 1) goes, among the datasets at least δ behind
    their share (w_d·n − count_d ≥ δ = 1/(2D−2)), to the one whose next sample is due first
    ((count_d + 1 − δ) / w_d; ties to the lower dataset). Every prefix then holds each dataset's share
    to within 1 − δ samples, so every window to within 2 − 2δ (measured: under 1.75). Sorting samples by
    ideal time, which vectorises, drifts up to 3 samples, hence a loop, compiled by numba (~10 ns per
    sample and dataset; `blend_order_reference` is the same rule in Python, which the tests compare).
    """
    w = np.ascontiguousarray(weights, dtype=np.float64)
    delta = 1.0 / (2 * len(w) - 2) if len(w) > 1 else 0.0
    ds_index = np.empty(num_samples, dtype=np.int16)
    ds_sample = np.empty(num_samples, dtype=np.int64)
    _blend_kernel()(w, delta, ds_index, ds_sample)
    return ds_index, ds_sample


def blend_order_reference(weights, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """`blend_order` in plain Python: the rule as written, ~1 µs per sample and dataset."""
    w = [float(x) for x in weights]
    delta = 1.0 / (2 * len(w) - 2) if len(w) > 1 else 0.0
    counts = [0] * len(w)
    ds_index = np.empty(num_samples, dtype=np.int16)
    ds_sample = np.empty(num_samples, dtype=np.int64)
    for n in range(1, num_samples + 1):
        best, best_due = 0, float("inf")
        for d in range(len(w)):
            if w[d] > 0 and w[d] * n - counts[d] >= delta - 1e-9:
                due = (counts[d] + 1 - delta) / w[d]
                if due < best_due:
                    best, best_due = d, due
        ds_index[n - 1], ds_sample[n - 1] = best, counts[best]
        counts[best] += 1
    return ds_index, ds_sample


_KERNEL = None


def _blend_kernel():
    """The compiled loop of `blend_order`, built on first use (cached on disk by numba)."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(cache=True, nogil=True)
        def kernel(w, delta, ds_index, ds_sample):  # pragma: no cover - compiled; checked against the reference
            counts = np.zeros(len(w), dtype=np.int64)
            for i in range(len(ds_index)):
                n = i + 1
                best, best_due = 0, np.inf
                for d in range(len(w)):
                    if w[d] > 0 and w[d] * n - counts[d] >= delta - 1e-9:
                        due = (counts[d] + 1 - delta) / w[d]
                        if due < best_due:
                            best, best_due = d, due
                ds_index[i] = best
                ds_sample[i] = counts[best]
                counts[best] += 1

        _KERNEL = kernel
    return _KERNEL


def epoch_samples(sizes: np.ndarray, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One epoch: (document order, (position in that order, token offset) of each shuffled sample)."""
    order = rng.permutation(len(sizes))
    lengths = sizes[order].astype(np.int64)
    ends = np.cumsum(lengths)
    per_epoch = (int(ends[-1]) - 1) // seq_len
    starts = np.arange(per_epoch, dtype=np.int64) * seq_len
    pos = np.searchsorted(ends, starts, side="right")
    offsets = starts - (ends[pos] - lengths[pos])
    shuffle = rng.permutation(per_epoch)
    return order, pos[shuffle], offsets[shuffle]


def dataset_samples(sizes: np.ndarray, seq_len: int, needed: int, seed: int, name: str):
    """Document orders of as many epochs as `needed` samples take, and each sample's (position, offset)."""
    per_epoch = (int(sizes.sum(dtype=np.int64)) - 1) // seq_len
    epochs = max(1, -(-needed // per_epoch))
    orders, positions, offsets = [], [], []
    for e in range(epochs):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), e])
        order, pos, off = epoch_samples(sizes, seq_len, rng)
        orders.append(order)
        positions.append(pos + e * len(sizes))  # positions index the concatenated orders
        offsets.append(off)
    return (np.concatenate(orders), np.concatenate(positions)[:needed], np.concatenate(offsets)[:needed], epochs)


class EmptySplitError(DataError):
    """No dataset of the split holds one sample: the split is empty for this sequence length."""


class BlendedSampleIndex:
    """`index[g]` is global sample g: (seq_len + 1,) int64 tokens; `len(index)` samples in all."""

    def __init__(self, shards_dir: Path, seq_len: int, seed: int, split: str = "train",
                 num_samples: int | None = None, tokenizer_dir: Path | None = None, cache: bool = True):
        self.shards_dir, self.seq_len, self.seed, self.split = Path(shards_dir), seq_len, seed, split
        blend = load_blend(self.shards_dir)
        self._check_tokenizer(blend, tokenizer_dir)
        self.names, self.datasets, weights = self._open(blend)
        self.weights = weights / weights.sum()
        per_epoch = [(d.num_tokens - 1) // seq_len for d in self.datasets]
        self.num_samples = int(num_samples if num_samples is not None else sum(per_epoch))
        self.fingerprint = self._fingerprint(blend)
        path = self.shards_dir / "index-cache" / f"{split}-L{seq_len}-N{self.num_samples}-{self.fingerprint}"
        self.cache_path = path if cache else None
        if cache and (path / COMPLETE).is_file():
            arrays = self._load(path)
        else:
            self._check_ids(blend)
            arrays = self._build()
            if cache:
                self._save(path, arrays)
        self._unpack(arrays)

    # -------------------------------------------------------------------------------------- setup
    def _check_tokenizer(self, blend: dict, tokenizer_dir: Path | None) -> None:
        if tokenizer_dir is None:
            return
        from data_prep.tokenizer import tokenizer_hash

        expected = tokenizer_hash(tokenizer_dir)
        if blend.get("tokenizer_hash") != expected:
            raise DataError(f"{self.shards_dir / 'blend.json'} was built with tokenizer {blend.get('tokenizer_hash')} "
                            f"but {tokenizer_dir} is {expected}; {FIX} so the shards match the tokenizer")

    def _check_ids(self, blend: dict) -> None:
        """Every id below the vocabulary, from the maximum id preprocess recorded per dataset in
        blend.json (no token is read); shards from before that record are scanned once."""
        vocab = int(blend["vocab_size"])
        for name, data in zip(self.names, self.datasets):
            max_id = blend["datasets"][name][self.split].get("max_id")
            if max_id is None:
                log.warning("%s: blend.json has no max_id (shards from an older graine); scanning its ids",
                            data.bin_path)
                data.check_ids(vocab)
            elif not 0 <= int(max_id) < vocab:
                raise DataError(f"{data.bin_path} holds token ids up to {max_id}, outside the tokenizer's "
                                f"vocabulary (size {vocab}): it was built with another tokenizer; {FIX}")

    def _open(self, blend: dict):
        names, datasets, weights = [], [], []
        for name, d in sorted(blend["datasets"].items()):
            if self.split not in d or d.get("weight", 0) <= 0:
                continue
            ds = IndexedDataset(self.shards_dir / d[self.split]["path"])
            if ds.num_tokens <= self.seq_len:
                log.warning("%s: %d tokens, fewer than one sample of %d; left out of the %s blend",
                            ds.bin_path, ds.num_tokens, self.seq_len + 1, self.split)
                continue
            names.append(name)
            datasets.append(ds)
            weights.append(float(d["weight"]))
        if not datasets:
            raise EmptySplitError(f"{self.shards_dir}: no {self.split} dataset holds more than seq_len={self.seq_len} "
                            f"tokens; lower train.seq_len or add data and {FIX}")
        return names, datasets, np.array(weights, dtype=np.float64)

    def _fingerprint(self, blend: dict) -> str:
        # num_samples is not part of it: the blend is assigned position by position and each epoch is
        # shuffled by (seed, dataset, epoch), so a longer index extends a shorter one without changing
        # its prefix, and a run may raise train.train_tokens and resume on the same order.
        shards = {n: {k: blend["datasets"][n][self.split].get(k) for k in ("bin_sha256", "idx_sha256", "tokens")}
                  for n in self.names}
        sizes = {n: d.bin_path.stat().st_size for n, d in zip(self.names, self.datasets)}
        key = {"version": INDEX_VERSION, "seq_len": self.seq_len, "seed": self.seed, "split": self.split,
               "weights": self.weights.round(12).tolist(), "names": self.names,
               "shards": shards, "sizes": sizes, "tokenizer": blend.get("tokenizer_hash")}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def _build(self) -> dict[str, np.ndarray]:
        ds_index, ds_sample = blend_order(self.weights, self.num_samples)
        arrays = {"ds_index": ds_index, "ds_sample": ds_sample}
        counts = np.bincount(ds_index, minlength=len(self.datasets))
        progress = Progress(f"sample index {self.split}", len(self.names), "datasets", logger=log)
        for d, (name, data) in enumerate(zip(self.names, self.datasets)):
            needed = int(counts[d])
            order, pos, off, epochs = dataset_samples(np.asarray(data.sizes), self.seq_len, max(needed, 1),
                                                      self.seed, name)
            if epochs > 1:
                log.info("%s %s: weight %.3f needs %d epochs", self.split, name, self.weights[d], epochs)
            arrays[f"order{d}"], arrays[f"pos{d}"], arrays[f"off{d}"] = order, pos, off
            progress.update(1, samples=len(order))
        progress.close()
        return arrays

    @staticmethod
    def _save(path: Path, arrays: dict) -> None:
        # A folder written under a name unique to this process (host and pid: jobs on several nodes may
        # share the filesystem), then renamed: readers see the whole index or none. If another process
        # published the same index first, its copy is as good (same contents) and this one is dropped.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, array in arrays.items():
            with atomic_open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, array, allow_pickle=False)
        write_atomic(tmp / COMPLETE, json.dumps(sorted(arrays)))
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / COMPLETE).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _load(path: Path) -> dict[str, np.ndarray]:
        names = json.loads((path / COMPLETE).read_text())
        return {name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in names}

    def _unpack(self, arrays: dict) -> None:
        self.ds_index, self.ds_sample = arrays["ds_index"], arrays["ds_sample"]
        n = len(self.datasets)
        self.orders = [arrays[f"order{d}"] for d in range(n)]
        self.positions = [arrays[f"pos{d}"] for d in range(n)]
        self.offsets = [arrays[f"off{d}"] for d in range(n)]

    # -------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, g: int) -> np.ndarray:
        if not 0 <= g < self.num_samples:
            raise IndexError(f"sample {g} outside [0, {self.num_samples})")
        d, j = int(self.ds_index[g]), int(self.ds_sample[g])
        data, order = self.datasets[d], self.orders[d]
        pos, off = int(self.positions[d][j]), int(self.offsets[d][j])
        out = np.empty(self.seq_len + 1, dtype=np.int64)
        filled = 0
        while filled < len(out):
            doc = data[int(order[pos])][off:off + len(out) - filled]
            out[filled:filled + len(doc)] = doc
            filled += len(doc)
            pos, off = pos + 1, 0
        return out

    def dataset_of(self, g: int) -> str:
        return self.names[int(self.ds_index[g])]
