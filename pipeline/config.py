"""Run configuration: one YAML file in, typed dataclasses out, validated before anything runs.

Each section is a `kw_only` dataclass; `param()` attaches the help text and the allowed range that
validation reports. Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the
key, the value and the fix. Overrides are `key.sub=value` with the value parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import ConfigError


def param(default: Any = dataclasses.MISSING, *, help: str = "", ge: float | None = None,
          gt: float | None = None, le: float | None = None, default_factory: Any = dataclasses.MISSING):
    """A config field with its help text and numeric bounds (checked at load time)."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------- stages
@dataclass(kw_only=True)
class NormalizeConfig:
    nfc: bool = param(True, help="Unicode NFC normalisation")
    fix_mojibake: bool = param(True, help="repair UTF-8 decoded as cp1252/latin-1 (ftfy, conservative)")
    strip_control: bool = param(True, help="remove control characters except tab and newline")
    whitespace: bool = param(True, help="collapse runs of spaces, trim lines, at most two blank lines")


@dataclass(kw_only=True)
class DedupConfig:
    exact: bool = param(True, help="drop documents whose normalised text hash was seen before")
    near: bool = param(True, help="MinHash LSH near-duplicate removal")
    shingle_size: int = param(5, ge=1, help="words (characters for zh/ja) per shingle")
    num_perm: int = param(128, ge=8, help="MinHash permutations; must equal bands * rows")
    bands: int = param(16, ge=1, help="LSH bands")
    rows: int = param(8, ge=1, help="rows per LSH band")
    threshold: float = param(0.8, ge=0.0, le=1.0, help="estimated Jaccard above which two documents are duplicates")


@dataclass(kw_only=True)
class CleanConfig:
    inputs: list[str] = param(default_factory=list, help="paths or globs of raw documents (jsonl, jsonl.gz, jsonl.zst, parquet, txt)")
    text_field: str = param("text", help="field holding the document text")
    id_field: str = param("id", help="field holding the document id (generated from source and line when absent)")
    num_tasks: int = param(4, ge=1, le=100_000, help="independent tasks (a Slurm array on a cluster)")
    languages: list[str] = param(default_factory=list, help="ISO 639-1 codes to keep; empty keeps every language")
    keep_other: bool = param(False, help="keep documents of unlisted languages under lang 'other' instead of excluding them")
    min_lang_score: float = param(0.5, ge=0.0, le=1.0, help="default minimum language-id probability")
    langid_chars: int = param(500, ge=50, help="characters of each document given to language id (its cost is linear)")
    boilerplate: bool = param(True, help="remove boilerplate lines (cookie banners, copyright footers, navigation)")
    code_extensions: list[str] = param(default_factory=lambda: [".py", ".js", ".java", ".c", ".cpp", ".go", ".rs", ".sh"], help="file extensions routed to the code path")
    code_field: str = param("", help="record field whose value, when present, names the programming language")
    normalize: NormalizeConfig = param(default_factory=NormalizeConfig)
    filters: dict[str, dict[str, float]] = param(default_factory=dict, help="per-language overrides of the quality-filter table, e.g. {fr: {min_words: 20}}")
    pii: bool = param(True, help="redact emails, IP addresses, phone numbers and secrets")
    dedup: DedupConfig = param(default_factory=DedupConfig)
    compression: Literal["zst", "gz"] = param("zst", help="compression of the clean/ shards")
    on_corrupt_file: Literal["error", "skip"] = param("error", help="an input that cannot be read to its end (truncated "
                                                      ".gz/.zst, corrupt parquet): error = fail the stage naming it; skip = keep "
                                                      "the records read before the error, list the file in rejects.jsonl, go on")


@dataclass(kw_only=True)
class TokenizerConfig:
    vocab_size: int = param(8000, ge=300, le=1_000_000, help="vocabulary size, special tokens included")
    model_type: Literal["bpe", "unigram"] = param("bpe", help="SentencePiece model type")
    alpha: float = param(0.3, ge=0.0, le=1.0, help="language sampling exponent: p_l ∝ n_l^alpha")
    sample_bytes: int = param(50_000_000, ge=1000, help="maximum size of the training sample")
    heldout_fraction: float = param(0.02, ge=0.0, le=0.5, help="share of clean/ kept out of the sample for the report")
    user_defined_symbols: list[str] = param(default_factory=list, help="extra special tokens")
    split_digits: bool = param(True, help="split numbers into single digits")
    byte_fallback: bool = param(True, help="encode unknown characters as bytes (no <unk>)")
    max_memory_gb: float = param(0.0, ge=0.0, help="memory the training may use; 0 = the job's or machine's")
    threads: int = param(0, ge=0, help="training threads; 0 = the job's CPUs")
    character_coverage: float = param(0.9995, ge=0.9, le=1.0, help="share of sample characters given their own "
                                      "piece; the rarest fall back to bytes")
    split_by_whitespace: bool = param(True, help="pieces never span a space (false lets pieces like 'a▁b' form)")


