"""Megatron's memory-mapped indexed dataset: `<prefix>.bin` (token ids) and `<prefix>.idx` (the index).

`.idx` layout (little-endian): magic `MMIDIDX\\x00\\x00`, version `<Q` = 1, dtype code `<B`
(uint16 = 8 below 65,500 ids, else int32 = 4), sequence count `<Q`, document count `<Q` (= sequences
+ 1: document indices are the boundaries 0..N, one sequence per document), then int32 sequence
lengths, int64 byte offsets of the sequences in `.bin`, int64 document indices.

Writers stage both files under hidden temporary names (core.fs) and rename `.bin` then `.idx`, so a
dataset is visible only once whole; readers check the `.idx` against itself and against the `.bin`
size, raising `DataError` that names the file and what to re-run.
"""

from __future__ import annotations

import shutil
import struct
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from core.errors import DataError
from core.fs import atomic_open
from core.hashing import sha256_file

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
HEADER = len(MAGIC) + 8 + 1 + 8 + 8
FIX = "re-run `graine run preprocess` (delete the damaged shards/ folder first)"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def write_index(path: Path, sizes: np.ndarray, dtype: np.dtype) -> None:
    """Write `.idx` for sequences of `sizes` tokens (one document each), atomically."""
    dtype = np.dtype(dtype)
    sizes = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= dtype.itemsize
    with atomic_open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", VERSION) + struct.pack("<B", CODES[dtype]))
        f.write(struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(sizes) + 1))
        f.write(sizes.tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(len(sizes) + 1, dtype=np.int64).tobytes())


class IndexedDatasetWriter:
    """Appends documents to `<prefix>.bin`; `finalize()` writes `.idx` and makes both visible."""

    def __init__(self, prefix: Path, dtype: np.dtype):
        self.prefix, self.dtype = Path(prefix), np.dtype(dtype)
        # `.bin` stays open across calls: atomic_open is entered here and left in finalize().
        self._file = ExitStack()
        self._bin = self._file.enter_context(atomic_open(self.bin_path, "wb"))
        self._sizes: list[int] = []

    @property
    def bin_path(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".bin")

    @property
    def idx_path(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".idx")

    def add_document(self, ids) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self._bin.write(arr.tobytes())
        self._sizes.append(len(arr))

    def add_documents(self, docs: list[list[int]]) -> int:
        """Append documents; returns their largest token id (-1 for none), which preprocess records."""
        if not docs:
            return -1
        flat = np.fromiter((t for d in docs for t in d), dtype=self.dtype)
        self._bin.write(flat.tobytes())
        self._sizes.extend(len(d) for d in docs)
        return int(flat.max()) if flat.size else -1

    def finalize(self) -> None:
        self._file.close()  # fsync `.bin`, rename it into place, fsync the folder
        write_index(self.idx_path, np.array(self._sizes, dtype=np.int32), self.dtype)


def read_index(path: Path) -> tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray]:
    """(dtype, sizes, pointers, doc_idx) of an `.idx`, checked for internal consistency."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read ({exc}); {FIX}") from None
    if len(data) < HEADER or bytes(data[:len(MAGIC)]) != MAGIC:
        raise DataError(f"{path} is not a Megatron indexed-dataset index (bad magic); {FIX}")
    version, code, n, n_docs = struct.unpack("<QBQQ", bytes(data[len(MAGIC):HEADER]))
    if version != VERSION or code not in DTYPES:
        raise DataError(f"{path}: unsupported version {version} or dtype code {code}; {FIX}")
    expected = HEADER + n * 4 + n * 8 + n_docs * 8
    if len(data) != expected:
        raise DataError(f"{path} has {len(data)} bytes but its header (sequences={n}, documents={n_docs}) "
                        f"needs {expected}: it is truncated or inconsistent; {FIX}")
    sizes = np.frombuffer(data, np.int32, n, HEADER)
    pointers = np.frombuffer(data, np.int64, n, HEADER + 4 * n)
    doc_idx = np.frombuffer(data, np.int64, n_docs, HEADER + 12 * n)
    dtype = np.dtype(DTYPES[code])
    if n and (sizes.min() < 0 or pointers[0] != 0
              or not np.array_equal(pointers[1:], pointers[:-1] + sizes[:-1].astype(np.int64) * dtype.itemsize)):
        raise DataError(f"{path}: sequence lengths and byte pointers disagree; {FIX}")
    if n_docs and (doc_idx[0] != 0 or doc_idx[-1] != n or np.any(np.diff(doc_idx) < 0)):
        raise DataError(f"{path}: document indices do not run from 0 to {n}; {FIX}")
    return dtype, sizes, pointers, doc_idx


class IndexedDataset:
    """A read-only, memory-mapped dataset; `ds[i]` is document i's tokens (a view, no copy)."""

    def __init__(self, prefix: Path):
        self.prefix = Path(prefix)
        self.idx_path = self.prefix.with_name(self.prefix.name + ".idx")
        self.bin_path = self.prefix.with_name(self.prefix.name + ".bin")
        if not self.idx_path.is_file() or not self.bin_path.is_file():
            raise DataError(f"{self.prefix}.bin/.idx not found; {FIX}")
        self.dtype, self.sizes, self.pointers, self.doc_idx = read_index(self.idx_path)
        self.num_tokens = int(self.sizes.sum(dtype=np.int64))
        expected = self.num_tokens * self.dtype.itemsize
        actual = self.bin_path.stat().st_size
        if actual != expected:
            what = "truncated" if actual < expected else "longer than its index says"
            raise DataError(f"{self.bin_path} is {what}: {actual} bytes, {self.idx_path.name} describes "
                            f"{expected}; {FIX}")
        self.tokens = (np.memmap(self.bin_path, dtype=self.dtype, mode="r") if expected
                       else np.empty(0, dtype=self.dtype))

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.sizes[i])]

    def check_ids(self, vocab_size: int, chunk: int = 1 << 26) -> None:
        """Every id below `vocab_size`; the error names the file and the fix."""
        for start in range(0, self.num_tokens, chunk):
            part = self.tokens[start:start + chunk]
            if part.size and (int(part.max()) >= vocab_size or int(part.min()) < 0):
                raise DataError(f"{self.bin_path} holds token ids outside the tokenizer's vocabulary "
                                f"(size {vocab_size}): it was built with another tokenizer; {FIX}")


def merge_datasets(parts: list[Path], prefix: Path) -> dict:
    """Concatenate datasets (in the given order) into `<prefix>.bin/.idx` without decoding them."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    bin_path, idx_path = prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")
    datasets = [IndexedDataset(p) for p in parts]
    dtypes = {d.dtype for d in datasets}
    if len(dtypes) > 1:
        raise DataError(f"parts of {prefix} have different dtypes {dtypes}; {FIX}")
    with atomic_open(bin_path, "wb") as out:
        for d in datasets:
            with open(d.bin_path, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    sizes = np.concatenate([d.sizes for d in datasets]) if datasets else np.zeros(0, np.int32)
    write_index(idx_path, sizes, dtypes.pop() if dtypes else np.uint16)
    return {"documents": int(len(sizes)), "tokens": int(sizes.sum(dtype=np.int64)),
            "bin_sha256": sha256_file(bin_path), "idx_sha256": sha256_file(idx_path)}
