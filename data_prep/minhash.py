"""Vectorised hashing for dedup and filters: token hashes, shingles, MinHash signatures, LSH bands.

No Python loop runs per token or per shingle: the text becomes an array of code points, words are
hashed with a position-normalised polynomial (prefix sums over uint64, wrapping by design), shingles
combine k consecutive token hashes, and the permutations are one (shingles x num_perm) product.
Hashes are fixed functions of the text and the seed: identical on every machine and every run.
"""

from __future__ import annotations

import re

import numpy as np

_P = np.uint64(0x100000001B3)  # odd, hence invertible modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_C = np.uint64(0x9E3779B97F4A7C15)
_SEPARATOR = re.compile(r"[\W_]+")
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_powers = np.ones(1, dtype=np.uint64)
_inv_powers = np.ones(1, dtype=np.uint64)


def _grow_powers(n: int) -> None:
    if len(_powers) >= n:
        return
    size = max(n, 2 * len(_powers))
    with np.errstate(over="ignore"):
        for name, base in (("_powers", _P), ("_inv_powers", _P_INV)):
            factors = np.full(size, base, dtype=np.uint64)
            factors[0] = 1
            globals()[name] = np.cumprod(factors, dtype=np.uint64)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads polynomial hashes over all 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)


def is_cjk(text: str, sample: int = 500) -> bool:
    """True when CJK characters dominate: such text is shingled by character, not by word."""
    head = text[:sample]
    return len(_CJK.findall(head)) * 3 > len(head.replace(" ", "")) > 0


def token_hashes(text: str, cjk: bool = False) -> np.ndarray:
    """One uint64 per word (lower-cased, punctuation removed), or per character for CJK text."""
    cleaned = _SEPARATOR.sub(" ", text.lower()).strip()
    cps = code_points(cleaned)
    if cjk:
        return mix64(cps[cps != 32] + np.uint64(1))
    if len(cps) == 0:
        return cps
    _grow_powers(len(cps) + 1)
    sep = cps == 32
    with np.errstate(over="ignore"):
        weighted = (cps + np.uint64(1)) * _powers[: len(cps)]
        weighted[sep] = 0
        starts = np.flatnonzero(~sep & np.concatenate([[True], sep[:-1]]))
        sums = np.add.reduceat(weighted, starts)
        return mix64(sums * _inv_powers[starts])


def rolling_hashes(cps: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash of every run of n code points, from one prefix sum (no loop over n).

    Unmixed: good for counting equal n-grams, not as a hash for MinHash.
    """
    m = len(cps) - n + 1
    if m <= 0:
        return cps[:0]
    _grow_powers(len(cps) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(cps) + 1, dtype=np.uint64)
        np.cumsum((cps + np.uint64(1)) * _powers[: len(cps)], out=prefix[1:])
        return (prefix[n:] - prefix[:m]) * _inv_powers[:m]


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every run of n consecutive tokens (one hash of all tokens when fewer than n)."""
    if len(tokens) == 0:
        return tokens
    n = min(n, len(tokens))
    m = len(tokens) - n + 1
    with np.errstate(over="ignore"):
        out = tokens[:m].copy()
        for t in range(1, n):  # a loop over the shingle width, not over shingles
            out = out * _C + tokens[t : t + m]
    return mix64(out)


class MinHasher:
    """MinHash signatures with num_perm universal hash functions h(x) = (a*x + b) >> 32."""

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def shingles(self, text: str, cjk: bool | None = None) -> np.ndarray:
        cjk = is_cjk(text) if cjk is None else cjk
        return ngram_hashes(token_hashes(text, cjk), self.shingle_size)

    def signature(self, text: str, cjk: bool | None = None) -> np.ndarray:
        shingles = self.shingles(text, cjk)
        if len(shingles) == 0:
            return np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, len(shingles), 4096):  # bounds memory on very long documents
                block = shingles[start : start + 4096, None] * self.a[None, :] + self.b[None, :]
                np.minimum(sig, block.min(axis=0), out=sig)
        return (sig >> np.uint64(32)).astype(np.uint32)


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64: one hash per band of rows; the band index is mixed in so bands never collide."""
    n = len(signatures)
    sig = signatures[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.zeros((n, bands), dtype=np.uint64) + np.arange(bands, dtype=np.uint64)[None, :]
        for r in range(rows):
            h = mix64(h * _C + sig[:, :, r])
    return h


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash arrays (for tests and verification)."""
    sa, sb = np.unique(a), np.unique(b)
    union = len(np.union1d(sa, sb))
    return len(np.intersect1d(sa, sb, assume_unique=True)) / union if union else 1.0
