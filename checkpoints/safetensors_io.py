"""Tensors to safetensors files, sharded Hugging Face style: used by the export stage (weights) and by
`graine checkpoint dump` (optimizer states).

The files are written here, tensor by tensor, rather than by `safetensors.torch.save_file`, which first
copies every tensor of the file into Python bytes, so that the file's data would be in memory twice. Since a
file's header needs only the names, dtypes and shapes, `write_sharded` writes it first and then asks for
the tensors a read batch (READ_BYTES, or one tensor if larger) at a time: memory holds one batch, whatever
the shard size. The format is the documented one (an 8-byte little-endian header length, a JSON header of
dtypes, shapes and data offsets, padded with spaces to 8 bytes, then the raw little-endian data); the
tests read every file back with safetensors' own loader."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Spec = tuple[tuple[int, ...], "torch.dtype"]  # a tensor's shape and dtype, known before it is read
READ_BYTES = 128 << 20  # tensors asked of `load` at once, within one file


def _nbytes(spec: Spec) -> int:
    import torch

    shape, dtype = spec
    return math.prod(shape) * torch.empty(0, dtype=dtype).element_size()


def write_sharded(names: list[str], spec: Callable[[str], Spec], load: Callable[[list[str]], dict[str, torch.Tensor]],
                  folder: Path, stem: str, max_bytes: int, metadata: dict | None = None,
                  written: Callable[[int, int], None] | None = None, read_bytes: int | None = None) -> list[str]:
    """Write tensors as `<stem>.safetensors`, or as numbered shards of at most `max_bytes` each plus a
    `<stem>.safetensors.index.json` (Hugging Face's layout). `spec(name)` is a tensor's (shape, dtype);
    `load(names)` gives the tensors of one read batch of at most `read_bytes` (READ_BYTES), each checked
    against its spec: only one batch is in memory at a time. `written(tensors, bytes)` is called after
    each file is saved (progress). Returns the files written."""
    specs = {n: spec(n) for n in names}
    size_of = {n: _nbytes(specs[n]) for n in names}
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        if shards[-1] and size + size_of[name] > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += size_of[name]
    files = ([f"{stem}.safetensors"] if len(shards) == 1 else
             [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    batch_limit = READ_BYTES if read_bytes is None else read_bytes
    for file, shard in zip(files, shards):
        ordered = sorted(shard)  # the file's order, header and data alike
        batches: list[list[str]] = [[]]
        size = 0
        for name in ordered:
            if batches[-1] and size + size_of[name] > batch_limit:
                batches.append([])
                size = 0
            batches[-1].append(name)
            size += size_of[name]
        _write_file(folder / file, {n: specs[n] for n in ordered}, (load(b) for b in batches),
                    {"format": "pt", **(metadata or {})})
        os.chmod(folder / file, 0o644)  # a release is meant to be read
        weight_map.update(dict.fromkeys(shard, file))
        if written is not None:
            written(len(shard), sum(size_of[n] for n in shard))
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(size_of.values())}, "weight_map": weight_map}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        files.append(f"{stem}.safetensors.index.json")
    return files


_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
           "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """One safetensors file of the tensors in memory, in name order."""
    ordered = sorted(tensors)
    _write_file(Path(path), {n: (tuple(tensors[n].shape), tensors[n].dtype) for n in ordered},
                [{n: tensors[n] for n in ordered}], metadata)


def _write_file(path: Path, specs: dict[str, Spec], batches: Iterable[dict[str, torch.Tensor]],
                metadata: dict | None) -> None:
    """The header of `specs` (in their order), then each tensor's bytes straight from its storage, as the
    batches give them (in the same order, each checked against its spec)."""
    import torch

    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for name, (shape, dtype) in specs.items():
        code = _DTYPES.get(str(dtype).removeprefix("torch."))
        if code is None:
            raise ValueError(f"{name}: safetensors has no dtype for {dtype}")
        size = _nbytes((shape, dtype))
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    pending = iter(specs.items())
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for batch in batches:
            t = None
            for got_name, t in batch.items():
                name, (shape, dtype) = next(pending, (None, (None, None)))
                if got_name != name or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                    raise ValueError(f"{path.name}: expected {name} {list(shape or ())} {dtype}, was given "
                                     f"{got_name} {list(t.shape)} {t.dtype}")
                t = t.detach().cpu().contiguous()
                if t.numel():
                    flat = t.reshape(-1)  # 0-d tensors too
                    f.write(memoryview(flat.view(torch.uint8).numpy()) if t.dtype != torch.bool else flat.numpy().tobytes())
            del batch, t  # freed before the next batch is read
        missing = [name for name, _ in pending]
        if missing:
            raise ValueError(f"{path.name}: no tensor given for {', '.join(missing)}")
