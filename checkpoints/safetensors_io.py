"""Tensors to safetensors files, sharded Hugging Face style: used by the export stage (weights) and by
`graine checkpoint dump` (optimizer states).

The files are written here, tensor by tensor, rather than by `safetensors.torch.save_file`, which first
copies every tensor of the file into Python bytes, so that the file's data would be in memory twice.
Since a file's header needs only the names, dtypes and shapes, `write_sharded` writes it first and then
asks for the tensors a read batch (READ_BYTES; a bigger tensor as ranges of its elements) at a time:
memory holds one batch, whatever the shard or tensor size. The format is the documented one (an 8-byte
little-endian header length, a JSON header of dtypes, shapes and data offsets, padded with spaces to 8
bytes, then the raw little-endian data); the tests read every file back with safetensors' own loader."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Spec = tuple[tuple[int, ...], "torch.dtype"]  # a tensor's shape and dtype, known before it is read
READ_BYTES = 128 << 20  # tensors asked of `load` at once, within one file


def _nbytes(spec: Spec) -> int:
    shape, dtype = spec
    return math.prod(shape) * dtype.itemsize


def write_sharded(names: list[str], spec: Callable[[str], Spec], load: Callable[[list[str]], dict[str, torch.Tensor]],
                  folder: Path, stem: str, max_bytes: int, metadata: dict | None = None,
                  written: Callable[[int, int], None] | None = None, read_bytes: int | None = None,
                  load_range: Callable[[str, int, int], torch.Tensor] | None = None) -> list[str]:
    """Write tensors as `<stem>.safetensors`, or as numbered shards of at most `max_bytes` each plus a
    `<stem>.safetensors.index.json` (Hugging Face's layout). `spec(name)` is a tensor's (shape, dtype);
    `load(names)` gives the tensors of one read batch of at most `read_bytes` (READ_BYTES), each checked
    against its spec: only one batch is in memory at a time. A tensor bigger than a batch is asked of
    `load_range(name, start, stop)` (its flattened elements [start, stop), 1-D) a batch's worth at a
    time when that is given, else of `load` alone. `written(tensors, bytes)` is called after each file is
    saved (progress). Returns the files written."""
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
        _write_file(folder / file, {n: specs[n] for n in ordered},
                    _pieces(ordered, specs, size_of, load, load_range, batch_limit),
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
                ((n, tensors[n]) for n in ordered), metadata)


def _pieces(ordered: list[str], specs: dict[str, Spec], size_of: dict[str, int], load, load_range,
            limit: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in file order: whole tensors from `load` in batches of at most `limit` bytes, and
    1-D element ranges from `load_range` for a tensor bigger than that."""
    batch: list[str] = []
    size = 0
    for name in ordered:
        alone = load_range is not None and size_of[name] > limit
        if batch and (alone or size + size_of[name] > limit):
            yield from load(batch).items()
            batch, size = [], 0
        if alone:
            numel = math.prod(specs[name][0])
            step = max(limit // specs[name][1].itemsize, 1)  # elements per range
            for lo in range(0, numel, step):
                yield name, load_range(name, lo, min(lo + step, numel))
            continue
        batch.append(name)
        size += size_of[name]
    if batch:
        yield from load(batch).items()


def _write_file(path: Path, specs: dict[str, Spec], pieces: Iterable[tuple[str, torch.Tensor]],
                metadata: dict | None) -> None:
    """The header of `specs` (in their order), then each tensor's bytes straight from its storage, as
    `pieces` gives them: whole, or as consecutive 1-D ranges of its elements (each checked against its
    spec)."""
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
    expected = iter(specs.items())
    name, shape, dtype, left, first = None, (), None, 0, True
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for got_name, t in pieces:
            if left == 0:  # the next tensor begins
                name, (shape, dtype) = next(expected, (None, ((), None)))
                left, first = (math.prod(shape) if name is not None else 0), True
            whole = first and t.numel() == left
            fits = tuple(t.shape) == tuple(shape) if whole else (t.dim() == 1 and 0 < t.numel() <= left)
            if got_name != name or t.dtype != dtype or not fits:
                raise ValueError(f"{path.name}: expected {name} {list(shape)} {dtype}"
                                 f"{'' if first else f' ({left} elements more)'}, was given {got_name} "
                                 f"{list(t.shape)} {t.dtype}")
            left, first = left - t.numel(), False
            t = t.detach().cpu().contiguous()
            if t.numel():
                flat = t.reshape(-1)  # 0-d tensors too
                f.write(memoryview(flat.view(torch.uint8).numpy()) if t.dtype != torch.bool else flat.numpy().tobytes())
            del t  # freed before the next piece is read
        missing = ([f"{left} elements of {name}"] if left else []) + [n for n, _ in expected]
        if missing:
            raise ValueError(f"{path.name}: no tensor given for {', '.join(missing)}")
