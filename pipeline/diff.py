"""`graine diff RUN_A RUN_B`: compare two run directories stage by stage and say where they diverge.

For each stage (in pipeline order) published in either run, from its completion record and the resolved
config beside it: the config keys of the sections it reads that differ, its input hashes, its output hash
and, when the outputs differ, the first differing file and the first differing document (a line of a
clean/ jsonl file, a document of a Megatron dataset under shards/); for `pretrain`, the first step whose
training loss differs. The runs diverge at the first stage whose outputs differ, and the report says why:
its config, its inputs (raw files), or neither (then the software versions are compared: same inputs,
same config and other outputs is non-determinism or another version).

Exit status: 0 when every stage published in either run has the same outputs in both, 1 when they
diverge, 2 when a path is not a run directory.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core import lineage
from core.errors import ConfigError, StageError
from pipeline import registry

UNSET = "(unset)"
MAX_LISTED = 5
JSONL = (".jsonl", ".jsonl.zst", ".jsonl.gz")


@dataclass
class StageDiff:
    name: str
    lines: list[str] = field(default_factory=list)
    state: str = "same"  # same | different | missing (in one run) | absent (in both)
    config: list[str] = field(default_factory=list)  # dotted keys that differ
    cause: str = ""  # why the outputs differ, when they do


@dataclass
class Report:
    run_a: Path
    run_b: Path
    stages: list[StageDiff]

    @property
    def diverged_at(self) -> StageDiff | None:
        return next((s for s in self.stages if s.state in ("different", "missing")), None)

    def text(self) -> str:
        out = [f"graine diff {self.run_a} {self.run_b}"]
        for s in self.stages:
            out += s.lines
        first = self.diverged_at
        if first is None:
            present = [s.name for s in self.stages if s.state == "same"]
            out.append(f"=> no divergence: {', '.join(present) or 'no stage'} published with identical outputs"
                       " in both runs")
        else:
            out.append(f"=> the runs diverge at {first.name}: {first.cause}")
        return "\n".join(out)


# ------------------------------------------------------------------------------------------ helpers
def short(h: str | None) -> str:
    return (h or "none")[:12]


def flatten(value, prefix: str = "") -> dict[str, object]:
    """{dotted key: leaf value}; empty dictionaries have no leaves (an unset map and {} are the same)."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def config_changes(a: dict, b: dict, sections: tuple[str, ...]) -> list[tuple[str, object, object]]:
    """(dotted key, value in A, value in B) of every key of `sections` that differs."""
    fa = flatten({s: a.get(s) for s in sections})
    fb = flatten({s: b.get(s) for s in sections})
    return [(k, fa.get(k, UNSET), fb.get(k, UNSET)) for k in sorted(set(fa) | set(fb)) if fa.get(k, UNSET) != fb.get(k, UNSET)]


def show(value: object) -> str:
    return value if value == UNSET else json.dumps(value, ensure_ascii=False)


