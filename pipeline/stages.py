"""The stage registry: the pipeline's order and where each stage's code lives."""

from __future__ import annotations

import importlib

from pipeline.errors import ConfigError, StageError
from pipeline.stage import Stage

# name -> (module exposing STAGE, make target). The order is the pipeline's order.
STAGE_MODULES: dict[str, tuple[str, str]] = {
    "clean": ("data_prep.clean", "clean-corpus"),
    "tokenizer": ("data_prep.tokenizer", "tokenizer"),
    "preprocess": ("data_prep.preprocess", "preprocess"),
    "pretrain": ("pipeline.train", "pretrain"),
    "export": ("checkpoints.export", "export"),
}
ORDER = list(STAGE_MODULES)

# Stages registered at run time (tests define small stages of their own).
_extra: dict[str, Stage] = {}


def register(stage: Stage) -> None:
    _extra[stage.name] = stage


def unregister(name: str) -> None:
    _extra.pop(name, None)


def registered() -> dict[str, Stage]:
    """Stages registered at run time; jobs carry them so that a job process sees the same registry."""
    return dict(_extra)


def known() -> list[str]:
    return ORDER + [n for n in _extra if n not in STAGE_MODULES]


def get(name: str) -> Stage:
    if name in _extra:
        return _extra[name]
    if name not in STAGE_MODULES:
        raise ConfigError(f"unknown stage '{name}'; valid stages: {', '.join(known())}, all")
    module, target = STAGE_MODULES[name]
    try:
        return importlib.import_module(module).STAGE
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise StageError(f"stage '{name}' is not implemented yet ({module} does not exist); "
                         f"`make {target}` will work once it lands") from None


def folder_of(name: str) -> str:
    """The folder a stage publishes under the run directory."""
    return get(name).folder


def downstream(name: str) -> list[str]:
    """Stages that read `name`, directly or not, in pipeline order."""
    out: list[str] = []
    for other in known():
        try:
            stage = get(other)
        except StageError:  # not implemented yet
            continue
        if name in stage.needs or any(n in out for n in stage.needs):
            out.append(other)
    return out
