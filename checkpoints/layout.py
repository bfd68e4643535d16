"""The names of a checkpoint folder's files and its metadata reader and writers (see
checkpoints/checkpointer.py for the whole layout): the one place that knows how `latest` and
`graine_state.json` are spelled, and the one reader of `graine_state.json` (`read_state`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import CheckpointError
from core.fs import write_atomic

LATEST = "latest"
STATE = "graine_state.json"
CONFIG = "config.yaml"
TMP_PREFIX = ".tmp-"

DAMAGED = "the checkpoint is damaged or not graine's: move it away to resume from an earlier one"


def tag_of(step: int) -> str:
    return f"global_step{step}"


@dataclass(frozen=True)
class CheckpointState:
    """A checkpoint's graine_state.json, checked: the fields graine's tools read, and `raw`, the whole
    JSON object, which the training components restore themselves from (their `load_state_dict`).

    Only `step` is required: other fields are None (or empty) when a checkpoint lacks them.
    """

    folder: Path
    step: int
    consumed_samples: int | None = None
    consumed_tokens: int | None = None
    fingerprint: str | None = None  # of the training sample index
    world_size: int | None = None  # ranks that saved it
    loss: float | None = None  # mean loss of the last applied step
    skipped_steps: int = 0
    saved_at: str | None = None
    lineage: dict = field(default_factory=dict)  # upstream output hashes (tokenizer, preprocess)
    raw: dict = field(default_factory=dict, repr=False)


# Each field's JSON types and what a damaged value is said not to be. bool is refused where a
# number is expected (True is an int to Python, not a step count to anyone).
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "step": ((int,), "a step number"),
    "consumed_samples": ((int,), "a sample count"),
    "consumed_tokens": ((int,), "a token count"),
    "fingerprint": ((str,), "a sample-index fingerprint"),
    "world_size": ((int,), "a number of ranks"),
    "loss": ((int, float), "a loss"),
    "skipped_steps": ((int,), "a step count"),
    "saved_at": ((str,), "a time"),
    "lineage": ((dict,), "an object of upstream hashes"),
}


def read_state(folder: Path) -> CheckpointState:
    """The checkpoint's graine_state.json; CheckpointError naming the file (and the key) when it is not
    a JSON object, lacks `step`, or holds a known field of the wrong type."""
    path = Path(folder) / STATE
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as graine's checkpoint state ({type(exc).__name__}: {exc}); "
                              f"{DAMAGED}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not graine's checkpoint state; {DAMAGED}")
    if "step" not in raw:
        raise CheckpointError(f"{path} has no `step`; {DAMAGED}")
    values = {}
    for key, (types, what) in _FIELDS.items():
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types) or (types == (int,) and value < 0):
            raise CheckpointError(f"{path}: `{key}`={value!r} is not {what}; {DAMAGED}")
        values[key] = float(value) if key == "loss" else value
    return CheckpointState(folder=Path(folder), raw=raw, **values)


def write_state(folder: Path, state: dict) -> None:
    """graine_state.json into a checkpoint folder being written (made durable by the save's hashing)."""
    (Path(folder) / STATE).write_text(json.dumps(state, indent=1, sort_keys=True))


def read_latest(ckpt_dir: Path) -> str | None:
    try:
        tag = (Path(ckpt_dir) / LATEST).read_text().strip()
    except OSError:
        return None
    return tag or None


def write_latest(ckpt_dir: Path, tag: str) -> None:
    write_atomic(Path(ckpt_dir) / LATEST, tag + "\n")
