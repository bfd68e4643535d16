"""Tensors to safetensors files, sharded Hugging Face style: used by the export stage (weights) and by
`graine checkpoint dump` (optimizer states)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def write_sharded(names: list[str], nbytes: Callable[[str], int], load: Callable[[list[str]], dict[str, torch.Tensor]],
                  folder: Path, stem: str, max_bytes: int, metadata: dict | None = None,
                  written: Callable[[int, int], None] | None = None) -> list[str]:
    """Write tensors as `<stem>.safetensors`, or as numbered shards of at most `max_bytes` each plus a
    `<stem>.safetensors.index.json` (Hugging Face's layout). `load(names)` gives one shard's tensors:
    only one shard is in memory at a time. `written(tensors, bytes)` is called after each shard is
    saved (progress). Returns the files written."""
    from safetensors.torch import save_file

    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        if shards[-1] and size + nbytes(name) > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes(name)
    files = ([f"{stem}.safetensors"] if len(shards) == 1 else
             [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for file, shard in zip(files, shards):
        tensors = {name: t.contiguous() for name, t in load(shard).items()}
        save_file(tensors, str(folder / file), metadata={"format": "pt", **(metadata or {})})
        os.chmod(folder / file, 0o644)  # safetensors creates 0600 files; a release is meant to be read
        weight_map.update(dict.fromkeys(shard, file))
        del tensors
        if written is not None:
            written(len(shard), sum(nbytes(n) for n in shard))
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(nbytes(n) for n in names)}, "weight_map": weight_map}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        files.append(f"{stem}.safetensors.index.json")
    return files
