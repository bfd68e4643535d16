"""Sample-index benchmark: seconds to build the blended training index, graine against Megatron-Core.

Run: .venv/bin/python tests/benchmarks/bench_sample_index.py [--tokens 1e8 1e9 1e10 1e11] [--seq-len 2048]
     [--datasets 4] [--megatron /path/to/site-packages]

Synthetic shards: `--datasets` datasets of random document lengths (100..1899 tokens) holding
shares 0.4/0.3/0.2/0.1 of the tokens (or equal shares beyond 4), in Megatron's `.bin/.idx` format.
The `.bin` files are sparse (their size is right, their pages are never written), which is enough:
neither graine nor Megatron reads token ids while building the index. So 100B tokens need ~1.2 GB
of real disk for the indexes only.

Timed for both: from opening the datasets to the finished in-memory index of the training split
(`num_samples` = one epoch of the blend), caches off, after one untimed warm-up build at 100M tokens
(numba's compiled blend kernel is loaded from its cache; Megatron's C++ helpers are prebuilt in the
wheel). Megatron is measured only where `megatron.core` imports (`--megatron` adds a folder holding
it, e.g. one made by `pip install --no-deps --target DIR megatron-core`); its row is left out otherwise.
Both builds run in this process, one after the other, on the same files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from data_prep.indexed_dataset import write_index  # noqa: E402
from data_prep.sample_index import BlendedSampleIndex  # noqa: E402


def make_shards(root: Path, tokens: int, n_datasets: int, seed: int = 0) -> list[tuple[str, float]]:
    """Sparse synthetic shards and a blend.json; (prefix, weight) of each dataset."""
    rng = np.random.default_rng(seed)
    shares = (0.4, 0.3, 0.2, 0.1) if n_datasets == 4 else tuple([1 / n_datasets] * n_datasets)
    (root / "train").mkdir(parents=True)
    datasets, out = {}, []
    for k, share in enumerate(shares):
        sizes = rng.integers(100, 1900, max(1, int(share * tokens / 1000))).astype(np.int32)
        prefix = root / "train" / f"d{k}"
        with open(prefix.with_suffix(".bin"), "wb") as f:
            f.truncate(int(sizes.sum(dtype=np.int64)) * 2)  # uint16 ids, never written: a sparse file
        write_index(prefix.with_suffix(".idx"), sizes, np.uint16)
        datasets[f"d{k}"] = {"lang": f"d{k}", "weight": share,
                             "train": {"path": f"train/d{k}", "tokens": int(sizes.sum(dtype=np.int64)),
                                       "max_id": 7999}}
        out.append((str(prefix), share))
    (root / "blend.json").write_text(json.dumps({"vocab_size": 8000, "datasets": datasets}))
    return out


def graine_build(root: Path, seq_len: int) -> tuple[float, int]:
    t = time.perf_counter()
    index = BlendedSampleIndex(root, seq_len, seed=1, cache=False)
    return time.perf_counter() - t, len(index)


def megatron_build(prefixes: list[tuple[str, float]], seq_len: int, num_samples: int) -> float:
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    class Tok:  # GPTDataset asks the tokenizer for its vocabulary size, EOD and pad ids only
        vocab_size, eod, pad, unique_identifiers = 8000, 0, 1, {"class": "bench"}

    config = GPTDatasetConfig(random_seed=1, sequence_length=seq_len,
                              blend=([p for p, _ in prefixes], [w for _, w in prefixes]), split="100,0,0",
                              reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                              path_to_cache=None, mmap_bin_files=True, tokenizer=Tok(),
                              mid_level_dataset_surplus=0.005)
    t = time.perf_counter()
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, config).build()
    elapsed = time.perf_counter() - t
    assert len(train) >= num_samples, (len(train), num_samples)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=float, nargs="+", default=[1e8, 1e9, 1e10, 1e11])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--datasets", type=int, default=4)
    ap.add_argument("--megatron", default="", help="a folder holding megatron/core (added to sys.path)")
    ap.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"))
    args = ap.parse_args()
    if args.megatron:
        sys.path.insert(0, args.megatron)
    logging.disable(logging.WARNING)
    try:
        import megatron.core.datasets.helpers_cpp  # noqa: F401
        have_megatron = True
    except ImportError:
        have_megatron = False
    print(f"sequence length {args.seq_len}, {args.datasets} datasets, one epoch of the blend; "
          f"megatron: {'megatron-core ' + _version() if have_megatron else 'not importable, not measured'}")
    print(f"{'tokens':>8} {'samples':>12} {'graine s':>9} {'graine ns/sample':>17} {'megatron s':>11} {'ratio':>6}")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        warm = Path(tmp) / "warm"
        prefixes = make_shards(warm, int(1e8), args.datasets)
        graine_build(warm, args.seq_len)
        if have_megatron:
            megatron_build(prefixes, args.seq_len, 1000)
        for tokens in args.tokens:
            root = Path(tmp) / f"t{int(tokens)}"
            prefixes = make_shards(root, int(tokens), args.datasets)
            g, n = graine_build(root, args.seq_len)
            m = megatron_build(prefixes, args.seq_len, n) if have_megatron else None
            rows.append({"tokens": int(tokens), "samples": n, "graine_s": g, "megatron_s": m})
            print(f"{tokens:>8.0e} {n:>12,} {g:>9.3f} {1e9 * g / n:>17.0f} "
                  f"{(f'{m:.3f}' if m is not None else '-'):>11} {(f'{g / m:.2f}' if m else '-'):>6}", flush=True)
            for f in root.rglob("*"):
                if f.is_file():
                    f.unlink()
    print(json.dumps(rows))


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("megatron-core")
    except Exception:
        return "(version unknown)"


if __name__ == "__main__":
    main()