def read_config(folder: Path) -> dict:
    try:
        return yaml.safe_load((folder / lineage.RESOLVED_CONFIG).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def open_lines(path: Path) -> io.BufferedIOBase:
    if path.name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _doc_name(line: bytes | None) -> str:
    if line is None:
        return "(none: the file ends)"
    try:
        record = json.loads(line)
        return f"id {record.get('id')!r}" if isinstance(record, dict) and "id" in record else "a record without id"
    except ValueError:
        return "a line that is not JSON"


def first_jsonl_difference(a: Path, b: Path) -> str:
    """Where two jsonl files first differ: line number and the document ids there."""
    with open_lines(a) as fa, open_lines(b) as fb:
        line = 0
        while True:
            la, lb = fa.readline() or None, fb.readline() or None
            line += 1
            if la is None and lb is None:
                return "same documents (the bytes differ only in compression)"
            if la != lb:
                same_doc = la is not None and lb is not None and _doc_name(la) == _doc_name(lb)
                what = f"{_doc_name(la)}, its content differs" if same_doc else f"{_doc_name(la)} vs {_doc_name(lb)}"
                return f"document {line} (line {line}): {what}"


def first_dataset_difference(a: Path, b: Path) -> str:
    """Where two Megatron datasets (prefixes, without .bin/.idx) first differ, document by document."""
    from data_prep.indexed_dataset import IndexedDataset

    try:
        da, db = IndexedDataset(a), IndexedDataset(b)
    except Exception as exc:  # a missing or broken side is itself the answer
        return f"cannot be compared ({exc})"
    for i in range(min(len(da), len(db))):
        ta, tb = da[i], db[i]
        if len(ta) != len(tb) or (ta != tb).any():
            n = min(len(ta), len(tb))
            unequal = (ta[:n] != tb[:n]).nonzero()[0]
            at = int(unequal[0]) if len(unequal) else n
            return (f"document {i} of {len(da)} vs {len(db)}: {len(ta)} vs {len(tb)} tokens, first different at "
                    f"token {at} ({_token(ta, at)} vs {_token(tb, at)})")
    if len(da) != len(db):
        return f"the first {min(len(da), len(db))} documents are the same; {len(da)} vs {len(db)} documents"
    return "same documents and tokens"


def _token(tokens, at: int) -> str:
    return str(int(tokens[at])) if at < len(tokens) else "end of document"


def train_losses(run_dir: Path) -> dict[int, float]:
    """{step: training loss} of logs/metrics.jsonl; a step logged twice (redone after a resume) keeps its last value."""
    out: dict[int, float] = {}
    try:
        lines = (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # cut by a kill
        if record.get("kind") == "train" and "loss" in record:
            out[int(record["step"])] = record["loss"]
    return out


def first_loss_difference(a: Path, b: Path) -> str:
    la, lb = train_losses(a), train_losses(b)
    if not la and not lb:
        return "no training losses logged in either run"
    for step in sorted(set(la) | set(lb)):
        if la.get(step) != lb.get(step):
            if step not in la or step not in lb:
                return f"step {step} is logged in run {'B' if step not in la else 'A'} only"
            return f"first step whose loss differs: {step} ({la[step]!r} vs {lb[step]!r})"
    return f"same training losses at all {len(la)} logged steps (bit for bit)"


# ------------------------------------------------------------------------------------------- stages
def _differing_files(fa: dict, fb: dict) -> list[str]:
    return [p for p in sorted(set(fa) | set(fb)) if (fa.get(p) or {}).get("sha256") != (fb.get(p) or {}).get("sha256")]


def _document_detail(name: str, fa: Path, fb: Path, differing: list[str]) -> str:
    """The first differing document of the first differing data file of a stage, or ""."""
    for rel in differing:
        if not ((fa / rel).is_file() and (fb / rel).is_file()):
            continue
        if rel.endswith(JSONL) and "/" not in rel:  # clean's parts (excluded/ comes later in the listing)
            return f"first differing document in {rel}: {first_jsonl_difference(fa / rel, fb / rel)}"
        if rel.endswith((".bin", ".idx")):
            prefix = rel.rsplit(".", 1)[0]
            return f"first differing document of dataset {prefix}: {first_dataset_difference(fa / prefix, fb / prefix)}"
    for rel in differing:  # excluded/, sample files...
        if rel.endswith(JSONL) and (fa / rel).is_file() and (fb / rel).is_file():
            return f"first differing record in {rel}: {first_jsonl_difference(fa / rel, fb / rel)}"
    return ""


def compare_stage(name: str, a: Path, b: Path, diverged: list[str]) -> StageDiff:
    try:
        stage = registry.get(name)
    except StageError:
        return StageDiff(name, state="absent")
    folder = stage.folder
    ra, rb = lineage.read_record(a / folder), lineage.read_record(b / folder)
    d = StageDiff(name)
    if ra is None and rb is None:
        d.state = "absent"
        return d
    if ra is None or rb is None:
        d.state = "missing"
        d.cause = f"{name} is published in run {'B' if ra is None else 'A'} only"
        d.lines = [f"{name}: published in run {'B' if ra is None else 'A'} only"]
        return d
    same = ra.get("output_hash") == rb.get("output_hash")
    d.state = "same" if same else "different"
    d.lines.append(f"{name}: {'same outputs' if same else 'DIFFERENT outputs'} ({short(ra.get('output_hash'))}"
                   + ("" if same else f" vs {short(rb.get('output_hash'))}") + ")")
    changes = config_changes(read_config(a / folder), read_config(b / folder), stage.sections)
    d.config = [k for k, _, _ in changes]
    for key, va, vb in changes:
        note = "  (a task count: does not change outputs)" if key.endswith("num_tasks") else ""
        d.lines.append(f"  config {key}: {show(va)} -> {show(vb)}{note}")
    if not changes:
        d.lines.append(f"  config: same ({', '.join(stage.sections)})")
    ia, ib = ra.get("inputs", {}), rb.get("inputs", {})
    changed_inputs = [k for k in sorted(set(ia) | set(ib)) if ia.get(k) != ib.get(k)]
    for k in sorted(set(ia) | set(ib)):
        label = k if k != "raw" else "raw files" if name == "clean" else "external files"
        if ia.get(k) == ib.get(k):
            d.lines.append(f"  input {label}: same ({short(ia.get(k))})")
        else:
            d.lines.append(f"  input {label}: {short(ia.get(k))} vs {short(ib.get(k))}")
    if not same:
        fa, fb = ra.get("files", {}), rb.get("files", {})
        differing = _differing_files(fa, fb)
        listed = ", ".join(differing[:MAX_LISTED]) + (f" and {len(differing) - MAX_LISTED} more"
                                                     if len(differing) > MAX_LISTED else "")
        d.lines.append(f"  files: {len(differing)} of {len(set(fa) | set(fb))} differ: {listed}")
        if differing:
            first = differing[0]
            where = "" if first in fa and first in fb else f" (in run {'A' if first in fa else 'B'} only)"
            d.lines.append(f"  first differing file: {first}{where}")
        detail = _document_detail(name, a / folder, b / folder, differing)
        if detail:
            d.lines.append(f"  {detail}")
        d.cause = _cause(d, changes, changed_inputs, diverged, ra, rb)
        d.lines.append(f"  why: {d.cause}")
    if name == "pretrain":  # it writes checkpoints/ and logs/ in place: the losses say where training parted
        d.lines.append(f"  losses: {first_loss_difference(a, b)}")
    return d


def _cause(d: StageDiff, changes, changed_inputs: list[str], diverged: list[str], ra: dict, rb: dict) -> str:
    outputs = [k for k, _, _ in changes if not k.endswith("num_tasks")]
    upstream = [k for k in changed_inputs if k != "raw"]
    what = f"its input {upstream[0]} differs" if len(upstream) == 1 else f"its inputs {', '.join(upstream)} differ"
    if outputs:
        return "its config differs: " + ", ".join(outputs)
    if set(upstream) & set(diverged):
        return what + " (diverged upstream)"
    if "raw" in changed_inputs:
        return f"its {'raw input' if d.name == 'clean' else 'external input'} files differ"
    if upstream:
        return what
    versions = [k for k in sorted(set(ra.get("versions", {})) | set(rb.get("versions", {})))
                if ra.get("versions", {}).get(k) != rb.get("versions", {}).get(k)]
    if versions:
        return ("same inputs and config, other outputs; the software differs: "
                + ", ".join(f"{k} {ra.get('versions', {}).get(k)} vs {rb.get('versions', {}).get(k)}" for k in versions))
    return ("same inputs, same config and same software, other outputs: the stage is not deterministic here "
            "(e.g. GPU kernels), or its files were changed after publication")


def diff_runs(run_a: Path, run_b: Path) -> Report:
    run_a, run_b = Path(run_a), Path(run_b)
    for run in (run_a, run_b):
        if not run.is_dir():
            raise ConfigError(f"{run} is not a directory; give two run directories (run_dir of each run)")
    found = [s for s in registry.ORDER if lineage.read_record(run_a / _folder(s)) or lineage.read_record(run_b / _folder(s))]
    if not found:
        raise ConfigError(f"neither {run_a} nor {run_b} holds a published stage (no */{lineage.RECORD}); "
                          "give two run directories")
    out, diverged = [], []
    for name in registry.ORDER:
        d = compare_stage(name, run_a, run_b, diverged)
        if d.state in ("different", "missing"):
            diverged.append(name)
        if d.state != "absent":
            out.append(d)
    return Report(run_a, run_b, out)


def _folder(name: str) -> str:
    try:
        return registry.folder_of(name)
    except StageError:
        return name
