"""A DeepSpeed ZeRO 1-3 checkpoint's fp32 master weights and Adam moments, a few parameters at a time.

DeepSpeed's own readers (zero_to_fp32, ds_to_universal) load every rank's optimizer file whole: 12 bytes
per parameter in memory at once for a checkpoint of one rank, which at 176B parameters is 2 TB. Here
the files are memory-mapped (`torch.load(mmap=True)`) for one batch of parameters (one read batch of
the export or the dump), only those parameters' bytes are copied out, straight into the parameters'
full tensors, and each file is mapped afresh every REMAP_BYTES copied: memory holds one batch plus at
most REMAP_BYTES of mapped pages.

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
        saved = safe_load.load(path, mmap=True).get("param_shapes") or []
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


# A file is mapped afresh after this many bytes are copied out of it: the pages already read are counted
# in the process's resident memory as long as the mapping lives (re-mapping costs a few ms).
REMAP_BYTES = 64 << 20


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
        first = self._open(0)
        self.stage = int(first["zero_stage"])
        groups = parameter_groups(self.folder)
        self.places: dict[str, _Place] = {}
        for g, shapes in enumerate(groups):
            offset = 0
            for name, shape in shapes.items():
                numel = math.prod(shape)
                self.places[name] = _Place(g, shape, numel, offset)
                offset += numel if self.stage < 3 else math.ceil(numel / self.world)
        self.partition = [len(self._flat(first, "fp32", g)) for g in range(len(groups))]
        del first

    @property
    def names(self) -> list[str]:
        return list(self.places)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.places[name].shape

    def _open(self, rank: int) -> dict:
        return safe_load.load(self.files[rank], mmap=True)["optimizer_state_dict"]

    def _flat(self, osd: dict, state: str, group: int) -> torch.Tensor:
        if state == "fp32":
            flats = osd.get("single_partition_of_fp32_groups") or osd.get("fp32_flat_groups")
            if flats is None:
                raise CheckpointError(f"{self.folder}: no fp32 partitions in the optimizer files "
                                      "(neither single_partition_of_fp32_groups nor fp32_flat_groups)")
            # Saved as Parameters (requires_grad): detached, or the copy made from a slice would hold the
            # autograd graph back to the whole memory-mapped partition, and so keep every page it read.
            return flats[group].detach()
        base = osd.get("base_optimizer_state", osd.get("optimizer_state_dict"))
        per_group = base["state"] if isinstance(base, dict) and "state" in base else base
        try:
            return per_group[group][state].detach()
        except (KeyError, IndexError, TypeError):
            raise CheckpointError(f"{self.folder}: optimizer group {group} has no {state} (was the optimizer "
                                  "stepped before the save?)") from None

    def _pieces(self, place: _Place) -> list[tuple[int, int, int]]:
        """(rank, start, stop) slices of rank files whose concatenation is the parameter (then cut to numel)."""
        if self.stage == 3:
            part = math.ceil(place.numel / self.world)
            return [(r, place.offset, place.offset + part) for r in range(self.world)]
        p = self.partition[place.group]
        lo, hi = place.offset, place.offset + place.numel
        return [(r, max(lo - r * p, 0), min(hi - r * p, p)) for r in range(lo // p, (hi - 1) // p + 1)]

    def read(self, names: list[str], state: str = "fp32") -> dict[str, torch.Tensor]:
        if state not in STATES:
            raise ValueError(f"state {state!r}; valid: {STATES}")
        flat_out = {n: torch.empty(self.places[n].numel, dtype=torch.float32) for n in names}
        by_rank: dict[int, list[tuple[str, int, int, int]]] = {}  # rank: (name, offset in it, start, stop)
        for name in names:
            place, filled = self.places[name], 0
            for r, a, b in self._pieces(place):
                take = min(b - a, place.numel - filled)  # ZeRO-3 pads the last rank's partition
                if take > 0:
                    by_rank.setdefault(r, []).append((name, filled, a, a + take))
                    filled += take
            if filled < place.numel:
                raise CheckpointError(f"{self.folder}: {name} needs {place.numel} values, its partitions hold "
                                      f"{filled}; the checkpoint does not match its param_shapes")
        chunk = max(REMAP_BYTES // 4, 1)
        for rank in sorted(by_rank):
            osd, mapped = self._open(rank), 0  # mapped, not read: only the slices below are
            for name, at, a, b in by_rank[rank]:
                while a < b:
                    if mapped >= REMAP_BYTES:  # the pages read so far stay resident while mapped: map afresh
                        del osd
                        osd, mapped = self._open(rank), 0
                    n = min(b - a, chunk)
                    src = self._flat(osd, state, self.places[name].group)[a:a + n]
                    if src.numel() < n:
                        raise CheckpointError(f"{self.files[rank]} ends before {name}'s values (elements {a}.."
                                              f"{a + n} of its partition); the file is truncated")
                    flat_out[name][at:at + n].copy_(src)
                    del src
                    a, at, mapped = a + n, at + n, mapped + n * 4
            del osd  # drops the mapping before the next file
        return {n: flat_out.pop(n).reshape(self.places[n].shape) for n in names}
