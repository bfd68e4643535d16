"""Completion records and the staleness rules that make re-runs safe.

A published stage folder holds `_COMPLETE.json`: the hashes of its inputs (upstream stages' output
hashes, or the content hashes of raw files), the hash of the config sections it reads, a manifest of
its outputs (size and sha256 per file), package versions, times, host and Slurm job id. Downstream
stages use the output hash as their input hash, so a change anywhere upstream is seen downstream.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from core.config import RunConfigBase as RunConfig
from core.errors import DataError
from core.fs import write_atomic
from core.hashing import digest, sha256_file
from core.stage import Stage
from core.verify import check_folder, sample_hashes

RECORD = "_COMPLETE.json"
RESOLVED_CONFIG = "config.yaml"
# Files beside the outputs that describe them rather than being them.
NOT_OUTPUTS = {RECORD, RESOLVED_CONFIG}
PACKAGES = ("graine", "torch", "deepspeed", "sentencepiece", "submitit", "transformers", "numpy")


def manifest(folder: Path) -> dict[str, dict]:
    """{relative path: {size, sha256}} of every output file under `folder`."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in NOT_OUTPUTS:
            continue
        out[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


class RawHashCache:
    """Content hashes of raw input files, remembered by (path, size, mtime) so status stays cheap."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self.cache = {}

    def hash(self, file: Path) -> str:
        st = file.stat()
        key = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.cache:
            self.cache[key] = sha256_file(file)
        return self.cache[key]

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.cache))


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class Fingerprint:
    """What a stage's result depends on: its input hashes and its config hash."""

    inputs: dict[str, str]
    config_hash: str
    missing: list[str]  # upstream stages not complete yet
    shape: dict = field(default_factory=dict)  # how the work is split (task counts): not in config_hash

    @property
    def key(self) -> str:
        """Identity of an attempt: the completion markers of its tasks are only valid for the same split."""
        return digest({"inputs": self.inputs, "config": self.config_hash, "shape": self.shape})


def fingerprint(cfg: RunConfig, stage: Stage, folder_of: Callable[[str], str]) -> Fingerprint:
    """What `stage` would depend on now; `folder_of(name)` is where an upstream stage publishes."""
    run_dir = Path(cfg.run_dir)
    inputs, missing = {}, []
    for name in stage.needs:
        rec = read_record(run_dir / folder_of(name))
        if rec is None:
            missing.append(name)
        else:
            inputs[name] = rec["output_hash"]
    files = stage.external_inputs(cfg) if stage.external_inputs is not None else []
    # No files, no entry: a stage whose external inputs are optional (the tokenizer's adopted files) keeps
    # the records it wrote without them.
    if files:
        cache = RawHashCache(run_dir / ".work" / "raw-hashes.json")
        inputs["raw"] = digest({str(f): cache.hash(f) for f in files})
        if run_dir.is_dir():  # a dry run or `graine status` of a run not started writes nothing
            cache.save()
    extra = stage.identity(cfg) if stage.identity is not None else None
    return Fingerprint(inputs, cfg.section_hash(*stage.sections, extra=extra), missing, cfg.shape(*stage.sections))


def write_record(folder: Path, stage: Stage, fp: Fingerprint, started: float, extra: dict | None = None) -> dict:
    files = manifest(folder)
    record = {
        "stage": stage.name,
        "inputs": fp.inputs,
        "config_hash": fp.config_hash,
        "output_hash": digest(files),
        "files": files,
        # Hashes of sampled blocks of the large files, for the cheap check of a downstream task's start.
        "samples": {rel: h for rel in files if (h := sample_hashes(folder / rel))},
        "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "argv": sys.argv,
        **(extra or {}),
    }
    write_atomic(folder / RECORD, json.dumps(record, indent=1))
    return record


def stale_reason(record: dict, fp: Fingerprint, sections: tuple[str, ...]) -> str | None:
    """Why a complete stage no longer matches its inputs or config, or None when it is up to date."""
    if fp.missing:
        return f"upstream {', '.join(fp.missing)} is not complete"
    changed = [name for name in fp.inputs if record.get("inputs", {}).get(name) != fp.inputs[name]]
    if changed:
        what = ["raw inputs" if n == "raw" else n for n in changed]
        return f"input {', '.join(what)} changed since it ran"
    if record.get("config_hash") != fp.config_hash:
        return f"config section(s) {', '.join(sections)} changed since it ran"
    return None


def check_inputs(folders: Mapping[str, Path], full: bool = False) -> None:
    """Refuse to start on an upstream output ({stage: published folder}) that changed after it was
    published, naming the file."""
    for name, folder in folders.items():
        record = read_record(folder)
        if record is None:
            continue  # a missing upstream is the runner's to report (it is refused before submission)
        problems = check_folder(folder, record, full=full)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DataError(f"{problems[0]}{more}: the output of stage {name} changed after it was published; "
                            f"restore it, or redo it with `graine run {name} --force` (`graine verify {name}` "
                            "lists every difference)")
