"""Stage `evaluate`: per-language perplexity and bits per byte of exported checkpoints, and optional
lm-evaluation-harness tasks, run offline.

    eval/global_step<N>/perplexity.json   per dataset of shards/valid/: tokens scored, mean NLL (nats),
                                          perplexity, bits per byte; the export's weights sha256
    eval/global_step<N>/lm_eval.json      lm-eval's results per task (only when evaluate.tasks is set)
    eval/results.jsonl                    one line per (step, dataset), in the order they were evaluated

Each export under `export/` (every `global_step*` folder, or the one `evaluate.step` names) is scored on
the held-out documents that preprocess wrote to `shards/valid/` (the same token ids the model was trained
on; `blend.json` gives their UTF-8 bytes). Bits per byte = total NLL in bits / bytes of the text scored,
so languages with different tokenisation compare. The text is cut into non-overlapping windows of
`evaluate.seq_len` tokens; each window's first token is context only.

Idempotent and resumable: a step whose published result names the same export weights (sha256) is carried
over, not recomputed; a re-exported step (new weights) is evaluated again. Unchanged inputs leave the
whole stage complete, which the orchestration skips.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import param
from core.errors import ConfigError, DataError
from core.fs import write_json
from core.progress import Progress
from core.stage import Stage, Step, TaskContext
from training.hf_compat import import_transformers


@dataclass(kw_only=True)
class EvaluateConfig:
    step: str = param("all", help="export to evaluate: 'all' (every export/global_step*), 'latest' (the last "
                      "export) or a step number")
    seq_len: int = param(0, ge=0, help="tokens per scoring window; 0: train.seq_len")
    batch_size: int = param(8, ge=1, help="windows per forward pass")
    max_tokens: int = param(0, ge=0, help="tokens scored per dataset at most (0: the whole validation split)")
    tasks: list[str] = param(default_factory=list, help="lm-evaluation-harness task names, run offline on the "
                             "export (empty: perplexity only)")
    task_dir: str = param("", help="folder of local lm-eval task YAMLs (include_path), for tasks on local files")
    limit: int = param(0, ge=0, help="lm-eval documents per task at most (0: all)")

    def __post_init__(self):
        if self.step not in ("all", "latest") and not self.step.isdigit():
            raise ConfigError(f"evaluate.step={self.step!r} must be 'all', 'latest' or a step number")
        if self.task_dir and not Path(self.task_dir).is_dir():
            raise ConfigError(f"evaluate.task_dir={self.task_dir} is not a folder; point it at the folder "
                              "holding the lm-eval task YAMLs")


log = logging.getLogger("graine.evaluate")

PERPLEXITY = "perplexity.json"
LM_EVAL = "lm_eval.json"
RESULTS = "results.jsonl"


# ----------------------------------------------------------------------------------------- inputs
def exports_to_evaluate(export_dir: Path, which: str) -> list[Path]:
    """The export folders `evaluate.step` names, oldest step first."""
    folders = sorted((p for p in export_dir.glob("global_step*") if (p / "graine_export.json").is_file()),
                     key=lambda p: int(p.name.removeprefix("global_step")))
    if which == "latest":
        last = json.loads((export_dir / "last_export.json").read_text())
        folders = [export_dir.parent / last["path"]]
    elif which != "all":
        folders = [f for f in folders if f.name == f"global_step{which}"]
    if not folders:
        raise DataError(f"{export_dir} holds no export for evaluate.step={which}; run `graine run export` "
                        f"(export.step={which if which.isdigit() else 'latest'}) first")
    return folders


def valid_tokens(shards: Path, name: str, meta: dict) -> np.ndarray:
    """All token ids of a dataset's validation split, documents in order (each ends with </s>)."""
    from data_prep.indexed_dataset import read_index

    prefix = shards / meta["valid"]["path"]
    dtype, sizes, _, _ = read_index(Path(f"{prefix}.idx"))
    data = np.memmap(f"{prefix}.bin", dtype=dtype, mode="r")
    if len(data) != int(sizes.sum()):
        raise DataError(f"{prefix}.bin has {len(data)} tokens but its index {int(sizes.sum())}; re-run preprocess")
    return np.asarray(data, dtype=np.int64)


