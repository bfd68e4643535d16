"""DeepSpeed universal checkpoints: resume a run on a different number of ranks.

ZeRO saves each rank's slice of the flat optimizer partitions, so a checkpoint of W ranks can only be
loaded by W ranks. `graine checkpoint universal STEP` runs DeepSpeed's `ds_to_universal` on
`checkpoints/global_step<N>/` and publishes `checkpoints/global_step<N>_universal/`: one folder per
parameter (`zero/<name>/fp32.pt`, `exp_avg.pt`, `exp_avg_sq.pt`, `step.pt`), independent of the layout.
Like a checkpoint it is written as `.tmp-global_step<N>_universal/`, gets a manifest, and only then is
renamed; `source.json` names the checkpoint (and the sha256 of its manifest) it was made from.

Resuming: the checkpointer still resumes from `global_step<N>/` (step, data position, RNG states) and
lets `load_engine_state()` call DeepSpeed: on the checkpoint itself when the world size is unchanged,
else on its universal conversion, with DeepSpeed's `checkpoint.load_universal` switched on for that
load (and the optimizer groups' hyper-parameters kept, see there). Data order is unaffected: batches are cut from the global sample index at
`consumed_samples`, whatever the number of ranks (training.data_loader).

ZeRO-0 checkpoints cannot be converted: they have no optimizer-partition files (docs/DEEPSPEED_CPU.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from checkpoints import manifest, safe_load
from checkpoints.layout import CONFIG, STATE, TMP_PREFIX, read_state
from core.errors import CheckpointError
from core.fs import write_atomic

log = logging.getLogger("graine.checkpoints")

SUFFIX = "_universal"
SOURCE = "source.json"
LATEST_UNIVERSAL = "latest_universal"  # DeepSpeed's pointer, read only when no tag is given


def universal_of(folder: Path) -> Path:
    return folder.with_name(folder.name + SUFFIX)


def optimizer_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*_optim_states.pt"))


def manifest_sha256(folder: Path) -> str:
    return hashlib.sha256((folder / manifest.MANIFEST).read_bytes()).hexdigest()


def saved_world_size(folder: Path) -> int | None:
    """The number of ranks that saved the checkpoint `folder` (None if it does not say)."""
    return read_state(folder).world_size


def check_universal(universal: Path, source: Path, full: bool = False) -> str | None:
    """Why `universal` is not a usable conversion of `source`, or None."""
    if not universal.is_dir():
        return f"{universal.name} does not exist"
    why = manifest.verify(universal, full=full)
    if why:
        return f"{universal.name} is not valid ({why})"
    try:
        origin = json.loads((universal / SOURCE).read_text())
    except (OSError, ValueError) as exc:
        return f"{universal / SOURCE} is unreadable ({exc})"
    if origin.get("manifest_sha256") != manifest_sha256(source):
        return f"{universal.name} was made from an earlier save of {source.name} (its manifest differs)"
    return None


# ------------------------------------------------------------------------------------- conversion
def convert(source: Path, workers: int = 0, force: bool = False) -> Path:
    """Convert the (verified) checkpoint folder `source`; returns the published universal folder.

    An up-to-date conversion is kept unless `force`. Single process; run it where the checkpoint is.
    """
    source = Path(source)
    final = universal_of(source)
    if not optimizer_files(source):
        raise CheckpointError(f"{source} has no ZeRO optimizer partitions (*_optim_states.pt): it was saved with "
                              "train.zero_stage=0, which DeepSpeed cannot convert to a universal checkpoint. Resume "
                              "it on the same number of ranks, or train with train.zero_stage>=1")
    if not force and check_universal(final, source) is None:
        log.info("%s is up to date (made from this save of %s)", final, source.name)
        return final
    tmp = source.parent / f"{TMP_PREFIX}{final.name}"
    if tmp.exists():  # left by a conversion that was killed: never published
        shutil.rmtree(tmp)
    try:
        run_ds_to_universal(source, tmp, workers)
        for name in (STATE, CONFIG):  # so the folder describes itself, even if its source is pruned
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        origin = {"source": source.name, "manifest_sha256": manifest_sha256(source),
                  "world_size": saved_world_size(source), "optimizer_files": len(optimizer_files(source))}
        (tmp / SOURCE).write_text(json.dumps(origin, indent=1, sort_keys=True))
        entries = manifest.seal(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.replace_folder(tmp, final)
    _write_pointer(final.parent / LATEST_UNIVERSAL, final.name)
    size = sum(e["size"] for e in entries.values())
    log.info("published %s (%d files, %.1f MB)", final, len(entries), size / 1e6)
    return final


def run_ds_to_universal(source: Path, out: Path, workers: int) -> None:
    """DeepSpeed's converter in a child process (it starts worker pools and prints its progress). It
    unpickles `source` with weights_only=False: it is checked first (safe_load), whoever calls this."""
    safe_load.require_safe(source)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source),
           "--output_folder", str(out), "--num_extract_workers", str(workers),
           "--num_merge_workers", str(max(1, workers // 2)),
           # graine's checkpoints carry no Megatron-style UNIVERSAL_CHECKPOINT_INFO: let DeepSpeed add
           # the default one (no tensor or pipeline parallelism), without which it refuses.
           "--inject_missing_state"]
    env = dict(os.environ)
    import torch

    if "DS_ACCELERATOR" not in env and not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    log.info("converting %s to a universal checkpoint: %s", source, " ".join(cmd[1:]))
    # ds_to_universal points `latest_universal` beside its output at that output: keep the old one.
    pointer = out.parent / LATEST_UNIVERSAL
    before = pointer.read_text() if pointer.is_file() else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if before is None:
        pointer.unlink(missing_ok=True)
    else:
        pointer.write_text(before)
    if proc.returncode != 0 or not (out / "zero").is_dir():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise CheckpointError(f"DeepSpeed's ds_to_universal failed on {source} (exit {proc.returncode}):\n  "
                              + "\n  ".join(tail))


def _write_pointer(path: Path, tag: str) -> None:
    # ds_to_universal wrote it naming the temporary folder; point it at the published one.
    write_atomic(path, tag + "\n")


# ----------------------------------------------------------------------------------- resume hook
def load_engine_state(engine, folder: Path, world_size: int, load=None, check=None):
    """`engine.load_checkpoint` of the checkpoint `folder`, through its universal conversion when it
    was saved by another number of ranks (see `load_tag`). Returns what load_checkpoint returns.

    DeepSpeed unpickles with weights_only=False: `check` (default safe_load.require_safe, one process;
    the checkpointer passes its collective one) first refuses the checkpoint, and the conversion loaded
    instead of it, when one of their pickles names a global outside safe_load's allow-list.

    Two repairs after DeepSpeed 0.19's ZeRO-3 universal load, without which the run drifts from the
    uninterrupted one (relative loss error ~4e-4 after 8 steps, where ZeRO 1/2 continue bit for bit):
    - it copies the first optimizer group's hyper-parameters onto every group, which gives the biases
      and LayerNorms (group 1) weight decay: the groups' own settings, which come from the config and
      are not training state, are put back;
    - it gives every group one shared `step` tensor, which torch's AdamW increments in place once per
      group, so Adam's bias correction runs ahead: each group gets its own copy.
    """
    import torch

    load = load or engine.load_checkpoint
    folder = Path(folder)
    tag = load_tag(folder, engine, world_size)
    check = check or safe_load.require_safe
    for loaded in dict.fromkeys([folder, folder.parent / tag]):
        check(loaded)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in getattr(inner, "param_groups", [])]
    result = load(str(folder.parent), tag=tag, load_lr_scheduler_states=False)
    if tag != folder.name:
        for group, saved in zip(inner.param_groups, groups):
            group.update(saved)
        for state in getattr(inner, "state", {}).values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
    return result


def load_tag(folder: Path, engine, world_size: int) -> str:
    """The tag `engine.load_checkpoint` should load for the checkpoint `folder` on `world_size` ranks.

    The checkpoint's own tag when it was saved by as many ranks; otherwise its universal conversion, and
    DeepSpeed is told to read it as one. Called on every rank with the same arguments, so all agree.
    """
    folder = Path(folder)
    saved = saved_world_size(folder)
    if saved is None or saved == world_size:
        return folder.name
    universal = universal_of(folder)
    why = check_universal(universal, folder)
    if why:
        step = folder.name.removeprefix("global_step")
        raise CheckpointError(
            f"{folder} was saved by {saved} ranks and this job has {world_size}; ZeRO optimizer partitions "
            f"cannot be loaded on another number of ranks without a universal checkpoint ({why}). Run "
            f"`graine checkpoint universal {step} -c CONFIG`, then start the job again (or run it on {saved} ranks)")
    # DeepSpeed reads this flag only while loading (engine.load_checkpoint and the ZeRO optimizer's
    # load_state_dict); it is the config key `checkpoint.load_universal`.
    engine._config.load_universal_checkpoint = True
    log.info("%s was saved by %d ranks; loading its universal conversion %s on %d ranks", folder.name, saved,
             universal.name, world_size)
    return universal.name
