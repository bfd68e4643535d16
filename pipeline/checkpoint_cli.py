"""`graine checkpoint list|universal|dump` (called by pipeline.cli).

    graine checkpoint list -c CONFIG             steps, sizes, validity, release marks, tokens, latest
    graine checkpoint universal STEP -c CONFIG   checkpoints/global_step<N>_universal/ (resume on other rank counts)
    graine checkpoint dump STEP -c CONFIG        dumps/global_step<N>/ (fp32 weights and Adam moments per parameter)

STEP is a step number or `latest`. `universal` and `dump` refuse a checkpoint holding a pickle that
could run code (checkpoints.safe_load) unless `--trust-checkpoint PATH` names it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from checkpoints import manifest
from checkpoints.layout import TMP_PREFIX, read_latest, read_state
from checkpoints.retention import is_release, plan_deletions, published_steps
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
    lines.append(disk_report(cfg, rows))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- disk
def bytes_per_parameter(precision: str, zero_stage: int) -> int:
    """Bytes per parameter of a DeepSpeed checkpoint, all ranks together: Adam's two fp32 moments and
    the fp32 master weights (ZeRO 1-3 keep their own fp32 partition even when training in fp32; ZeRO-0
    in fp32 steps the module's weights themselves), plus the module's weights in the training dtype in
    the model states file, except under ZeRO-3, whose module holds only partitions. Checked against
    real checkpoints in tests/pipeline/test_checkpoint_disk.py."""
    adam = 4 + 4
    master = 0 if (zero_stage == 0 and precision == "fp32") else 4
    module = 0 if zero_stage == 3 else (4 if precision == "fp32" else 2)
    return adam + master + module


def checkpoint_bytes(cfg: RunConfig, rows: list[dict]) -> tuple[int, str] | None:
    """(bytes, how it is known) of one checkpoint of this run: the newest valid one's size, else an
    estimate from the model's parameter count (None while the vocabulary is unknown)."""
    valid = [r for r in rows if r["valid"]]
    if valid:
        return valid[-1]["bytes"], f"measured on step {valid[-1]['step']}"
    params = parameter_count(cfg)
    if params is None:
        return None
    per = bytes_per_parameter(cfg.train.precision, cfg.train.zero_stage)
    return params * per, (f"estimated: {params:,} parameters x {per} bytes ({cfg.train.precision}, "
                          f"ZeRO-{cfg.train.zero_stage}: weights and Adam states)")


def parameter_count(cfg: RunConfig) -> int | None:
    """Parameters of the configured model (training.plan's count, which is BloomModel's); None before the
    tokenizer stage when model.vocab_size=0 (the tokenizer's)."""
    from training.plan import ModelShape

    vocab = cfg.model.vocab_size
    if not vocab:
        from data_prep.tokenizer import tokenizer_info

        try:
            vocab = tokenizer_info(Path(cfg.run_dir) / "tokenizer").vocab_size
        except Exception:  # no tokenizer yet, or one that cannot be read: nothing to estimate from
            return None
    m = cfg.model
    return ModelShape(m.num_layers, m.hidden_size, m.num_heads, m.padded_vocab_size(vocab)).parameters()


def future_saves_peak(steps: list[int], size: int, cfg: RunConfig) -> tuple[int, int]:
    """(count, peak extra bytes) of the next checkpoint.keep_last saves after `steps`: each save adds a
    checkpoint, then retention (checkpoints.retention.plan_deletions, as the trainer calls it) prunes."""
    ck = cfg.checkpoint
    kept, peak, extra = sorted(steps), 0, 0
    last = kept[-1] if kept else 0
    for i in range(1, ck.keep_last + 1):
        kept.append(last + i * ck.interval)
        extra += size
        peak = max(peak, extra)
        gone = plan_deletions(kept, set(kept), ck.keep_last, ck.keep_every)
        kept = [s for s in kept if s not in gone]
        extra -= size * len(gone)
    return ck.keep_last, peak


def disk_report(cfg: RunConfig, rows: list[dict] | None = None) -> str:
    """One line: a checkpoint's size, the free space of the run directory's filesystem, and whether the
    next checkpoint.keep_last saves fit (a WARNING line when they do not)."""
    rows = checkpoint_rows(cfg) if rows is None else rows
    where = Path(cfg.run_dir)
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    free = f"{_size(usage.free)} free of {_size(usage.total)} on the filesystem of {where}"
    known = checkpoint_bytes(cfg, rows)
    if known is None:
        return f"disk: {free}; a checkpoint's size is known once the tokenizer stage has run"
    size, how = known
    count, need = future_saves_peak([r["step"] for r in rows if r["valid"]], size, cfg)
    line = f"disk: a checkpoint takes {_size(size)} ({how}); {free}"
    if need > usage.free:
        return (f"{line}\nWARNING: the next {count} saves (checkpoint.keep_last={cfg.checkpoint.keep_last}, "
                f"keep_every={cfg.checkpoint.keep_every}) need up to {_size(need)} more, and only {_size(usage.free)} "
                "is free: free space there, lower checkpoint.keep_last, or move run_dir to a larger filesystem "
                "(on Jean Zay: $SCRATCH)")
    return f"{line}; the next {count} saves need up to {_size(need)} more: they fit"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
