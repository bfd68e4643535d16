"""A DeepSpeed ZeRO 1-3 checkpoint's fp32 master weights and Adam moments, a few parameters at a time.

DeepSpeed's own readers (zero_to_fp32, ds_to_universal) load every rank's optimizer file whole: 12 bytes
per parameter in memory at once for a checkpoint of one rank, which at 176B parameters is 2 TB. Here
each file's pickle is read once for where its flat tensors lie in the file (`torch.load` on the meta
device: no data read), and a batch of parameters (one read batch of the export or the dump) is read with
`pread` from those offsets straight into the parameters' full tensors: memory holds the batch, nothing is
mapped, and a file is not unpickled again however many batches touch it (ZeRO-3 touches every rank's file
for every parameter).

Layouts (per optimizer group, parameters in the order of `param_shapes` in the model states files):
- ZeRO 1 and 2, and the bf16 optimizer: the group's parameters are flattened end to end (padded at the
  end) and cut into one equal partition per rank; rank r holds elements [r·P, (r+1)·P) of the group
  (`single_partition_of_fp32_groups`, and the moments in `base_optimizer_state` alike).
- ZeRO-3: each parameter is cut into one partition of ceil(numel / world) elements per rank (the last
  padded); rank r holds its partition of every parameter of the group, end to end (`fp32_flat_groups`,
  and the moments in `optimizer_state_dict.state`).
Checked bit for bit against DeepSpeed's zero_to_fp32 and against the live optimizer in the tests.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from checkpoints import safe_load
from core.errors import CheckpointError

STATES = ("fp32", "exp_avg", "exp_avg_sq")
_RANK = re.compile(r"zero_pp_rank_(\d+)_")


def parameter_groups(folder: Path) -> list[dict[str, tuple[int, ...]]]:
    """Per optimizer group, {name: shape} in the optimizer's order (DeepSpeed's `param_shapes`)."""
    groups: list[dict[str, tuple[int, ...]]] = []
    for path in sorted(folder.glob("*model_states.pt")):
        saved = safe_load.load(path, meta=True).get("param_shapes") or []
        for i, shapes in enumerate(saved):
            if i == len(groups):
                groups.append({})
            groups[i].update({name: tuple(shape) for name, shape in shapes.items()})
    if not groups:
        raise CheckpointError(f"{folder} records no parameter shapes (param_shapes); is it a DeepSpeed ZeRO checkpoint?")
    return groups


@dataclass(frozen=True)
class _Place:
    group: int
    shape: tuple[int, ...]
    numel: int
    offset: int  # ZeRO 1/2: in the group's flat buffer; ZeRO-3: in each rank's flat partition of the group


@dataclass(frozen=True)
class _Stored:
    """Where a flat fp32 tensor of a rank file lies: its first element's byte offset in the file."""
    offset: int
    numel: int


def _flat(osd: dict, state: str, group: int, folder: Path) -> torch.Tensor:
    if state == "fp32":
        flats = osd.get("single_partition_of_fp32_groups") or osd.get("fp32_flat_groups")
        if flats is None:
            raise CheckpointError(f"{folder}: no fp32 partitions in the optimizer files "
                                  "(neither single_partition_of_fp32_groups nor fp32_flat_groups)")
        return flats[group]
    base = osd.get("base_optimizer_state", osd.get("optimizer_state_dict"))
    per_group = base["state"] if isinstance(base, dict) and "state" in base else base
    try:
        return per_group[group][state]
    except (KeyError, IndexError, TypeError):
        raise CheckpointError(f"{folder}: optimizer group {group} has no {state} (was the optimizer "
                              "stepped before the save?)") from None


def _meta_offset(t: torch.Tensor) -> int | None:
    """The file offset torch records on storages loaded on the meta device (torch >= 2.6), or None."""
    offset = getattr(t.untyped_storage(), "_checkpoint_offset", None)
    return None if offset is None else offset + t.storage_offset() * t.element_size()


