"""What `graine report` reads from a run directory, as plain series and tables.

Every file of a run is untrusted input here (it may be cut by a kill, edited by hand, or come from
someone else's run): a reader never raises on what it finds, except `Unavailable`, which says which file
is missing or unreadable and which stage writes it. Values that are not numbers where numbers are expected
are left out, and lines that are not JSON objects are counted, not fatal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from checkpoints.layout import read_state
from core import lineage
from core.errors import CheckpointError
from training.evaluate import RESULTS
from training.spikes import EVENTS_FILE

# training.metrics.METRICS_FILE, not imported: that module loads torch, which `graine status` must not pay for.
METRICS = "logs/metrics.jsonl"
EVENTS = f"logs/{EVENTS_FILE}"


class Unavailable(Exception):
    """A section's input is missing or unreadable: `why` names the file, `stage` writes it."""

    def __init__(self, why: str, stage: str):
        super().__init__(why)
        self.why, self.stage = why, stage


def number(value) -> float | None:
    """`value` as a finite float, or None (JSON true is not 1 step, "nan" is not a loss)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def step_of(record: dict) -> int | None:
    step = record.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def read_object(path: Path, stage: str) -> dict:
    """A JSON object file, or Unavailable naming it."""
    if not path.is_file():
        raise Unavailable(f"{path.name} does not exist in {path.parent}", stage)
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as exc:
        raise Unavailable(f"{path} cannot be read as JSON ({type(exc).__name__})", stage) from None
    if not isinstance(data, dict):
        raise Unavailable(f"{path} holds a JSON {type(data).__name__}, not an object", stage)
    return data


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The JSON objects of a jsonl file and the number of lines that were not one (a line cut by a kill)."""
    records, bad = [], 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


# ------------------------------------------------------------------------------------- training
@dataclass
class TrainingLog:
    """logs/metrics.jsonl (one record per logged step and kind), logs/events.jsonl and the checkpoints on disk."""

    train: list[dict]
    valid: list[dict]
    events: list[dict]
    checkpoints: list[tuple[int, float | None]]  # (step, tokens consumed), oldest first
    bad_lines: int = 0

    def tokens_at(self, step: int) -> float | None:
        """Tokens consumed at `step`, interpolated between logged steps (validation records carry none)."""
        points = [(r["step"], t) for r in self.train if (t := number(r.get("tokens"))) is not None]
        if not points:
            return None
        below = [p for p in points if p[0] <= step]
        above = [p for p in points if p[0] >= step]
        if not below or not above:
            return (below or above)[-1 if below else 0][1]
        (s0, t0), (s1, t1) = below[-1], above[0]
        return t0 if s1 == s0 else t0 + (t1 - t0) * (step - s0) / (s1 - s0)

    def skipped_steps(self) -> list[int]:
        """Steps whose update was dropped as non-finite: where the run's `skipped` counter went up (with
        train.log_interval > 1, the last step of the interval that held them)."""
        out, before = [], 0.0
        for r in self.train:
            count = number(r.get("skipped"))
            if count is None:
                continue
            if count > before:
                out.append(r["step"])
            before = count
        return out


def _last_per_step(records: list[dict]) -> list[dict]:
    """One record per step, the last written: a job killed before its next checkpoint replays its last steps."""
    by_step = {}
    for r in records:
        if (step := step_of(r)) is not None:
            by_step[step] = r
    return [by_step[s] for s in sorted(by_step)]


def read_training(run_dir: Path) -> TrainingLog:
    path = run_dir / METRICS
    if not path.is_file():
        raise Unavailable(f"{METRICS} does not exist in {run_dir}", "pretrain")
    records, bad = read_jsonl(path)
    train = _last_per_step([r for r in records if r.get("kind") == "train"])
    valid = _last_per_step([r for r in records if r.get("kind") == "valid"])
    events, bad_events = read_jsonl(run_dir / EVENTS)
    events = sorted({(str(e.get("kind")), step_of(e)): e for e in events if step_of(e) is not None}.values(),
                    key=step_of)
    return TrainingLog(train, valid, events, read_checkpoints(run_dir / "checkpoints"), bad + bad_events)


def read_checkpoints(folder: Path) -> list[tuple[int, float | None]]:
    out = []
    for path in folder.glob("global_step*"):
        if not path.name.removeprefix("global_step").isdigit():
            continue  # a .tmp- save in progress
        try:
            state = read_state(path)
        except CheckpointError:
            continue  # damaged: `graine checkpoint list` says why
        out.append((state.step, None if state.consumed_tokens is None else float(state.consumed_tokens)))
    return sorted(out)


def series(records: list[dict], key: str, x: str = "tokens") -> tuple[list[float], list[float]]:
    """(x, y) of the records where both are numbers."""
    xs, ys = [], []
    for r in records:
        a, b = number(r.get(x)), number(r.get(key))
        if a is not None and b is not None:
            xs.append(a)
            ys.append(b)
    return xs, ys


# ---------------------------------------------------------------------------------- evaluation
@dataclass
class EvalPoint:
    step: int
    tokens: float | None
    perplexity: float | None
    bits_per_byte: float | None


