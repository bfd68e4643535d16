"""Save, publish, find and load training checkpoints (DeepSpeed states plus graine's metadata).

Layout under `<run_dir>/checkpoints/`:
    global_step<N>/          DeepSpeed's files (model, ZeRO optimizer partitions), plus
        graine_state.json    step, consumed samples/tokens, sample-index fingerprint, LR state, lineage,
                             loss and throughput at save time (read back by checkpoints.layout.read_state)
        config.yaml          the resolved run config
        rng/rank<R>.pt       each rank's python/numpy/torch/cuda RNG states, written by that rank (tensors,
                             lists and numbers only: read back with weights_only=True)
        manifest.json        size and sha256 of every file above
    latest                   the tag of the newest published checkpoint (replaced atomically)

A save writes `.tmp-global_step<N>/`, fsyncs and hashes every file (shared across ranks), writes the
manifest, renames the folder, and only then moves `latest`. Every rank reports success before the
next phase starts, so a failure anywhere (disk full, read-only directory) leaves `latest` and the
previous checkpoints untouched, and raises the same CheckpointError on every rank.

Checkpoints are untrusted input (checkpoints.safe_load): before DeepSpeed unpickles one, every pickle in
it is checked against an allow-list of globals, and graine reads its own files with weights_only=True.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from checkpoints import manifest, safe_load
from checkpoints.layout import (
    CONFIG,
    LATEST,
    TMP_PREFIX,
    CheckpointState,
    read_latest,
    read_state,
    tag_of,
    write_latest,
    write_state,
)
from checkpoints.retention import prune, published_steps
from core.errors import CheckpointError
from core.fs import fsync_dir

log = logging.getLogger("graine.checkpoints")

SAVE_PHASES = ("space", "prepare", "rng", "deepspeed", "metadata", "hash", "publish")


def _no_phase_hook(phase: str, step: int) -> None:
    pass


@dataclass(frozen=True, kw_only=True)
class SaveHooks:
    """Seams of a save for tests; the default does nothing.

    before_phase(phase, step) runs on each rank before that rank's part of each phase of SAVE_PHASES;
    an exception it raises fails the phase on this rank, as a full disk would (the other ranks learn it
    when the phase's outcome is agreed).
    """

    before_phase: Callable[[str, int], None] = _no_phase_hook


# ------------------------------------------------------------------------------ collective helpers
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_errors(error: str | None) -> list[str]:
    """Every rank's error of the last phase (an empty list when all succeeded), on every rank."""
    rank, world = _world()
    errors = [error]
    if world > 1:
        errors = [None] * world
        dist.all_gather_object(errors, error)
    return [f"rank {r}: {e}" for r, e in enumerate(errors) if e]


def broadcast(obj):
    rank, world = _world()
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """This process's RNG states as tensors, lists and numbers: loadable with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]  # keys: a list, or an ndarray in older checkpoints
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and loads checkpoints of one run; every method is called on every rank."""

    def __init__(self, ckpt_dir: Path, keep_last: int = 2, keep_every: int = 0, interval: int = 0,
                 hooks: SaveHooks = SaveHooks()):
        self.dir = Path(ckpt_dir)
        self.keep_last, self.keep_every, self.interval = keep_last, keep_every, interval
        self.hooks = hooks
        self.rank, self.world = _world()
        self.last_saved: int | None = None  # the step saved or resumed from last, by this process
        self.protect: set[int] = set()  # steps retention keeps besides its own choice (a rollback's target)

    def should_save(self, step: int) -> bool:
        """Whether the step just trained is one of the periodic checkpoints (every `interval` steps)."""
        return self.interval > 0 and step % self.interval == 0

    # ------------------------------------------------------------------------------------ save
    def save(self, engine, step: int, state: dict, config_yaml: str) -> Path:
        """Write, publish and point `latest` at the checkpoint of `step`; returns its folder.

        `state` is graine_state.json's content; the save adds `world_size` and `saved_at`."""
        tag = tag_of(step)
        tmp = self.dir / f"{TMP_PREFIX}{tag}"
        self._phase("space", lambda: self._check_space(engine), step)
        self._phase("prepare", lambda: self._prepare(tmp), step)
        self._phase("rng", lambda: self._write_rng(tmp), step)
        self._phase("deepspeed", lambda: engine.save_checkpoint(str(self.dir), tag=tmp.name, save_latest=False), step)
        if self.rank == 0:
            self._phase("metadata", lambda: self._write_metadata(tmp, state, config_yaml), step)
        else:
            self._phase("metadata", lambda: None, step)
        files = broadcast(manifest.list_files(tmp) if self.rank == 0 else None)
        shares: list = []
        self._phase("hash", lambda: shares.append(manifest.hash_share(tmp, files, self.rank, self.world, fsync=True)),
                    step)
        entries = self._gather_shares(shares[0])
        final = self.dir / tag
        self._phase("publish", lambda: self._publish(tmp, final, entries) if self.rank == 0 else None, step)
        if self.rank == 0:
            prune(self.dir, self.keep_last, self.keep_every, protect={step} | self.protect)
        if self.world > 1:
            dist.barrier()
        self.last_saved = step
        log.info("saved checkpoint %s (%d files, %.1f MB)", final, len(entries),
                 sum(e["size"] for e in entries.values()) / 1e6)
        return final

    def _phase(self, name: str, fn, step: int) -> None:
        """Run one phase on this rank, then agree: a failure on any rank fails it on all of them."""
        tag = tag_of(step)
        error = None
        try:
            self.hooks.before_phase(name, step)
            fn()
        except Exception as exc:  # noqa: BLE001 (reported on every rank below)
            error = f"{type(exc).__name__}: {exc}"
        errors = gather_errors(error)
        if errors:
            if self.rank == 0:
                shutil.rmtree(self.dir / f"{TMP_PREFIX}{tag}", ignore_errors=True)
            previous = read_latest(self.dir)
            keep = f"the previous checkpoint {previous} is still valid" if previous else "no earlier checkpoint exists"
            raise CheckpointError(
                f"saving checkpoint {tag} in {self.dir} failed at its {name} phase ({'; '.join(errors)}); "
                f"{keep} and `latest` was not moved. Free disk space or fix the permissions of {self.dir}, "
                "then run the same command again to resume")

    def _check_space(self, engine) -> None:
        """Refuse to start a save that cannot fit: a rank failing inside DeepSpeed's save would leave
        the others waiting in its collectives. The size is the previous checkpoint's, or an estimate
        (fp32 weights plus Adam's master weights and two moments: 16 bytes per parameter)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        previous = read_latest(self.dir)
        entries = manifest.read_manifest(self.dir / previous)[0] if previous else None
        if entries:
            need = sum(e["size"] for e in entries.values())
        else:
            need = 16 * sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
        free = shutil.disk_usage(self.dir).free
        if free < need * 1.1:
            raise OSError(28, f"No space left on device: {free / 1e6:.1f} MB free in {self.dir}, "
                              f"a checkpoint takes about {need / 1e6:.1f} MB")

    def _prepare(self, tmp: Path) -> None:
        if self.rank == 0:
            if tmp.exists():  # left by a save that was killed: never published, safe to drop
                shutil.rmtree(tmp)
            (tmp / "rng").mkdir(parents=True)
        # No barrier here: the agreement after this phase is the synchronisation point, and a
        # barrier reached by some ranks only would hang the others.

    def _write_rng(self, tmp: Path) -> None:
        # Each rank saves its own RNG state: DeepSpeed's client_state is written by rank 0 only.
        torch.save(rng_state(), tmp / "rng" / f"rank{self.rank:05d}.pt")

    def _write_metadata(self, tmp: Path, state: dict, config_yaml: str) -> None:
        write_state(tmp, {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **state, "world_size": self.world})
        (tmp / CONFIG).write_text(config_yaml)

    def _gather_shares(self, share: dict) -> dict:
        if self.world == 1:
            return share
        shares = [None] * self.world
        dist.all_gather_object(shares, share)
        return {k: v for s in shares for k, v in s.items()}

    def _publish(self, tmp: Path, final: Path, entries: dict) -> None:
        manifest.write_manifest(tmp, entries)
        fsync_dir(tmp)
        # An older save of the same step (damaged, or before a fallback) is replaced whole.
        manifest.replace_folder(tmp, final)
        why = manifest.verify(final, full=False)
        if why:
            raise CheckpointError(f"{final} does not match its manifest after publication: {why}")
        write_latest(self.dir, final.name)

    # ------------------------------------------------------------------------------------ load
    def find_valid(self) -> Path | None:
        """The checkpoint to resume from: `latest` if it verifies, else the newest one that does.

        Every rank verifies its share of each candidate's files. Each rejected candidate is logged
        with what was wrong. None when the run has no checkpoint; an error when none is valid.
        """
        candidates = broadcast(self._candidates() if self.rank == 0 else None)
        rejected = []
        for tag, why_not_first in candidates:
            if why_not_first and self.rank == 0:
                log.warning(why_not_first)
            why = self._verify_everywhere(self.dir / tag)
            if not why:
                if rejected and self.rank == 0:
                    log.warning("resuming from %s instead of the damaged %s", tag, rejected[0][0])
                return self.dir / tag
            rejected.append((tag, why))
            if self.rank == 0:
                log.warning("checkpoint %s is not valid, skipping it: %s", self.dir / tag, why)
        if rejected:
            detail = "; ".join(f"{t}: {w}" for t, w in rejected)
            raise CheckpointError(f"no valid checkpoint in {self.dir} ({detail}); move the damaged folders "
                                  "away to start this run from scratch, or restore them from a copy")
        return None

    def _candidates(self) -> list[tuple[str, str | None]]:
        steps = sorted(published_steps(self.dir), reverse=True)
        tags = [tag_of(s) for s in steps]
        latest = read_latest(self.dir)
        if latest is None and tags:
            return [(tags[0], f"{self.dir / LATEST} is missing or unreadable; looking for the newest valid checkpoint")] + \
                [(t, None) for t in tags[1:]]
        if latest is not None and latest not in tags:
            return [(t, f"{self.dir / LATEST} names {latest}, which does not exist" if i == 0 else None)
                    for i, t in enumerate(tags)]
        ordered = [latest] + [t for t in tags if t != latest] if latest else tags
        return [(t, None) for t in ordered]

    def _verify_everywhere(self, folder: Path) -> str | None:
        entries, why = manifest.read_manifest(folder)
        error = why if entries is None else manifest.check_entries(folder, entries, self.rank, self.world)
        errors = gather_errors(error)
        return "; ".join(errors) if errors else None

    def check_safe(self, folder: Path) -> None:
        """Refuse, on every rank, a checkpoint folder holding a pickle whose loading could run code (a global
        outside safe_load's allow-list), unless the user trusts it; each rank checks its share of the files."""
        problems = safe_load.folder_problems(folder, self.rank, self.world)
        if self.world > 1:
            everyone = [None] * self.world
            dist.all_gather_object(everyone, problems)
            problems = [p for share in everyone for p in share]
        if problems:
            raise safe_load.UnsafeCheckpointError(safe_load.refusal_of(folder, problems))

    def load(self, engine, folder: Path | None = None) -> CheckpointState | None:
        """Restore engine, optimizer and this rank's RNG from the newest valid checkpoint, or from
        `folder` (a rollback's: CheckpointError when it does not verify).

        Every pickle DeepSpeed will load is checked first (check_safe), and graine's own RNG file is read with
        weights_only=True: a checkpoint whose files could run code is refused, naming the file and global.

        Returns graine's saved state (whose `raw` the training components load), or None when there is
        nothing to resume from.
        """
        if folder is not None and (why := self._verify_everywhere(folder)):
            raise CheckpointError(f"{folder} is not valid ({why}); it cannot be reloaded")
        folder = folder or self.find_valid()
        if folder is None:
            return None
        # Same world size: DeepSpeed's own load. Another one: the step's universal conversion.
        from checkpoints.universal import load_engine_state

        loaded, _ = load_engine_state(engine, folder, self.world, check=self.check_safe)
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load {folder}; see the messages above")
        state = read_state(folder)
        saved_world = state.world_size or self.world
        rng_file = folder / "rng" / f"rank{self.rank % saved_world:05d}.pt"
        if saved_world != self.world and self.rank == 0:
            log.warning("%s was saved by %d ranks and resumes on %d: RNG streams are reused, "
                        "so dropout masks will differ from an uninterrupted run", folder, saved_world, self.world)
        set_rng_state(safe_load.load(rng_file))
        self.last_saved = state.step
        return state


# ----------------------------------------------------------------------- helpers for graine status
def latest_checkpoint_info(run_dir: str | Path) -> dict | None:
    """{step, tokens, samples, loss, path, time} of the checkpoint `latest` names, or else of the newest
    one, that has its manifest and the files it lists at their sizes; None if there is none. Cheap:
    checksums are not recomputed (resuming does)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    tag = read_latest(ckpt_dir)
    folders = [ckpt_dir / tag] if tag else []
    folders += [p for _, p in sorted(published_steps(ckpt_dir).items(), reverse=True)]
    for folder in folders:
        if manifest.verify(folder, full=False) is not None:  # no manifest, or a file missing or resized
            continue
        try:
            state = read_state(folder)
        except CheckpointError:
            continue
        return {"step": state.step, "tokens": state.consumed_tokens, "samples": state.consumed_samples,
                "loss": state.loss, "path": str(folder), "time": state.saved_at}
    return None