def _mapped_offset(t: torch.Tensor, path: Path) -> int:
    """The file offset of a tensor of `path` loaded with mmap=True (older torch): its address less the
    start of the file's mapping (/proc/self/maps)."""
    address = t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
    real = str(path.resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == real:
            start, stop = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < stop:
                return address - start + int(fields[2], 16)
    raise CheckpointError(f"{path}: cannot locate its tensors in the file (no mapping of it holds them)")


def locate(path: Path, folder: Path, groups: int, meta: dict | None = None) -> dict[tuple[str, int], _Stored | str]:
    """{(state, group): where its flat tensor lies in the rank file `path`, or why it is not there}.
    `meta`: the file's optimizer_state_dict already loaded on the meta device."""
    if meta is None:
        meta = safe_load.load(path, meta=True)["optimizer_state_dict"]
    found: dict[tuple[str, int], _Stored | str] = {}
    mapped = None
    for state in STATES:
        for g in range(groups):
            try:
                t = _flat(meta, state, g, folder)
            except CheckpointError as exc:
                if state == "fp32":
                    raise
                found[state, g] = str(exc)
                continue
            if not t.is_contiguous() or t.dtype != torch.float32:
                raise CheckpointError(f"{path}: the {state} partition of group {g} is stored as {t.dtype}"
                                      f"{'' if t.is_contiguous() else ', not contiguously'}; DeepSpeed keeps "
                                      "contiguous fp32 partitions: is this a DeepSpeed ZeRO checkpoint?")
            offset = _meta_offset(t)
            if offset is None:  # torch < 2.6 records no offsets: map the file (nothing read) to find them
                mapped = mapped or safe_load.load(path, mmap=True)["optimizer_state_dict"]
                offset = _mapped_offset(_flat(mapped, state, g, folder), path)
            found[state, g] = _Stored(offset, t.numel())
    return found


def _pread_into(fd: int, offset: int, dest: torch.Tensor, path: Path) -> None:
    """Fill the contiguous tensor `dest` with the file's bytes from `offset`."""
    view = memoryview(dest.numpy()).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise CheckpointError(f"{path} ends at byte {offset + done}, before the values read from it; the file is "
                                  "truncated")
        done += got


class ZeroCheckpoint:
    """`read(names, state)`: {name: fp32 tensor of the parameter's full shape} for a ZeRO 1-3 folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        files = sorted(self.folder.glob("*_optim_states.pt"))
        if not files:
            raise CheckpointError(f"{folder} holds no ZeRO optimizer partitions (*_optim_states.pt): saved with "
                                  "train.zero_stage=0?")
        ranks = {int(m.group(1)): f for f in files if (m := _RANK.search(f.name))}
        if sorted(ranks) != list(range(len(files))):
            raise CheckpointError(f"{folder}: optimizer files of ranks {sorted(ranks)}, expected 0..{len(files) - 1}; "
                                  "the checkpoint is incomplete")
        self.files = [ranks[r] for r in range(len(files))]
        self.world = len(self.files)
        first = safe_load.load(self.files[0], meta=True)["optimizer_state_dict"]
        self.stage = int(first["zero_stage"])
        self.groups = groups = parameter_groups(self.folder)
        self.places: dict[str, _Place] = {}
        for g, shapes in enumerate(groups):
            offset = 0
            for name, shape in shapes.items():
                numel = math.prod(shape)
                self.places[name] = _Place(g, shape, numel, offset)
                offset += numel if self.stage < 3 else math.ceil(numel / self.world)
        self.stored = [locate(f, self.folder, len(groups), first if r == 0 else None)
                       for r, f in enumerate(self.files)]
        self.partition = [self.stored[0]["fp32", g].numel for g in range(len(groups))]

    @property
    def names(self) -> list[str]:
        return list(self.places)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.places[name].shape

    def _pieces(self, place: _Place) -> list[tuple[int, int, int]]:
        """(rank, start, stop) slices of rank files whose concatenation is the parameter (then cut to numel)."""
        if self.stage == 3:
            part = math.ceil(place.numel / self.world)
            return [(r, place.offset, place.offset + part) for r in range(self.world)]
        p = self.partition[place.group]
        lo, hi = place.offset, place.offset + place.numel
        return [(r, max(lo - r * p, 0), min(hi - r * p, p)) for r in range(lo // p, (hi - 1) // p + 1)]

    def read(self, names: list[str], state: str = "fp32") -> dict[str, torch.Tensor]:
        """{name: the parameter's values in its full shape} for the parameters `names`."""
        flat = self._read({n: (0, self.places[n].numel) for n in names}, state)
        return {n: flat.pop(n).reshape(self.places[n].shape) for n in names}

    def read_range(self, name: str, start: int, stop: int, state: str = "fp32") -> torch.Tensor:
        """Elements [start, stop) of the flattened parameter `name` (1-D): a tensor bigger than memory
        should hold is read this way, a range at a time."""
        numel = self.places[name].numel
        if not 0 <= start <= stop <= numel:
            raise ValueError(f"{name}: elements {start}..{stop} of {numel}")
        return self._read({name: (start, stop)}, state)[name]

    def _read(self, ranges: dict[str, tuple[int, int]], state: str) -> dict[str, torch.Tensor]:
        if state not in STATES:
            raise ValueError(f"state {state!r}; valid: {STATES}")
        out = {n: torch.empty(hi - lo, dtype=torch.float32) for n, (lo, hi) in ranges.items()}
        by_rank: dict[int, list[tuple[str, int, int, int]]] = {}  # rank: (name, offset in out, start, stop)
        for name, (lo, hi) in ranges.items():
            place, at = self.places[name], 0  # `at`: the parameter's element where this piece begins
            for r, a, b in self._pieces(place):
                take = min(b - a, place.numel - at)  # ZeRO-3 pads the last rank's partition
                first, last = max(lo, at), min(hi, at + take)  # the wanted part of this piece
                if first < last:
                    by_rank.setdefault(r, []).append((name, first - lo, a + first - at, a + last - at))
                at += max(take, 0)
            if at < place.numel:
                raise CheckpointError(f"{self.folder}: {name} needs {place.numel} values, its partitions hold "
                                      f"{at}; the checkpoint does not match its param_shapes")
        for rank in sorted(by_rank):
            path = self.files[rank]
            fd = os.open(path, os.O_RDONLY)
            try:
                for name, at, a, b in by_rank[rank]:
                    stored = self.stored[rank][state, self.places[name].group]
                    if isinstance(stored, str):
                        raise CheckpointError(stored)
                    if b > stored.numel:
                        raise CheckpointError(f"{path}: {name} needs elements {a}..{b} of its {state} partition, "
                                              f"which holds {stored.numel}; the checkpoint does not match its "
                                              "param_shapes")
                    _pread_into(fd, stored.offset + a * 4, out[name][at:at + b - a], path)
            finally:
                os.close(fd)
        return out