# ------------------------------------------------------------------------------------- perplexity
def score_tokens(model, tokens: np.ndarray, seq_len: int, batch_size: int, progress: Progress | None = None
                 ) -> tuple[float, int]:
    """(total NLL in nats, tokens predicted) over non-overlapping windows of `seq_len` tokens."""
    import torch

    device = next(model.parameters()).device
    windows = [tokens[i:i + seq_len] for i in range(0, len(tokens) - 1, seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    total, count = 0.0, 0
    for b in range(0, len(windows), batch_size):
        batch = windows[b:b + batch_size]
        width = max(len(w) for w in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, w in enumerate(batch):
            ids[row, :len(w)] = torch.from_numpy(w)
            mask[row, :len(w)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        keep = mask[:, 1:].bool()
        total += nll[keep].double().sum().item()
        count += int(keep.sum().item())
        if progress is not None:
            progress.update(sum(len(w) for w in batch))
    return total, count


def tokens_to_score(shards: Path, ev: EvaluateConfig) -> int:
    """Validation tokens `perplexity` reads (its progress total)."""
    blend = json.loads((shards / "blend.json").read_text())
    sizes = [int(m.get("valid", {}).get("tokens") or 0) for m in blend["datasets"].values()]
    return sum(min(n, ev.max_tokens) if ev.max_tokens else n for n in sizes)


def perplexity(model, shards: Path, ev: EvaluateConfig, seq_len: int, progress: Progress | None = None
               ) -> dict[str, dict]:
    """Per dataset of the validation split: tokens, mean NLL, perplexity and bits per byte."""
    blend = json.loads((shards / "blend.json").read_text())
    out: dict[str, dict] = {}
    for name, meta in sorted(blend["datasets"].items()):
        if not meta.get("valid", {}).get("tokens"):
            log.warning("dataset %s has no validation documents (preprocess.validation_fraction): skipped", name)
            continue
        tokens = valid_tokens(shards, name, meta)
        if ev.max_tokens:
            tokens = tokens[:ev.max_tokens]
        nll, count = score_tokens(model, tokens, seq_len, ev.batch_size, progress)
        # Bytes of the text the scored tokens stand for: the split's bytes per token (blend.json) times
        # the tokens predicted.
        bytes_per_token = meta["valid"]["text_bytes"] / meta["valid"]["tokens"]
        mean = nll / count
        out[name] = {"lang": meta["lang"], "source": meta.get("source"), "tokens": count, "nll": mean,
                     "perplexity": math.exp(mean), "bits_per_byte": nll / math.log(2) / (count * bytes_per_token)}
    return out


# ----------------------------------------------------------------------------------------- lm-eval
def run_lm_eval(folder: Path, ev: EvaluateConfig, device: str) -> dict:
    """lm-evaluation-harness on the Hugging Face release `folder`, offline; {task: {metric: value}}."""
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ConfigError(f"evaluate.tasks={ev.tasks} needs the lm-eval package ({exc}); install graine's "
                          "dependencies or set evaluate.tasks=[]") from None
    manager = TaskManager(include_path=ev.task_dir or None)
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=list(ev.tasks),
                                  task_manager=manager, device=device, batch_size=ev.batch_size,
                                  limit=ev.limit or None, log_samples=False)
    results = {}
    for task, metrics in out["results"].items():
        results[task] = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return results


# ------------------------------------------------------------------------------------------ stage
def _carried(published: Path, staging: Path, folder: Path, sha: str, tasks: list[str]) -> bool:
    """Copy the published result of this export when it names the same weights; True when nothing is left."""
    old = published / folder.name
    try:
        record = json.loads((old / PERPLEXITY).read_text())
    except (OSError, ValueError):
        return False
    if record.get("source_weights_sha256") != sha:
        return False
    if tasks:
        try:
            done = json.loads((old / LM_EVAL).read_text())
        except (OSError, ValueError):
            return False
        if done.get("tasks") != sorted(tasks):
            return False
    shutil.copytree(old, staging / folder.name)
    return True


def evaluate_step(ctx: TaskContext) -> None:
    import torch

    transformers = import_transformers()
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    seq_len = ev.seq_len or cfg.train.seq_len
    device = "cuda" if torch.cuda.is_available() else "cpu"
    published = ctx.run_dir / STAGE.folder
    lines: list[str] = []
    if (published / RESULTS).is_file():
        lines = (published / RESULTS).read_text().splitlines()
    for folder in exports_to_evaluate(ctx.input_dir("export"), ev.step):
        record = json.loads((folder / "graine_export.json").read_text())
        sha = record["source_weights_sha256"]
        if _carried(published, ctx.out_dir, folder, sha, ev.tasks):
            ctx.log.info("%s: evaluated already (same weights), kept", folder.name)
            continue
        ctx.log.info("evaluating %s (step %s) on %s", folder, record["step"], device)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                                  dtype=torch.float32).to(device).eval()
        shards = ctx.input_dir("preprocess")
        with ctx.progress(total=tokens_to_score(shards, ev), unit="tokens", what=f"evaluate {folder.name}") as progress:
            scores = perplexity(model, shards, ev, seq_len, progress)
        out = ctx.out_dir / folder.name
        out.mkdir(parents=True)
        base = {"step": record["step"], "consumed_tokens": record.get("consumed_tokens"),
                "source_weights_sha256": sha}
        if ev.tasks:
            del model
            write_json(out / LM_EVAL, {**base, "tasks": sorted(ev.tasks),
                                       "results": run_lm_eval(folder, ev, device)}, indent=1)
        write_json(out / PERPLEXITY, {**base, "seq_len": seq_len, "datasets": scores}, indent=1)
        lines = [ln for ln in lines if json.loads(ln).get("step") != record["step"]]
        lines += [json.dumps({**base, "dataset": name, **s}, sort_keys=True) for name, s in scores.items()]
    (ctx.out_dir / RESULTS).write_text("".join(ln + "\n" for ln in lines))


def summary(out_dir: Path) -> str:
    parts = []
    for path in sorted(out_dir.glob(f"global_step*/{PERPLEXITY}"), key=lambda p: int(p.parent.name[11:])):
        r = json.loads(path.read_text())
        bpb = ", ".join(f"{n} {d['bits_per_byte']:.3f}" for n, d in r["datasets"].items())
        parts.append(f"step {r['step']}: bits/byte {bpb}")
    return "; ".join(parts) or "no evaluation"


STAGE = Stage(
    name="evaluate",
    needs=("export", "preprocess"),
    sections=("evaluate", "train"),
    steps=(Step("evaluate", run=evaluate_step, kind="accel"),),  # a GPU job on a cluster
    description="per-language perplexity and bits per byte of the exports (and lm-eval tasks), offline",
    summary=summary,
    output="eval",
    config={"evaluate": EvaluateConfig},
)
