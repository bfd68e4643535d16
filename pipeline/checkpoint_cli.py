"""`graine checkpoint list|universal|dump` (called by pipeline.cli).

    graine checkpoint list -c CONFIG             steps, sizes, validity, release marks, tokens, latest
    graine checkpoint universal STEP -c CONFIG   checkpoints/global_step<N>_universal/ (resume on other rank counts)
    graine checkpoint dump STEP -c CONFIG        dumps/global_step<N>/ (fp32 weights and Adam moments per parameter)

STEP is a step number or `latest`. `universal` and `dump` refuse a checkpoint holding a pickle that
could run code (checkpoints.safe_load) unless `--trust-checkpoint PATH` names it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from checkpoints import manifest
from checkpoints.layout import TMP_PREFIX, read_latest, read_state
from checkpoints.retention import is_release, published_steps
from checkpoints.select import checkpoint_dir, parse_step, select_checkpoint
from checkpoints.universal import check_universal, universal_of
from core.errors import CheckpointError, ConfigError
from pipeline.config import RunConfig

DUMPS = "dumps"


def checkpoint_command(cfg: RunConfig, action: str, step: str | None, full: bool = False) -> int:
    if action == "list":
        print(format_list(cfg, full=full))
        return 0
    if step is None:
        raise ConfigError(f"`graine checkpoint {action}` needs a STEP (a step number or 'latest'); "
                          "`graine checkpoint list` shows the steps")
    source = select_checkpoint(checkpoint_dir(cfg.run_dir), parse_step(step, "STEP"))
    if action == "universal":
        from checkpoints.universal import convert

        out = convert(source)
        print(f"{out}\nresume it on any number of ranks with the same `graine run pretrain` command "
              "(train.devices_per_node / train.num_nodes changed): graine loads the universal checkpoint "
              "when the world size differs from the one that saved it")
        return 0
    if action == "dump":
        from checkpoints.dump import dump

        out = dump(source, Path(cfg.run_dir) / DUMPS, cfg.export.max_shard_gb)
        info = json.loads((out / "dump.json").read_text())
        print(f"{out}\n{len(info['parameters'])} parameters: fp32 weights, exp_avg, exp_avg_sq "
              f"(Adam step {info['optimizer']['adam_step']}); see dump.json and manifest.json")
        return 0
    raise ConfigError(f"unknown checkpoint action {action!r}; valid: list, universal, dump")


# ---------------------------------------------------------------------------------------- list
def checkpoint_rows(cfg: RunConfig, full: bool = False) -> list[dict]:
    """One row per published checkpoint, oldest first (cheap: sizes are checked; `full`: checksums too)."""
    ckpt_dir = checkpoint_dir(cfg.run_dir)
    latest = read_latest(ckpt_dir)
    rows = []
    for step, folder in sorted(published_steps(ckpt_dir).items()):
        entries, why = manifest.read_manifest(folder)
        if entries is not None:
            why = manifest.check_entries(folder, entries, full=full)
        rows.append({
            "step": step, "path": str(folder), "valid": why is None, "why": why,
            "bytes": sum(e["size"] for e in entries.values()) if entries else _du(folder),
            **_saved(folder), "latest": folder.name == latest,
            "release": is_release(step, cfg.checkpoint.keep_every),
            "universal": check_universal(universal_of(folder), folder) is None if why is None else False,
            "dump": (Path(cfg.run_dir) / DUMPS / folder.name / manifest.MANIFEST).is_file(),
            "export": (Path(cfg.run_dir) / "export" / folder.name).is_dir(),
        })
    return rows


def _saved(folder: Path) -> dict:
    """What the list shows of the checkpoint's graine_state.json (unknown when it cannot be read)."""
    try:
        state = read_state(folder)
    except CheckpointError:
        return {"tokens": None, "loss": None, "ranks": None, "saved_at": None}
    return {"tokens": state.consumed_tokens, "loss": state.loss, "ranks": state.world_size,
            "saved_at": state.saved_at}


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def format_list(cfg: RunConfig, full: bool = False) -> str:
    ckpt_dir = checkpoint_dir(cfg.run_dir)
    rows = checkpoint_rows(cfg, full=full)
    if not rows:
        return f"no checkpoints in {ckpt_dir}"
    head = f"{'step':>8}  {'size':>10}  {'tokens':>15}  {'loss':>8}  {'ranks':>5}  {'saved at':<19}  state"
    lines = [f"checkpoints of {ckpt_dir}", head]
    for r in rows:
        marks = [m for m, on in (("latest", r["latest"]), ("release", r["release"]), ("universal", r["universal"]),
                                 ("dump", r["dump"]), ("export", r["export"])) if on]
        state = "valid" if r["valid"] else f"INVALID ({r['why']})"
        tokens = f"{r['tokens']:,}" if r["tokens"] is not None else "?"
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "?"
        lines.append(f"{r['step']:>8}  {_size(r['bytes']):>10}  {tokens:>15}  {loss:>8}  {r['ranks'] or '?':>5}  "
                     f"{r['saved_at'] or '?':<19}  {state}{'  [' + ', '.join(marks) + ']' if marks else ''}")
    partial = sorted(p.name for p in ckpt_dir.glob(f"{TMP_PREFIX}*"))
    if partial:
        lines.append(f"being written or abandoned (never resumed from): {', '.join(partial)}")
    total = sum(r["bytes"] for r in rows)
    checks = ("manifest present, file sizes and sha256 checksums match" if full else
              "manifest present and file sizes match; checksums not recomputed (they are when resuming; "
              "--full recomputes them here)")
    lines.append(f"{len(rows)} checkpoint(s), {_size(total)}; checks run: {checks}; releases: every "
                 f"{cfg.checkpoint.keep_every or '-'} steps "
                 f"(checkpoint.keep_every), kept forever; listed {time.strftime('%Y-%m-%dT%H:%M:%S')}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
