"""What `train.init_from` names, read without torch: the run's config is validated with it
(`model.size: from_init` takes the model's shape from the source), and `graine --help` imports the config.
The loading itself is training.init_from's."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from core.errors import ConfigError

if TYPE_CHECKING:
    pass

HF_PREFIX = "hf:"
KEY = "train.init_from"
FORCE_ENV = "GRAINE_FORCE"  # set by `graine run --force`; inherited by the job's processes


@dataclass(frozen=True)
class InitSource:
    spec: str  # as configured
    kind: str  # "hf" or "graine"
    path: Path
    step: int | None = None  # graine: the step asked for (None: latest)


def parse(spec: str) -> InitSource | None:
    """The source `train.init_from` names, or None when it is empty."""
    spec = (spec or "").strip()
    if not spec:
        return None
    if spec.startswith(HF_PREFIX):
        return InitSource(spec, "hf", Path(os.path.expandvars(spec[len(HF_PREFIX):])).expanduser())
    path, step = spec, None
    if "@" in spec:
        path, _, tail = spec.rpartition("@")
        from checkpoints.select import parse_step

        step = parse_step(tail, KEY)
    return InitSource(spec, "graine", Path(os.path.expandvars(path)).expanduser(), step)


# ------------------------------------------------------------------------------- Hugging Face source
def hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        conf = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{KEY}=hf:{folder}: {path} cannot be read ({exc}); point it at a BloomForCausalLM "
                          "folder (config.json + safetensors), e.g. a local download of bigscience/bloom-560m") from None
    if conf.get("model_type") != "bloom":
        raise ConfigError(f"{KEY}=hf:{folder}: config.json has model_type={conf.get('model_type')!r}; only BLOOM "
                          "models (model_type 'bloom') can be loaded")
    return conf


def hf_shape(conf: dict) -> dict:
    """graine's model.* keys of a BloomConfig (transformers spells some of them two ways)."""
    return {"num_layers": conf.get("n_layer", conf.get("num_hidden_layers")),
            "hidden_size": conf.get("hidden_size", conf.get("n_embed")),
            "num_heads": conf.get("n_head", conf.get("num_attention_heads")),
            "layer_norm_eps": conf.get("layer_norm_epsilon", 1e-5), "vocab_size": conf.get("vocab_size")}


# -------------------------------------------------------------------------------------- graine source
def graine_folder(src: InitSource) -> Path:
    """The checkpoint folder of a graine source (run directory, its checkpoints/, or a checkpoint folder)."""
    from checkpoints.manifest import MANIFEST
    from checkpoints.select import select_checkpoint

    path = src.path
    if (path / MANIFEST).is_file() or path.name.startswith("global_step"):
        if src.step is not None:
            raise ConfigError(f"{KEY}={src.spec!r} names a checkpoint folder and a step; give one of them "
                              "(<run_dir>@<step>, or the folder alone)")
        return path
    ckpt_dir = path if path.name == "checkpoints" else path / "checkpoints"
    if not ckpt_dir.is_dir():
        raise ConfigError(f"{KEY}={src.spec!r}: {path} is neither a graine run directory (no checkpoints/) nor a "
                          "checkpoint folder; for a Hugging Face model write hf:<dir>")
    return select_checkpoint(ckpt_dir, src.step, key=KEY, full=False)


def saved_model(folder: Path) -> dict:
    try:
        return yaml.safe_load((folder / "config.yaml").read_text())["model"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ConfigError(f"{KEY}: {folder / 'config.yaml'} cannot give the source's model shape ({exc})") from None


SHAPE_KEYS = ("num_layers", "hidden_size", "num_heads")


def source_shape(spec: str) -> dict:
    """model.* of the source's model: {num_layers, hidden_size, num_heads, layer_norm_eps, vocab_size?}."""
    src = parse(spec)
    if src is None:
        raise ConfigError("model.size=from_init needs train.init_from (hf:<dir> or a graine run); set it, or "
                          "pick a preset size")
    if src.kind == "hf":
        return hf_shape(hf_config(src.path))
    saved = saved_model(graine_folder(src))
    return {k: saved[k] for k in (*SHAPE_KEYS, "layer_norm_eps", "vocab_size", "pad_vocab_to_multiple") if k in saved}


def fill_model_shape(model, spec: str) -> None:
    """model.size=from_init: the shape fields of `model` (training.config.ModelConfig, not imported: it
    imports this module) left at 0, and the vocabulary, come from the source."""
    shape = source_shape(spec)
    for key in SHAPE_KEYS + ("vocab_size",):
        if not getattr(model, key) and shape.get(key):
            setattr(model, key, int(shape[key]))
    if "layer_norm_eps" in shape:
        model.layer_norm_eps = float(shape["layer_norm_eps"])
    if "pad_vocab_to_multiple" in shape:
        model.pad_vocab_to_multiple = int(shape["pad_vocab_to_multiple"])
    if model.hidden_size % model.num_heads:
        raise ConfigError(f"model.hidden_size={model.hidden_size} is not divisible by model.num_heads={model.num_heads}")
