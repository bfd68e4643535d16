"""Stage `export`: a checkpoint as a Hugging Face `BloomForCausalLM` release, loadable offline.

    export/global_step<N>/
        config.json                          BloomConfig (hf_mapping.hf_config), dtype = export.dtype
        model.safetensors                    or model-0000i-of-0000K.safetensors + model.safetensors.index.json
                                             when the weights exceed export.max_shard_gb
        tokenizer.json, tokenizer_config.json, special_tokens_map.json, tokenizer.model   from tokenizer/
        graine_export.json                   the source checkpoint (step, tokens, manifest sha256), dtype, files
    export/last_export.json                  which step the last run exported (the summary reads it)

The weights are DeepSpeed's fp32 master weights consolidated from the ZeRO partitions of however many
ranks saved them (`zero_to_fp32`), so the export does not depend on the parallel layout; the model
shape comes from the config saved in the checkpoint, not from the current one. Earlier exports of other
steps are carried over (hard links) into the new publication of `export/`.

The stage's identity includes the manifest of the checkpoint it exports (`external_inputs`): a new
`latest`, or a re-saved step, makes a complete export stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml

from checkpoints import manifest, safe_load
from checkpoints.layout import CheckpointState, read_state
from checkpoints.safetensors_io import write_sharded
from checkpoints.select import checkpoint_dir, latest_folder, parse_step, select_checkpoint
from checkpoints.universal import optimizer_files
from core.config import RunConfigBase as RunConfig
from core.config import build, param
from core.errors import CheckpointError
from core.progress import Progress
from core.stage import Stage, Step, TaskContext
from training.config import ModelConfig
from training.hf_mapping import expected_keys, hf_config, strip_wrappers


@dataclass(kw_only=True)
class ExportConfig:
    step: str = param("latest", help="checkpoint step to export (a number), or 'latest' (the newest valid one)")
    dtype: Literal["fp32", "bf16", "fp16"] = param("fp32", help="dtype of the exported weights (cast from the "
                                                   "fp32 master weights)")
    max_shard_gb: float = param(2.0, gt=0.0, help="largest safetensors file; a bigger model is sharded with a "
                                "model.safetensors.index.json")


log = logging.getLogger("graine.export")

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # in torch and in config.json
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
REQUIRED_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
LAST = "last_export.json"
RECORD = "graine_export.json"


# ------------------------------------------------------------------------------- sharded safetensors
# ---------------------------------------------------------------------------------------- weights
def saved_model_config(folder: Path) -> ModelConfig:
    """The model section of the config the checkpoint was saved with."""
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        return build(ModelConfig, saved["model"], "model.")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / 'config.yaml'} cannot give the model's shape ({exc}); was this "
                              "checkpoint written by graine?") from None


def consolidated_fp32(folder: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of the checkpoint `folder`, whatever its ZeRO stage and number of ranks.

    DeepSpeed's zero_to_fp32 unpickles the folder's files with weights_only=False: they are checked first
    (safe_load); without ZeRO, graine reads the model states itself with weights_only=True."""
    import torch

    safe_load.require_safe(folder)
    if optimizer_files(folder):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
        return {k: v.float() for k, v in state.items()}
    # ZeRO-0 keeps no optimizer partitions: the module's own weights are the trained ones (the fp32
    # masters themselves in fp32 training; in bf16 they are the bf16 copy, which is all there is).
    files = sorted(folder.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise CheckpointError(f"{folder} has neither ZeRO partitions nor mp_rank_*_model_states.pt; it is not "
                              "a DeepSpeed checkpoint")
    module = safe_load.load(files[0])["module"]
    if any(v.dtype != torch.float32 for v in module.values()):
        log.warning("%s was saved without ZeRO in reduced precision: exporting its bf16/fp16 weights", folder)
    return {k: v.float() for k, v in module.items()}


def check_tokenizer(state: CheckpointState, tokenizer_dir: Path, rows: int) -> dict:
    """The tokenizer's ids, after checking it is the one the checkpoint was trained with."""
    from data_prep.tokenizer import tokenizer_info

    missing = [f for f in REQUIRED_TOKENIZER_FILES if not (tokenizer_dir / f).is_file()]
    if missing:
        raise CheckpointError(f"{tokenizer_dir} lacks {', '.join(missing)}; re-run the tokenizer stage "
                              "(`graine run tokenizer --force`)")
    info = tokenizer_info(tokenizer_dir)
    trained_with = state.lineage.get("tokenizer_model")
    if trained_with and trained_with != info.hash:
        raise CheckpointError(f"{state.folder} was trained with tokenizer {trained_with}, but {tokenizer_dir} holds "
                              f"{info.hash}; export from the run directory whose tokenizer trained it")
    if info.vocab_size > rows:
        raise CheckpointError(f"the tokenizer has {info.vocab_size} tokens but the checkpoint's embedding only "
                              f"{rows} rows: {tokenizer_dir} is not this model's tokenizer")
    return {"vocab_size": info.vocab_size, "bos_token_id": info.bos_id, "eos_token_id": info.eod_id,
            "pad_token_id": info.pad_id if info.pad_id >= 0 else None}


def export_checkpoint(folder: Path, tokenizer_dir: Path, out: Path, export: ExportConfig,
                      progress: Callable[..., Progress] | None = None) -> dict:
    """Write the Hugging Face release of the checkpoint `folder` into `out` (replaced); returns its record.

    ZeRO 1-3 checkpoints are read from their fp32 partitions (checkpoints.zero_stream) a read batch at a
    time (safetensors_io.READ_BYTES; a bigger tensor a range of its elements at a time) while each file
    is written: memory holds one batch, not the model, a whole shard or a whole embedding. `progress` (TaskContext.progress) makes the Progress
    of the tensors written."""
    import torch

    state = read_state(folder)
    model_cfg = saved_model_config(folder)
    weights = fp32_weights(folder)
    shapes = {f"transformer.{k}": weights.shape(k) for k in expected_keys(model_cfg.num_layers)}
    rows = shapes["transformer.word_embeddings.weight"][0]
    ids = check_tokenizer(state, tokenizer_dir, rows)
    config = hf_config(model_cfg, ids["vocab_size"], bos_token_id=ids["bos_token_id"],
                       eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    if config.vocab_size != rows:
        raise CheckpointError(f"the checkpoint's embedding has {rows} rows but its model config pads the "
                              f"vocabulary to {config.vocab_size}; the saved config.yaml does not match the weights")
    config.dtype = DTYPE_NAMES[export.dtype]
    dtype = getattr(torch, DTYPE_NAMES[export.dtype])
    numel = {n: math.prod(s) for n, s in shapes.items()}
    # lm_head.weight is not written: it is tied to the embeddings (tie_word_embeddings), transformers restores it.

    def load(names: list[str]) -> dict[str, torch.Tensor]:
        got = weights.read([n.removeprefix("transformer.") for n in names])
        return {n: got[n.removeprefix("transformer.")].to(dtype) for n in names}

    def load_range(name: str, start: int, stop: int) -> torch.Tensor:
        return weights.read_range(name.removeprefix("transformer."), start, stop).to(dtype)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config.save_pretrained(str(out))
    tracker = progress(total=len(shapes), unit="tensors", what=f"export {folder.name}") if progress else None
    files = write_sharded(list(shapes), lambda n: (shapes[n], dtype), load, out, "model",
                          int(export.max_shard_gb * 1e9), written=tracker.update if tracker else None,
                          load_range=load_range)
    if tracker is not None:
        tracker.close()
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out / name)
    record = {"step": state.step, "consumed_tokens": state.consumed_tokens, "loss": state.loss,
              # Relative to the run directory, and the checksums of the checkpoint's weights and optimizer
              # states only (its state file holds the save time, its config the run directory): two runs
              # that trained the same model release byte-identical folders.
              "source": f"{folder.parent.name}/{folder.name}", "source_weights_sha256": weights_sha256(folder),
              "saved_world_size": state.world_size, "dtype": export.dtype, "weights": files,
              "parameters": sum(numel.values()), "bytes": sum(numel.values()) * dtype.itemsize}
    (out / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
    return record


class _WholeModule:
    """ZeRO-0's weights (`consolidated_fp32`), behind ZeroCheckpoint's `shape`/`read` interface."""

    def __init__(self, folder: Path):
        self.weights = strip_wrappers(consolidated_fp32(folder))

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.weights[name].shape)

    def read(self, names: list[str]) -> dict:
        return {n: self.weights[n] for n in names}

    def read_range(self, name: str, start: int, stop: int):
        return self.weights[name].reshape(-1)[start:stop]


def fp32_weights(folder: Path):
    """A reader of the checkpoint's fp32 weights by parameter name: streamed from the ZeRO partitions,
    or the whole module of a ZeRO-0 checkpoint (which fits in one process by construction)."""
    safe_load.require_safe(folder)
    if optimizer_files(folder):
        from checkpoints.zero_stream import ZeroCheckpoint

        return ZeroCheckpoint(folder)
    return _WholeModule(folder)


# ------------------------------------------------------------------------------------------ stage
def _carry_over(published: Path, staging: Path, keep: str) -> None:
    """Earlier exports of other steps stay in the new `export/` (hard links: no copy, no extra space)."""
    if not published.is_dir():
        return
    for old in sorted(published.glob("global_step*")):
        if old.name == keep or (staging / old.name).exists() or not old.is_dir():
            continue
        try:
            shutil.copytree(old, staging / old.name, copy_function=os.link)
        except OSError:
            shutil.rmtree(staging / old.name, ignore_errors=True)
            shutil.copytree(old, staging / old.name)


def export_step(ctx: TaskContext) -> None:
    cfg = ctx.cfg
    folder = select_checkpoint(checkpoint_dir(cfg.run_dir), parse_step(cfg.export.step, "export.step"),
                               key="export.step")
    ctx.log.info("exporting %s as %s safetensors", folder, cfg.export.dtype)
    record = export_checkpoint(folder, ctx.input_dir("tokenizer"), ctx.out_dir / folder.name, cfg.export,
                               progress=ctx.progress)
    _carry_over(ctx.run_dir / STAGE.folder, ctx.out_dir, folder.name)
    last = {**record, "path": f"{STAGE.folder}/{folder.name}"}  # relative to the run directory
    (ctx.out_dir / LAST).write_text(json.dumps(last, indent=1, sort_keys=True))


def checkpoint_manifest(cfg: RunConfig) -> list[Path]:
    """The manifest of the checkpoint `export.step` names (none yet: nothing), as the stage's raw input."""
    ckpt_dir = checkpoint_dir(cfg.run_dir)
    step = parse_step(cfg.export.step, "export.step")
    folder = latest_folder(ckpt_dir) if step is None else ckpt_dir / f"global_step{step}"
    path = folder / "manifest.json" if folder is not None else None
    return [path] if path is not None and path.is_file() else []


def weights_sha256(folder: Path) -> str:
    """sha256 over the manifest entries of the checkpoint's tensors (not its state file or config)."""
    entries, why = manifest.read_manifest(folder)
    if entries is None:
        raise CheckpointError(f"{folder} has no valid manifest ({why})")
    tensors = {rel: e["sha256"] for rel, e in sorted(entries.items()) if rel.endswith(".pt")}
    return hashlib.sha256(json.dumps(tensors, sort_keys=True).encode()).hexdigest()


def summary(out_dir: Path) -> str:
    last = json.loads((out_dir / LAST).read_text())
    tokens = f"{last['consumed_tokens']:,} tokens, " if last.get("consumed_tokens") is not None else ""
    loss = f"loss {last['loss']:.4f}, " if last.get("loss") is not None else ""
    return (f"step {last['step']} ({tokens}{loss}{last['parameters']:,} parameters) exported as {last['dtype']} "
            f"BloomForCausalLM to {out_dir.parent / last['path']} ({last['bytes'] / 1e6:.1f} MB in {len(last['weights'])} file(s)); "
            "load it with transformers.AutoModelForCausalLM.from_pretrained")


STAGE = Stage(
    name="export",
    needs=("pretrain", "tokenizer"),
    sections=("export",),
    steps=(Step("export", run=export_step),),
    description="a checkpoint as Hugging Face BloomForCausalLM safetensors with its tokenizer",
    summary=summary,
    external_inputs=checkpoint_manifest,
    config={"export": ExportConfig},
)
