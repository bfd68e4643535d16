"""Continued pretraining: step 0 from existing weights (`train.init_from`) instead of random ones.

    train.init_from: hf:<dir>                  a transformers BloomForCausalLM folder (config.json and
                                               model.safetensors, or shards with model.safetensors.index.json;
                                               fp32, bf16 or fp16)
    train.init_from: <run_dir>[@<step>]        another graine run: its `latest` valid checkpoint, or that step
    train.init_from: <checkpoint folder>       .../checkpoints/global_step<N>, whatever its ZeRO stage and
                                               number of ranks (zero_to_fp32's consolidated fp32 weights)
    train.init_optimizer: true                 with a graine source, its Adam moments too (DeepSpeed's load;
                                               through the source's universal conversion on another rank count)

Only the weights (and, if asked, the moments) are taken: the step count, the LR schedule (so a re-warmup)
and the data order are the new run's own. The source is checked before anything is loaded: a graine
checkpoint against its manifest (every checksum), a Hugging Face config against `model.*`
(`model.size: from_init` takes the shape from it instead).

When: `Trainer.resume()` calls `initialise()` once, after the engine is built, when the run has no
checkpoint of its own. Every parameter is written in place, one at a time, into what DeepSpeed holds: the
module's (low-precision) parameter, or under ZeRO-3 this rank's partition of it, and the fp32 master
copy (deepspeed.utils.safe_set_full_fp32_param). A Hugging Face tensor is read from its safetensors file
only when its parameter is written, so no rank ever holds more than one full parameter beyond the model.
Embedding rows are padded with zeros up to the model's padded vocabulary (or padding rows beyond it dropped).

Once the run has saved a checkpoint, re-running resumes from it and `init_from` is ignored (logged);
changing `init_from` on a run that has checkpoints is refused (`check_unchanged`), naming both sources,
unless `graine run ... --force` (which sets FORCE_ENV for the job).

The source's identity (spec, path, step, manifest sha256 or the Hugging Face files' digest) goes into
the run's lineage (every checkpoint's graine_state.json), its result.json and the pretrain stage's
completion record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from core.errors import CheckpointError, ConfigError
from training.init_source import (
    FORCE_ENV,
    KEY,
    SHAPE_KEYS,
    InitSource,
    graine_folder,
    hf_config,
    hf_shape,
    parse,
    saved_model,
)

if TYPE_CHECKING:
    import torch

    from training.config import ModelConfig

log = logging.getLogger("graine.init_from")

HF_INDEX = "model.safetensors.index.json"
HF_SINGLE = "model.safetensors"

def hf_weight_files(folder: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} of a (sharded or single-file) Hugging Face folder."""
    if (folder / HF_INDEX).is_file():
        try:
            weight_map = json.loads((folder / HF_INDEX).read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{folder / HF_INDEX} is unreadable ({exc})") from None
        return {name: folder / file for name, file in weight_map.items()}
    if (folder / HF_SINGLE).is_file():
        return dict.fromkeys(_safetensors_header(folder / HF_SINGLE), folder / HF_SINGLE)
    raise ConfigError(f"{KEY}=hf:{folder}: neither {HF_SINGLE} nor {HF_INDEX} is there; only safetensors weights "
                      "are loaded (convert a pytorch_model.bin with transformers' save_pretrained(safe_serialization=True))")


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def hf_digest(folder: Path) -> str:
    """A cheap identity of a Hugging Face model: sha256 over config.json and every weight file's name,
    size and safetensors header (dtypes, shapes and offsets), not over the weights' bytes."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for file in sorted(set(hf_weight_files(folder).values())):
        h.update(f"{file.name}:{file.stat().st_size}:".encode())
        h.update(json.dumps(_safetensors_header(file), sort_keys=True).encode())
    return h.hexdigest()


class LazyHFTensors:
    """{graine-style HF name: loader} over the safetensors files: a tensor is read (and cast to fp32) only
    when its loader is called. Keys are `transformer.*` whether or not the file spells the prefix (BLOOM's
    own releases do not)."""

    def __init__(self, folder: Path):
        files = hf_weight_files(folder)
        self.files = {name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}": (file, name)
                      for name, file in files.items()}

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def __getitem__(self, key: str) -> Callable[[], torch.Tensor]:
        file, name = self.files[key]

        def load() -> torch.Tensor:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(name).float()

        return load


def verified_folder(src: InitSource) -> Path:
    """The source checkpoint folder, checked against its manifest (every checksum): ConfigError if not valid."""
    from checkpoints import manifest

    folder = graine_folder(src)
    why = manifest.verify(folder, full=True)
    if why:
        raise CheckpointError(f"{KEY}={src.spec!r}: {folder} is not a valid checkpoint ({why}); pick another "
                              "step (<run_dir>@<step>) or restore it")
    return folder


# ------------------------------------------------------------------------------------- config checks
def check_shape(src: InitSource, model: ModelConfig, folder: Path | None = None) -> None:
    """The source's model shape against model.*; ConfigError naming each key that differs."""
    if src.kind == "hf":
        theirs = hf_shape(hf_config(src.path))
    else:
        theirs = saved_model(folder or graine_folder(src))
    bad = [f"model.{k}={getattr(model, k)} but the source has {theirs.get(k)}" for k in SHAPE_KEYS
           if theirs.get(k) is not None and int(theirs[k]) != getattr(model, k)]
    eps = theirs.get("layer_norm_eps")
    if eps is not None and abs(float(eps) - model.layer_norm_eps) > 1e-12:
        bad.append(f"model.layer_norm_eps={model.layer_norm_eps} but the source has {eps}")
    if bad:
        raise ConfigError(f"{KEY}={src.spec!r} does not match the model: {'; '.join(bad)}. Set those keys to the "
                          "source's values, or model.size=from_init to take the shape from it")


def check(cfg) -> None:
    """Before submission: the source exists and matches `model.*`, and a run with checkpoints keeps its source."""
    src = parse(cfg.train.init_from)
    if src is not None:
        if src.kind == "hf":
            hf_weight_files(src.path)
        check_shape(src, cfg.model)
    check_unchanged(Path(cfg.run_dir) / "checkpoints", cfg.train.init_from)


def check_unchanged(ckpt_dir: Path, init_from: str, saved_folder: Path | None = None) -> None:
    """Refuse to resume a run whose checkpoints were started from another `train.init_from`, naming both,
    unless forced (`graine run --force`); either way the run resumes from its own checkpoint."""
    from checkpoints.select import latest_folder

    folder = saved_folder or latest_folder(ckpt_dir)
    if folder is None or not (folder / "config.yaml").is_file():
        return
    try:
        saved = (yaml.safe_load((folder / "config.yaml").read_text())["train"].get("init_from") or "")
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return
    if saved.strip() == (init_from or "").strip():
        return
    if os.environ.get(FORCE_ENV) == "1":
        log.warning("train.init_from changed from %r to %r, and --force was given: the run resumes from its own "
                    "checkpoint %s and neither source is loaded", saved, init_from, folder)
        return
    raise ConfigError(f"train.init_from changed from {saved!r} (which started the checkpoints of {ckpt_dir}) to "
                      f"{init_from!r}; a run with checkpoints resumes from them and never loads init_from again. "
                      f"Put train.init_from back to {saved!r}, start a new run_dir to begin from {init_from!r}, or "
                      "re-run with --force to resume anyway")


# ---------------------------------------------------------------------------------------- loading
def identity(src: InitSource, folder: Path | None) -> dict:
    if src.kind == "hf":
        return {"spec": src.spec, "kind": "hf", "path": str(src.path.resolve()), "step": None,
                "files_sha256": hf_digest(src.path)}
    from checkpoints.layout import read_state
    from checkpoints.universal import manifest_sha256

    return {"spec": src.spec, "kind": "graine", "path": str(folder.resolve()), "step": read_state(folder).step,
            "manifest_sha256": manifest_sha256(folder)}


def initialise(engine, cfg, rank: int, check_safe: Callable[[Path], None]) -> dict | None:
    """Load `train.init_from` into the freshly built engine (every rank calls it); returns the source's
    identity for the lineage, or None when init_from is empty. `check_safe` is the checkpointer's
    collective refusal of unsafe pickles."""
    from checkpoints.checkpointer import broadcast, gather_errors

    src = parse(cfg.train.init_from)
    if src is None:
        return None
    # Rank 0 verifies (every checksum of a graine checkpoint) and names the folder; the others follow.
    folder, error, ident = None, None, None
    if rank == 0:
        try:
            folder = verified_folder(src) if src.kind == "graine" else None
            check_shape(src, cfg.model, folder)
            ident = identity(src, folder)
        except (ConfigError, CheckpointError) as exc:
            error, ident = str(exc), None
    error, folder, ident = broadcast((error, folder, ident))
    if error:
        raise ConfigError(error)
    if src.kind == "hf":
        tensors = _hf_loaders(src.path, cfg.model)
    else:
        check_safe(folder)
        tensors = _graine_loaders(folder)
    errors = gather_errors(_try(lambda: write_weights(engine, tensors)))
    if errors:
        raise CheckpointError(f"{KEY}={src.spec!r}: loading the weights failed ({'; '.join(errors)})")
    if src.kind == "graine" and cfg.train.init_optimizer:
        load_optimizer(engine, folder, check_safe)
    log.info("initialised from %s (%s%s): %d parameters loaded; step, LR schedule and data order start fresh",
             src.spec, ident["path"], f", step {ident['step']}" if ident["step"] is not None else "",
             len(tensors))
    return ident


def _try(fn) -> str | None:
    try:
        fn()
    except (CheckpointError, ConfigError, RuntimeError, KeyError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _hf_loaders(folder: Path, model: ModelConfig) -> dict[str, Callable[[], torch.Tensor]]:
    from training.hf_mapping import from_hf_state_dict

    # from_hf_state_dict renames and checks the keys; the values it moves are loaders, read one at a time.
    return from_hf_state_dict(LazyHFTensors(folder), model)


def _graine_loaders(folder: Path) -> dict[str, Callable[[], torch.Tensor]]:
    """A loader per parameter (graine name) of the checkpoint's fp32 weights: under ZeRO 1-3 each reads its
    own slices of the rank files' partitions when called (checkpoints.zero_stream), so a rank holds one
    parameter at a time, not the consolidated model."""
    from training.export import fp32_weights
    from training.hf_mapping import strip_wrappers

    weights = fp32_weights(folder)
    saved_as = strip_wrappers({name: name for name in weights.names})
    return {name: (lambda raw=raw: weights.read([raw])[raw]) for name, raw in saved_as.items()}


def fit_rows(name: str, value: torch.Tensor, rows: int, vocab: int) -> torch.Tensor:
    """The embedding `value` with `rows` rows: zero rows appended, or padding rows (>= vocab) dropped."""
    import torch

    have = value.shape[0]
    if have < rows:
        log.info("%s: %d rows padded with zeros to the model's %d", name, have, rows)
        return torch.cat([value, value.new_zeros(rows - have, *value.shape[1:])])
    if have > rows:
        if rows < vocab:
            raise CheckpointError(f"{name} has {have} rows; the model has {rows}, fewer than the vocabulary's "
                                  f"{vocab}: raise model.vocab_size to {have}")
        log.info("%s: padding rows %d..%d dropped (the model pads to %d)", name, rows, have - 1, rows)
        return value[:rows]
    return value


def write_weights(engine, tensors: dict[str, Callable[[], torch.Tensor]]) -> None:
    """Every parameter of the engine's module from `tensors` (fp32 loaders by graine name), one at a time."""
    import torch
    from deepspeed.utils import safe_set_full_fp32_param

    from training.hf_mapping import strip_wrappers

    module = engine.module
    params = strip_wrappers(dict(module.named_parameters()))
    missing = sorted(set(params) - set(tensors))
    if missing:
        raise CheckpointError(f"the source has no {missing[:3]}; is it a model of this shape?")
    with torch.no_grad():
        for name, param in params.items():
            value = tensors[name]()
            shape = tuple(getattr(param, "ds_shape", param.shape))
            if name == "word_embeddings.weight":
                value = fit_rows(name, value, shape[0], getattr(module, "vocab_size", shape[0]))
            if tuple(value.shape) != shape:
                raise CheckpointError(f"{name} has shape {tuple(value.shape)} in the source and {shape} in the model")
            if hasattr(param, "ds_tensor"):  # ZeRO-3: this rank's slice of the flattened parameter
                part = param.ds_tensor
                flat = value.flatten()
                start = min(part.ds_numel * engine.global_rank, flat.numel())
                piece = flat[start:start + part.ds_numel]
                part.data.zero_()
                part.data[:piece.numel()].copy_(piece.to(part.dtype))
            else:
                param.data.copy_(value.to(param.dtype))
            # The fp32 master copy held by the ZeRO / bf16 optimizer (a no-op without one): from the
            # source's values, not from the low-precision parameter just written.
            safe_set_full_fp32_param(param, value.to(param.device))
            del value


def load_optimizer(engine, folder: Path, check_safe) -> None:
    """train.init_optimizer: the source's weights and Adam moments through DeepSpeed's own load (its
    universal conversion when it was saved by another number of ranks); the engine's counters restart."""
    from checkpoints.universal import load_engine_state

    loaded, _ = load_engine_state(engine, folder, engine.world_size, check=check_safe)
    if loaded is None:
        raise CheckpointError(f"DeepSpeed could not load the optimizer states of {folder}")
    engine.global_steps = engine.global_samples = 0
    log.info("Adam moments taken from %s", folder)
