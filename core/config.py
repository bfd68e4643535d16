"""The config schema machinery: one YAML file in, typed dataclasses out, validated before anything runs.

Each section is a `kw_only` dataclass declared by the stage that owns it (`Stage.config`); the
orchestration assembles them into the run's config class (pipeline/config.py). `param()` attaches the
help text, the allowed range that validation reports, and `shape=True` for keys that only split the
work into tasks (outside the stage's config hash). Unknown keys, wrong types and out-of-range values
raise `ConfigError` naming the key, the value and the fix. Overrides are `key.sub=value` with the value
parsed as YAML.
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

from core.errors import ConfigError


def param(default: Any = dataclasses.MISSING, *, help: str = "", ge: float | None = None,
          gt: float | None = None, le: float | None = None, shape: bool = False, hashed: bool = True,
          default_factory: Any = dataclasses.MISSING):
    """A config field with its help text and numeric bounds (checked at load time). `shape=True` marks
    a key that splits a stage's work into tasks without changing its outputs (the canonical order makes
    them byte-identical): it is left out of the stage's config hash, so changing it alone does not
    make a complete stage stale. `hashed=False` leaves a key out of every section hash: one that only a
    later stage reads (a catalogue source's blend weight) and that stage hashes through Stage.identity."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "shape": shape, "hashed": hashed}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class RunConfigBase:
    """The run's top-level keys. The full config class adds one field per stage section
    (pipeline.config.RunConfig); code below the orchestration sees it through this base."""

    run_dir: str = param("runs/demo", help="where every stage writes (on Jean Zay: under $SCRATCH)")
    verify_inputs: Literal["sampled", "full"] = param("sampled", help="how each task checks the upstream outputs it "
                                                       "reads against their records: sizes and sampled blocks, or "
                                                       "every byte")
    run_dir_mode: str = param("0750", help="permissions (octal) of the run directory and of what graine writes "
                              "in it: 0750 lets the group read and nobody else write (job pickles run as code); "
                              "0770 lets the group write too")
    seed: int = param(1234, ge=0, le=2**31 - 1, help="seed of every random choice (data order, weights)")

    def __post_init__(self) -> None:
        if not re.fullmatch(r"0?[0-7]{3}", self.run_dir_mode) or int(self.run_dir_mode, 8) & 0o700 != 0o700:
            raise ConfigError(f"run_dir_mode={self.run_dir_mode!r} must be octal permissions that give the owner "
                              "rwx, e.g. 0750 (group reads) or 0700 (private)")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def section_hash(self, *sections: str, extra: Any = None) -> str:
        """Hash of the named sections without their shape keys (and `extra`, JSON, when given): a stage's
        identity is the part of the config that decides its outputs."""
        data = {s: _without_shape(getattr(self, s)) for s in sections}
        if extra is not None:
            data["+"] = extra
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def shape(self, *sections: str) -> dict[str, Any]:
        """The shape keys of the named sections (`section.key: value`): how a stage's work is split."""
        return {f"{s}.{f.name}": getattr(getattr(self, s), f.name) for s in sections
                if dataclasses.is_dataclass(getattr(self, s))
                for f in dataclasses.fields(getattr(self, s)) if f.metadata.get("shape")}


def _without_shape(section: Any) -> Any:
    if not dataclasses.is_dataclass(section):
        return section
    return {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)
            if not f.metadata.get("shape") and f.metadata.get("hashed", True)}


def _plain(value: Any) -> Any:
    """A config value as JSON can hash it: dataclasses (alone or in lists, as clean.sources) as dicts,
    without their `hashed=False` keys."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.metadata.get("hashed", True)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def assemble(sections: dict[str, type]) -> type[RunConfigBase]:
    """The run's config class: the top-level keys plus one field per section, in the order given."""
    fields = [(name, cls, param(default_factory=cls)) for name, cls in sections.items()]
    cls = dataclasses.make_dataclass("RunConfig", fields, bases=(RunConfigBase,), kw_only=True)
    cls.__doc__ = "The whole run configuration: top-level keys and every stage's section."
    return cls


# -------------------------------------------------------------------------------------- loading
def load_yaml(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a YAML run file and apply `key.sub=value` overrides: the raw mapping, not yet typed."""
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
    return data


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


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf of a config class: the reference table of the README."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f"{prefix}{f.name}", repr(default), f.metadata.get("help", "")))
    return rows
