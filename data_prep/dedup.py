"""Exact and near (MinHash LSH) deduplication across tasks, and deterministic cluster resolution.

Every kept document has a global key (`file index << 32 | line`) that orders documents by input
path and position, whatever the number of tasks. Dedup task r of W owns the exact hashes and LSH
band hashes with `hash % W == r`: it groups equal hashes and emits edges between documents
(LSH candidates only when their estimated Jaccard reaches the threshold). One task then joins all
edges into clusters and keeps, in each cluster, **the document with the smallest key**: the first
in input order (sorted file path, then line). The others are removed as exact or near duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.config import param
from core.errors import ConfigError


@dataclass(kw_only=True)
class DedupConfig:
    exact: bool = param(True, help="drop documents whose normalised text hash was seen before")
    near: bool = param(True, help="MinHash LSH near-duplicate removal")
    shingle_size: int = param(5, ge=1, help="words (characters for zh/ja) per shingle")
    num_perm: int = param(128, ge=8, help="MinHash permutations; must equal bands * rows")
    bands: int = param(16, ge=1, help="LSH bands")
    rows: int = param(8, ge=1, help="rows per LSH band")
    threshold: float = param(0.8, ge=0.0, le=1.0, help="estimated Jaccard above which two documents are duplicates")

    def __post_init__(self) -> None:
        if self.bands * self.rows != self.num_perm:
            raise ConfigError(f"clean.dedup.num_perm={self.num_perm} must equal clean.dedup.bands * clean.dedup.rows "
                              f"= {self.bands} * {self.rows}; set clean.dedup.num_perm={self.bands * self.rows}")


EXACT, NEAR = 0, 1
MAX_ALL_PAIRS = 32  # larger buckets are joined as a star around their smallest key


@dataclass
class TaskSignatures:
    """One filter task's kept documents, row-aligned: keys, exact hashes, band hashes, signatures."""

    keys: np.ndarray  # (N,) uint64
    exact: np.ndarray  # (N,) uint64
    bands: np.ndarray  # (N, bands) uint64
    sigs: np.ndarray  # (N, num_perm) uint32, usually a read-only memmap


def _groups(hashes: np.ndarray, keys: np.ndarray) -> list[np.ndarray]:
    """Keys of every hash value held by two documents or more (each group sorted by key)."""
    order = np.lexsort((keys, hashes))
    h, k = hashes[order], keys[order]
    boundaries = np.flatnonzero(np.diff(h)) + 1
    starts = np.concatenate([[0], boundaries])
    sizes = np.diff(np.concatenate([starts, [len(h)]]))
    return [k[s : s + n] for s, n in zip(starts[sizes > 1], sizes[sizes > 1])]


def exact_edges(keys: np.ndarray, exact: np.ndarray, rank: int, world: int) -> np.ndarray:
    """(E, 2) edges (smallest key of the group, other key) for the exact hashes this task owns."""
    mine = exact % np.uint64(world) == np.uint64(rank)
    edges = [np.stack([g[np.zeros(len(g) - 1, dtype=int)], g[1:]], axis=1) for g in _groups(exact[mine], keys[mine])]
    return np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.uint64)


def lsh_candidates(keys: np.ndarray, bands: np.ndarray, rank: int, world: int) -> np.ndarray:
    """(E, 2) candidate pairs from the (band, bucket) hashes this task owns, unique, sorted."""
    n, b = bands.shape
    flat_h = bands.reshape(-1)
    flat_k = np.repeat(keys, b)
    mine = flat_h % np.uint64(world) == np.uint64(rank)
    pairs = []
    for group in _groups(flat_h[mine], flat_k[mine]):
        group = np.unique(group)  # a document may share several bands with the same bucket hash
        if len(group) < 2:
            continue
        if len(group) <= MAX_ALL_PAIRS:
            i, j = np.triu_indices(len(group), k=1)
        else:
            i, j = np.zeros(len(group) - 1, dtype=int), np.arange(1, len(group))
        pairs.append(np.stack([group[i], group[j]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.uint64)
    return np.unique(np.concatenate(pairs), axis=0)


class SignatureIndex:
    """Look up signatures by global key across the filter tasks' (memory-mapped) arrays."""

    def __init__(self, tasks: list[TaskSignatures]):
        self.tasks = tasks
        self.keys = np.concatenate([t.keys for t in tasks]) if tasks else np.zeros(0, np.uint64)
        self.task_of = np.concatenate([np.full(len(t.keys), i) for i, t in enumerate(tasks)]) if tasks else np.zeros(0, int)
        self.row_of = np.concatenate([np.arange(len(t.keys)) for t in tasks]) if tasks else np.zeros(0, int)
        self.order = np.argsort(self.keys, kind="stable")

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        pos = self.order[np.searchsorted(self.keys[self.order], keys)]
        num_perm = self.tasks[0].sigs.shape[1]
        out = np.empty((len(keys), num_perm), dtype=np.uint32)
        for t, task in enumerate(self.tasks):
            sel = self.task_of[pos] == t
            if sel.any():
                out[sel] = task.sigs[self.row_of[pos[sel]]]
        return out


def verify(pairs: np.ndarray, index: SignatureIndex, threshold: float) -> np.ndarray:
    """Keep the candidate pairs whose signatures agree on at least `threshold` of the permutations."""
    if len(pairs) == 0:
        return pairs
    keep = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), 65536):  # bounds memory: two signature rows per pair
        block = pairs[start : start + 65536]
        similarity = (index.lookup(block[:, 0]) == index.lookup(block[:, 1])).mean(axis=1)
        keep[start : start + len(block)] = similarity >= threshold
    return pairs[keep]


def resolve_clusters(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the edge list: (removed keys, the kept key of each), sorted by key.

    Union by minimum with pointer jumping, all in numpy; a component's label is its smallest key.
    """
    if len(edges) == 0:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty
    nodes, inverse = np.unique(edges.reshape(-1), return_inverse=True)
    a, b = inverse.reshape(-1, 2).T
    parent = np.arange(len(nodes))
    while True:
        ra, rb = parent[a], parent[b]
        if np.array_equal(ra, rb):
            break
        low = np.minimum(ra, rb)
        np.minimum.at(parent, ra, low)
        np.minimum.at(parent, rb, low)
        while True:  # pointer jumping until every node points at a root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    removed = parent != np.arange(len(nodes))
    return nodes[removed], nodes[parent[removed]]
