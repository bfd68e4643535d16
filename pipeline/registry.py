"""The stage registry: the pipeline's order, and where each stage's code lives.

Adding a stage is one module exposing `STAGE` (its steps and the config sections it owns) and one
line here; the run's config class, the CLI's stage choices and `graine status` all follow.
"""

from __future__ import annotations

import importlib

from core.errors import ConfigError
from core.stage import Stage

# name -> the module exposing its STAGE. The order is the pipeline's order.
STAGE_MODULES: dict[str, str] = {
    "clean": "data_prep.clean",
    "tokenizer": "data_prep.tokenizer",
    "preprocess": "data_prep.preprocess",
    "pretrain": "training.pretrain",
    "export": "training.export",
    "evaluate": "training.evaluate",
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


def builtin() -> list[Stage]:
    """The pipeline's own stages, in order."""
    return [importlib.import_module(module).STAGE for module in STAGE_MODULES.values()]


def known() -> list[str]:
    return ORDER + [n for n in _extra if n not in STAGE_MODULES]


def get(name: str) -> Stage:
    if name in _extra:
        return _extra[name]
    if name not in STAGE_MODULES:
        raise ConfigError(f"unknown stage '{name}'; valid stages: {', '.join(known())}, all")
    return importlib.import_module(STAGE_MODULES[name]).STAGE


def folder_of(name: str) -> str:
    """The folder a stage publishes under the run directory."""
    return get(name).folder


def downstream(name: str) -> list[str]:
    """Stages that read `name`, directly or not, in pipeline order."""
    out: list[str] = []
    for other in known():
        stage = get(other)
        if name in stage.needs or any(n in out for n in stage.needs):
            out.append(other)
    return out