@dataclass(kw_only=True)
class PreprocessConfig:
    num_tasks: int = param(4, ge=1, le=100_000, help="tokenisation tasks (a Slurm array on a cluster)")
    alpha: float = param(0.3, ge=0.0, le=1.0, help="blend weights over languages: p_l ∝ n_l^alpha")
    multipliers: dict[str, float] = param(default_factory=dict, help="explicit per-dataset weight multipliers")
    split_by_source: bool = param(False, help="one dataset per language and source instead of per language")
    validation_fraction: float = param(0.01, ge=0.0, le=0.5, help="share of documents held out for validation")
    source_field: str = param("source", help="clean/ record field naming the source, for split_by_source")


@dataclass(kw_only=True)
class ModelConfig:
    size: str = param("demo", help="a preset name (demo, 560m, 1b1, 1b7, 3b, 7b1, 176b; pipeline/model_presets.py) "
                                   "or 'custom'; shape fields left at 0 come from the preset")
    num_layers: int = param(0, ge=0, help="transformer blocks; 0 = the preset's")
    hidden_size: int = param(0, ge=0, help="model width; 0 = the preset's")
    num_heads: int = param(0, ge=0, help="attention heads (need not be a power of two); 0 = the preset's")
    max_positions: int = param(2048, ge=8, help="longest sequence the run may use (ALiBi has no position table)")
    vocab_size: int = param(0, ge=0, help="0 = the tokenizer's size (BLOOM's released models: 250880)")
    pad_vocab_to_multiple: int = param(128, ge=1, help="pad the embedding rows to a multiple of this")
    layer_norm_eps: float = param(1e-5, gt=0.0, help="LayerNorm epsilon")
    init_std: float = param(0.0217, gt=0.0, help="normal init std (BLOOM: 0.0048 at 176b)")
    hidden_dropout: float = param(0.0, ge=0.0, le=1.0)
    attention_dropout: float = param(0.0, ge=0.0, le=1.0)
    kernels: Literal["auto", "triton", "apex", "torch"] = param("auto", help="fused-kernel backend (kernels/dispatch.py)")
    attention: Literal["auto", "triton", "flex", "sdpa", "eager"] = param(
        "auto", help="attention implementation; auto follows model.kernels")
    loss_chunk_tokens: int = param(4096, ge=1, help="tokens per chunk of the output projection + cross-entropy "
                                                  "(bounds the logits held at once)")
    compile: bool = param(False, help="wrap the model in torch.compile")

    def __post_init__(self) -> None:
        # A preset fills the shape fields left at 0, so `size: 560m` alone is a complete model and
        # `size: 560m, num_layers: 4` is a shallow 560m for tests.
        from pipeline.model_presets import PRESETS

        if self.size != "custom":
            if self.size not in PRESETS:
                raise ConfigError(f"model.size={self.size!r} is not a preset; use one of "
                                  f"{', '.join(PRESETS)} or 'custom' with model.num_layers/hidden_size/num_heads")
            preset = PRESETS[self.size]
            for name in ("num_layers", "hidden_size", "num_heads"):
                if getattr(self, name) == 0:
                    setattr(self, name, getattr(preset, name))
        for name in ("num_layers", "hidden_size", "num_heads"):
            if getattr(self, name) == 0:
                raise ConfigError(f"model.{name} is 0 with model.size=custom; set model.{name} or pick a preset size")


@dataclass(kw_only=True)
class RampupConfig:
    start: int = param(0, ge=0, help="global batch size at the start (0 = no ramp-up)")
    increment: int = param(16, ge=1, help="batch-size step")
    samples: int = param(0, ge=0, help="samples over which the batch grows to train.global_batch_size")


