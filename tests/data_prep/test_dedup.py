"""MinHash accuracy, LSH edges owned by tasks, cluster resolution, and dedup across filter tasks."""

from __future__ import annotations

import random

import numpy as np
import pytest

from data_prep.dedup import (
    SignatureIndex,
    TaskSignatures,
    exact_edges,
    lsh_candidates,
    resolve_clusters,
    verify,
)
from data_prep.minhash import MinHasher, band_hashes, jaccard, token_hashes
from data_prep.synthetic import TextGenerator


def doc(seed: int, words: int = 200) -> str:
    return TextGenerator(random.Random(seed), "en").document(words)


def edit(text: str, n: int, seed: int) -> str:
    rng, words = random.Random(seed), text.split(" ")
    for _ in range(n):
        words[rng.randrange(len(words))] = f"edit{rng.randrange(10**6)}"
    return " ".join(words)


def test_token_hash_is_position_independent_and_case_blind():
    a, b = token_hashes("Hello world"), token_hashes("the WORLD, hello!")
    assert a[0] == b[2] and a[1] == b[1] and len(set(b.tolist())) == 3


def test_minhash_estimate_tracks_true_jaccard():
    hasher = MinHasher(num_perm=256, shingle_size=5)
    errors = []
    for seed in range(20):
        a = doc(seed)
        b = edit(a, seed % 10 + 1, seed)
        true = jaccard(hasher.shingles(a), hasher.shingles(b))
        estimate = float(np.mean(hasher.signature(a) == hasher.signature(b)))
        errors.append(abs(true - estimate))
    # standard error of the estimate is sqrt(J(1-J)/256) <= 0.031
    assert max(errors) < 0.1 and np.mean(errors) < 0.035


def test_cjk_shingles_by_character():
    hasher = MinHasher()
    a = TextGenerator(random.Random(0), "zh").document(150)
    b = a[:50] + "天" + a[51:]
    assert 0.85 < jaccard(hasher.shingles(a), hasher.shingles(b)) < 1.0


def test_resolve_keeps_smallest_key_per_cluster():
    edges = np.array([[9, 4], [4, 7], [20, 30], [7, 12]], dtype=np.uint64)
    removed, kept = resolve_clusters(edges)
    assert removed.tolist() == [7, 9, 12, 30] and kept.tolist() == [4, 4, 4, 20]
    # a long chain given in the worst order still converges to its minimum
    chain = np.array([[i + 1, i] for i in range(200)][::-1], dtype=np.uint64)
    removed, kept = resolve_clusters(chain)
    assert set(kept.tolist()) == {0} and len(removed) == 200


def split_tasks(texts: list[str], owner: list[int], hasher: MinHasher, bands: int, rows: int) -> list[TaskSignatures]:
    tasks = []
    for t in sorted(set(owner)):
        rows_ = [i for i, o in enumerate(owner) if o == t]
        sigs = np.stack([hasher.signature(texts[i]) for i in rows_])
        exact = np.array([hash(texts[i]) & 0xFFFFFFFFFFFF for i in rows_], dtype=np.uint64)
        tasks.append(TaskSignatures(keys=np.array(rows_, dtype=np.uint64) + np.uint64(1 << 32), exact=exact,
                                    bands=band_hashes(sigs, bands, rows), sigs=sigs))
    return tasks


@pytest.mark.parametrize("world", [1, 2, 3])
def test_near_duplicate_split_across_tasks_is_caught(world):
    hasher = MinHasher(num_perm=128, shingle_size=5)
    originals = [doc(s) for s in range(30)]
    texts = originals + [edit(originals[3], 1, 1), edit(originals[10], 2, 2), originals[20]]
    owner = [1] * 30 + [0, 0, 0]  # the copies sit in another filter task than their originals
    tasks = split_tasks(texts, owner, hasher, 16, 8)
    keys = np.concatenate([t.keys for t in tasks])
    index = SignatureIndex(tasks)
    edges = []
    for rank in range(world):  # dedup tasks own disjoint hash ranges
        exact = exact_edges(keys, np.concatenate([t.exact for t in tasks]), rank, world)
        near = verify(lsh_candidates(keys, np.concatenate([t.bands for t in tasks]), rank, world), index, 0.8)
        edges += [exact, near]
    removed, kept = resolve_clusters(np.concatenate(edges))
    base = 1 << 32
    assert removed.tolist() == [base + 30, base + 31, base + 32]
    assert kept.tolist() == [base + 3, base + 10, base + 20]


def test_dissimilar_documents_are_not_paired():
    hasher = MinHasher()
    texts = [doc(s, 80) for s in range(60)]
    tasks = split_tasks(texts, [0] * 60, hasher, 16, 8)
    pairs = lsh_candidates(tasks[0].keys, tasks[0].bands, 0, 1)
    assert len(verify(pairs, SignatureIndex(tasks), 0.8)) == 0