def read_eval(run_dir: Path, folder: str) -> dict[str, list[EvalPoint]]:
    """{dataset: points by step} of eval/results.jsonl, the last line of each (step, dataset) kept (a step
    re-evaluated after a re-export is appended again)."""
    path = run_dir / folder / RESULTS
    if not path.is_file():
        raise Unavailable(f"{folder}/{RESULTS} does not exist in {run_dir}", "evaluate")
    records, _ = read_jsonl(path)
    last = {}
    for r in records:
        if (step := step_of(r)) is not None and isinstance(r.get("dataset"), str):
            last[(r["dataset"], step)] = EvalPoint(step, number(r.get("consumed_tokens")), number(r.get("perplexity")),
                                                   number(r.get("bits_per_byte")))
    if not last:
        raise Unavailable(f"{folder}/{RESULTS} holds no perplexity result", "evaluate")
    out: dict[str, list[EvalPoint]] = {}
    for (dataset, _), point in sorted(last.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        out.setdefault(dataset, []).append(point)
    return out


# ------------------------------------------------------------------------------------- data mix
@dataclass
class LanguageCounts:
    docs_in: float = 0.0
    docs_out: float = 0.0
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    dropped: dict[str, float] = field(default_factory=dict)


def read_clean_stats(run_dir: Path, folder: str) -> dict[str, LanguageCounts]:
    stats = read_object(run_dir / folder / "stats.json", "clean")
    languages = stats.get("languages")
    if not isinstance(languages, dict) or not languages:
        raise Unavailable(f"{folder}/stats.json has no per-language counts", "clean")
    out = {}
    for lang, counts in languages.items():
        if not isinstance(counts, dict):
            continue
        dropped = counts.get("dropped") if isinstance(counts.get("dropped"), dict) else {}
        out[str(lang)] = LanguageCounts(
            *(number(counts.get(k)) or 0.0 for k in ("docs_in", "docs_out", "bytes_in", "bytes_out")),
            dropped={str(k): v for k, n in dropped.items() if (v := number(n))})
    return out


@dataclass
class BlendEntry:
    lang: str
    weight: float | None
    train_tokens: float
    valid_tokens: float
    train_documents: float


def read_blend(run_dir: Path, folder: str) -> dict[str, BlendEntry]:
    blend = read_object(run_dir / folder / "blend.json", "preprocess")
    datasets = blend.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise Unavailable(f"{folder}/blend.json lists no dataset", "preprocess")
    out = {}
    for name, d in datasets.items():
        if not isinstance(d, dict):
            continue
        train = d.get("train") if isinstance(d.get("train"), dict) else {}
        valid = d.get("valid") if isinstance(d.get("valid"), dict) else {}
        out[str(name)] = BlendEntry(str(d.get("lang", name)), number(d.get("weight")),
                                    number(train.get("tokens")) or 0.0, number(valid.get("tokens")) or 0.0,
                                    number(train.get("documents")) or 0.0)
    return out


def read_tokenizer_report(run_dir: Path, folder: str) -> dict[str, dict[str, float | None]]:
    """{language: {bytes_per_token, tokens_per_word}} on clean/'s held-out documents."""
    report = read_object(run_dir / folder / "report.json", "tokenizer")
    heldout = report.get("heldout")
    if not isinstance(heldout, dict) or not heldout:
        raise Unavailable(f"{folder}/report.json has no held-out measures per language", "tokenizer")
    return {str(lang): {k: number(m.get(k)) for k in ("bytes_per_token", "tokens_per_word", "documents")}
            for lang, m in heldout.items() if isinstance(m, dict)}


# --------------------------------------------------------------------------------------- lineage
@dataclass
class LineageRow:
    stage: str
    folder: str
    state: str  # complete | stale: why | not run
    finished: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    config_hash: str = ""
    output_hash: str = ""
    jobs: str = ""
    host: str = ""


def lineage_row(cfg, stage, folder_of) -> LineageRow:
    """A stage's completion record as one row: what it was made from, when, by which jobs."""
    folder = Path(cfg.run_dir) / stage.folder
    record = lineage.read_record(folder)
    if not isinstance(record, dict):
        return LineageRow(stage.name, stage.folder, "not run")
    why = lineage.stale_reason(record, lineage.fingerprint(cfg, stage, folder_of), stage.sections)
    inputs = record.get("inputs") if isinstance(record.get("inputs"), dict) else {}
    return LineageRow(stage.name, stage.folder, f"stale: {why}" if why else "complete", str(record.get("finished", "")),
                      {str(k): str(v) for k, v in inputs.items()}, str(record.get("config_hash", "")),
                      str(record.get("output_hash", "")), job_ids(record), str(record.get("host", "")))


def job_ids(record: dict) -> str:
    """The jobs that made a stage: Slurm job ids (arrays by their job id), local process ids, or inline."""
    jobs = record.get("jobs") if isinstance(record.get("jobs"), dict) else {}
    executor = str(jobs.get("executor", ""))
    ids = set()
    for ranks in (jobs.get("jobs") or {}).values() if isinstance(jobs.get("jobs"), dict) else ():
        if isinstance(ranks, dict):
            ids.update(str(j).split("_")[0] for j in ranks.values())
    if record.get("slurm_job_id"):  # the job that published it
        ids.add(str(record["slurm_job_id"]))
    ids.discard("inline")
    listed = ", ".join(sorted(ids, key=lambda j: (len(j), j)))
    if executor == "slurm" or (record.get("slurm_job_id") and listed):
        return f"Slurm {listed}"
    if executor == "local":
        return f"local pids {listed}" if listed else "local"
    return executor or "?"