@dataclass(kw_only=True)
class TrainConfig:
    seq_len: int = param(128, ge=8, help="tokens per training sample")
    micro_batch_size: int = param(4, ge=1, help="samples per rank per forward pass")
    global_batch_size: int = param(8, ge=1, help="samples per optimizer step, all ranks together")
    rampup: RampupConfig = param(default_factory=RampupConfig)
    train_tokens: int = param(200_000, ge=1, help="stop after this many tokens")
    lr: float = param(6e-4, gt=0.0, help="peak learning rate")
    min_lr_ratio: float = param(0.1, ge=0.0, le=1.0, help="final LR as a share of the peak (BLOOM: 10%)")
    warmup_tokens: int = param(20_000, ge=0, help="linear warm-up length in tokens (BLOOM: 375M)")
    decay_tokens: int = param(200_000, ge=1, help="cosine decay length in tokens (BLOOM: 410B)")
    weight_decay: float = param(0.1, ge=0.0)
    beta1: float = param(0.9, ge=0.0, le=1.0)
    beta2: float = param(0.95, ge=0.0, le=1.0)
    eps: float = param(1e-8, gt=0.0)
    grad_clip: float = param(1.0, ge=0.0, help="gradient-norm clipping; 0 disables")
    zero_stage: int = param(1, ge=0, le=3, help="DeepSpeed ZeRO stage (BLOOM used 1)")
    precision: Literal["fp32", "bf16", "fp16"] = param("fp32", help="bf16 on A100/H100, fp16 with loss scaling on V100")
    optimizer: Literal["adamw", "cpu_adam"] = param("adamw", help="adamw (fused on GPU) or DeepSpeedCPUAdam")
    activation_checkpointing: bool = param(False, help="recompute activations in the backward pass to save memory")
    devices_per_node: int = param(1, ge=1, help="processes (GPUs) per node; on CPU, processes on this machine")
    num_nodes: int = param(1, ge=1, help="nodes of the training job")
    log_interval: int = param(10, ge=1, help="steps between metric lines")
    eval_interval: int = param(50, ge=0, help="steps between validation losses; 0 disables")
    eval_iters: int = param(4, ge=1, help="validation batches per evaluation")
    exit_duration_min: float = param(0.0, ge=0.0, help="save and stop after this many minutes of wall clock; 0 disables")
    kill_switch_file: str = param("", help="save and stop when this file appears (default: <run_dir>/KILL)")
    max_skipped_steps: int = param(5, ge=1, help="consecutive non-finite steps that stop the run")
    dist_timeout_min: float = param(30.0, gt=0.0, help="minutes a collective may wait for a peer before the job "
                                    "fails (a checkpoint save on a slow filesystem must fit in it)")


@dataclass(kw_only=True)
class CheckpointConfig:
    interval: int = param(50, ge=1, help="steps between checkpoints")
    keep_last: int = param(2, ge=1, help="recent checkpoints kept")
    keep_every: int = param(0, ge=0, help="also keep every N-th step forever (0 = none)")
    max_num_timeout: int = param(20, ge=0, help="walltime requeues before giving up")


@dataclass(kw_only=True)
class ExportConfig:
    step: str = param("latest", help="checkpoint step to export (a number), or 'latest' (the newest valid one)")
    dtype: Literal["fp32", "bf16", "fp16"] = param("fp32", help="dtype of the exported weights (cast from the "
                                                   "fp32 master weights)")
    max_shard_gb: float = param(2.0, gt=0.0, help="largest safetensors file; a bigger model is sharded with a "
                                "model.safetensors.index.json")


@dataclass(kw_only=True)
class ClusterConfig:
    profile: str = param("local", help="site profile in slurm/profiles (jean-zay-a100, jean-zay-h100, jean-zay-v100, generic, local-cluster, local)")
    account: str = param("", help="Slurm account, e.g. abc@h100 on Jean Zay")
    slurm: dict[str, Any] = param(default_factory=dict, help="Slurm parameters applied to every job")
    cpu: dict[str, Any] = param(default_factory=dict, help="Slurm parameters for CPU (data) jobs")
    gpu: dict[str, Any] = param(default_factory=dict, help="Slurm parameters for GPU (training) jobs")


# Keys that split a stage's work into tasks without changing its outputs (the canonical order makes
# them byte-identical): a complete stage is not stale when only these change.
SHAPE_KEYS = ("clean.num_tasks", "preprocess.num_tasks")


