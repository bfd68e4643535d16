"""Tensors to safetensors files, sharded Hugging Face style: used by the export stage (weights) and by
`graine checkpoint dump` (optimizer states).

The files are written here, tensor by tensor, rather than by `safetensors.torch.save_file`, which first
copies every tensor of the file into Python bytes: with the shard's tensors (and the memory-mapped
checkpoint pages they were read from) that held the shard in memory two or three times over. The format
is the documented one (an 8-byte little-endian header length, a JSON header of dtypes, shapes and data
offsets, padded with spaces to 8 bytes, then the raw little-endian data); the tests read every file back
with safetensors' own loader."""

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
        save_tensors(tensors, folder / file, {"format": "pt", **(metadata or {})})
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


_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
           "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """One safetensors file, each tensor's bytes written straight from its storage (no copy of the file's
    data in memory), in name order."""
    import torch

    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        dtype = _DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise ValueError(f"{name}: safetensors has no dtype for {t.dtype}")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in sorted(tensors):
            t = tensors[name].detach().cpu().contiguous()
            if t.numel():
                flat = t.reshape(-1)  # 0-d tensors too
                f.write(memoryview(flat.view(torch.uint8).numpy()) if t.dtype != torch.bool else flat.numpy().tobytes())
