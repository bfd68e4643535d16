"""The names of a checkpoint folder's files and its metadata readers (see checkpoints/checkpointer.py
for the whole layout): the one place that knows how `latest` and `graine_state.json` are spelled."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import CheckpointError
from core.fs import write_atomic

LATEST = "latest"
STATE = "graine_state.json"
CONFIG = "config.yaml"
TMP_PREFIX = ".tmp-"


def tag_of(step: int) -> str:
    return f"global_step{step}"


def read_state(folder: Path) -> dict:
    """The checkpoint's graine_state.json; CheckpointError naming the file if it is not a JSON object."""
    path = Path(folder) / STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as graine's checkpoint state ({type(exc).__name__}: {exc}); "
                              "the checkpoint is damaged or not graine's: move it away to resume from an earlier one") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not graine's checkpoint state")
    return state


def read_latest(ckpt_dir: Path) -> str | None:
    try:
        tag = (Path(ckpt_dir) / LATEST).read_text().strip()
    except OSError:
        return None
    return tag or None


def write_latest(ckpt_dir: Path, tag: str) -> None:
    write_atomic(Path(ckpt_dir) / LATEST, tag + "\n")