@dataclass(kw_only=True)
class RunConfig:
    run_dir: str = param("runs/demo", help="where every stage writes (on Jean Zay: under $SCRATCH)")
    verify_inputs: Literal["sampled", "full"] = param("sampled", help="how each task checks the upstream outputs it "
                                                       "reads against their records: sizes and sampled blocks, or "
                                                       "every byte")
    run_dir_mode: str = param("0750", help="permissions (octal) of the run directory and of what graine writes "
                              "in it: 0750 lets the group read and nobody else write (job pickles run as code); "
                              "0770 lets the group write too")
    seed: int = param(1234, ge=0, le=2**31 - 1, help="seed of every random choice (data order, weights)")
    clean: CleanConfig = param(default_factory=CleanConfig)
    tokenizer: TokenizerConfig = param(default_factory=TokenizerConfig)
    preprocess: PreprocessConfig = param(default_factory=PreprocessConfig)
    model: ModelConfig = param(default_factory=ModelConfig)
    train: TrainConfig = param(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = param(default_factory=CheckpointConfig)
    export: ExportConfig = param(default_factory=ExportConfig)
    cluster: ClusterConfig = param(default_factory=ClusterConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections without the keys that only split the work (SHAPE_KEYS): a
        stage's identity is the part of the config that decides its outputs."""
        data = {s: self.to_dict()[s] for s in sections}
        for key in SHAPE_KEYS:
            section, name = key.split(".")
            if isinstance(data.get(section), dict):
                data[section] = {k: v for k, v in data[section].items() if k != name}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def shape(self, *sections: str) -> dict[str, Any]:
        """The SHAPE_KEYS of the named sections: how a stage's work is split into tasks."""
        return {k: getattr(getattr(self, k.split(".")[0]), k.split(".")[1]) for k in SHAPE_KEYS
                if k.split(".")[0] in sections}


# -------------------------------------------------------------------------------------- loading
def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run file, apply `key.sub=value` overrides, build and validate the dataclasses."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass -c with a YAML run file such as configs/demo.yaml")
        try:
            data = yaml.load(path.read_text(), Loader=_StrictLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if data is None:
            raise ConfigError(f"{path} is empty; write the run's settings in it (configs/demo.yaml is an example)")
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    # The command line itself is written into job scripts (as a comment), so its words obey the same rule.
    _refuse_control_characters([str(path or ""), *overrides], "the command line")
    for item in overrides:
        apply_override(data, item)
    _refuse_control_characters(data, "")
    cfg = build(RunConfig, data, "")
    check_consistency(cfg)
    return cfg


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice (the second would silently win); keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# Config strings reach job scripts, log lines and file names: no line breaks or other control characters.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _refuse_control_characters(value: Any, key: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_control_characters(str(k), f"{key}.{k}" if key else str(k))
            _refuse_control_characters(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_control_characters(v, f"{key}[{i}]")
    elif isinstance(value, str) and (m := _CONTROL.search(value)):
        raise ConfigError(f"{key}={value!r} holds a control character ({m.group()!r}); config strings are single "
                          "lines without control characters: remove it")


def apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value; write e.g. train.lr=3e-4")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking keys, types and ranges."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}'; valid keys at {where}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        kwargs[name] = _coerce(hints[name], value, key)
        _check_range(fields[name], kwargs[name], key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, f"{key}.")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; expected one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and item_tp is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list, e.g. {key}='[a, b]'")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping, e.g. {key}='{{a: 1}}'")
        return {str(k): _coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if tp in (int, float) and isinstance(value, str):
        # YAML 1.1 reads 3e-4 (no dot) as a string; accept what is plainly a number.
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a string")
        return str(value)
    raise TypeError(f"unsupported config type {tp} for {key}")  # a bug in the schema, not user input


def _check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    ge, gt, le = f.metadata.get("ge"), f.metadata.get("gt"), f.metadata.get("le")
    bounds = []
    if ge is not None:
        bounds.append(f">= {ge:g}")
    if gt is not None:
        bounds.append(f"> {gt:g}")
    if le is not None:
        bounds.append(f"<= {le:g}")
    if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le):
        raise ConfigError(f"{key}={value!r} is out of range; expected {' and '.join(bounds)}")


def check_consistency(cfg: RunConfig) -> None:
    """Checks that involve several keys; each message names the key to change."""
    if not re.fullmatch(r"0?[0-7]{3}", cfg.run_dir_mode) or int(cfg.run_dir_mode, 8) & 0o700 != 0o700:
        raise ConfigError(f"run_dir_mode={cfg.run_dir_mode!r} must be octal permissions that give the owner rwx, "
                          "e.g. 0750 (group reads) or 0700 (private)")
    d = cfg.clean.dedup
    if d.bands * d.rows != d.num_perm:
        raise ConfigError(f"clean.dedup.num_perm={d.num_perm} must equal clean.dedup.bands * clean.dedup.rows "
                          f"= {d.bands} * {d.rows}; set clean.dedup.num_perm={d.bands * d.rows}")
    t = cfg.train
    if t.seq_len > cfg.model.max_positions:
        raise ConfigError(f"train.seq_len={t.seq_len} exceeds model.max_positions={cfg.model.max_positions}; "
                          "lower train.seq_len or raise model.max_positions")
    if cfg.model.hidden_size % cfg.model.num_heads:
        raise ConfigError(f"model.hidden_size={cfg.model.hidden_size} is not divisible by "
                          f"model.num_heads={cfg.model.num_heads}; pick a head count that divides it")
    if t.global_batch_size % t.micro_batch_size:
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} is not a multiple of "
                          f"train.micro_batch_size={t.micro_batch_size}")
    if t.rampup.start and t.rampup.start % t.micro_batch_size:
        raise ConfigError(f"train.rampup.start={t.rampup.start} is not a multiple of train.micro_batch_size")


def describe(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf: the reference table in the README and `graine config --help`."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f"{prefix}{f.name}", repr(default), f.metadata.get("help", "")))
    return rows
