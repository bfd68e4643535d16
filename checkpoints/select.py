"""Which checkpoint a tool works on (export, universal, dump): a step number or "latest", checked
against its manifest before anything reads it."""

from __future__ import annotations

import logging
from pathlib import Path

from checkpoints import manifest
from checkpoints.layout import read_latest, tag_of
from checkpoints.retention import published_steps
from core.errors import CheckpointError, ConfigError

log = logging.getLogger("graine.checkpoints")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def parse_step(value: str | int | None, key: str) -> int | None:
    """The step number, or None for "latest"; `key` names the setting in the error."""
    if value is None or str(value).strip() in ("", "latest"):
        return None
    try:
        step = int(str(value).strip().removeprefix("global_step"))
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not a step; give a step number (e.g. 1000) or 'latest'") from None
    if step < 0:
        raise ConfigError(f"{key}={value!r} is negative; give a step number or 'latest'")
    return step


def _available(ckpt_dir: Path) -> str:
    steps = sorted(published_steps(ckpt_dir))
    return ", ".join(map(str, steps)) if steps else "none"


def latest_folder(ckpt_dir: Path) -> Path | None:
    """The folder `latest` names, else the newest published one; None when there is none (no checks)."""
    tag = read_latest(ckpt_dir)
    if tag and (ckpt_dir / tag).is_dir():
        return ckpt_dir / tag
    steps = published_steps(ckpt_dir)
    return steps[max(steps)] if steps else None


def select_checkpoint(ckpt_dir: Path, step: int | None, key: str = "STEP", full: bool = True) -> Path:
    """The checkpoint folder of `step` (None: latest, falling back to the newest valid one), verified.

    `full` recomputes every checksum (what resuming does); otherwise presence and sizes are checked.
    """
    ckpt_dir = Path(ckpt_dir)
    if step is not None:
        folder = ckpt_dir / tag_of(step)
        if not folder.is_dir():
            raise CheckpointError(f"{key}={step}: {folder} does not exist; checkpoints of {ckpt_dir}: "
                                  f"{_available(ckpt_dir)} (`graine checkpoint list` shows them)")
        why = manifest.verify(folder, full=full)
        if why:
            raise CheckpointError(f"{key}={step}: {folder} is not a valid checkpoint ({why}); pick another step "
                                  f"of {_available(ckpt_dir)}")
        return folder
    tag = read_latest(ckpt_dir)
    candidates = ([tag] if tag else []) + [tag_of(s) for s in sorted(published_steps(ckpt_dir), reverse=True)]
    rejected = []
    for name in dict.fromkeys(candidates):
        why = manifest.verify(ckpt_dir / name, full=full) if (ckpt_dir / name).is_dir() else "it does not exist"
        if why is None:
            if rejected:
                log.warning("using %s: %s", name, "; ".join(f"{t} is not valid ({w})" for t, w in rejected))
            return ckpt_dir / name
        rejected.append((name, why))
    detail = "; ".join(f"{t}: {w}" for t, w in rejected) or "there is none"
    raise CheckpointError(f"{key}=latest: no valid checkpoint in {ckpt_dir} ({detail}); run `graine run pretrain` "
                          "first")
