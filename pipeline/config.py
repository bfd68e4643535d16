"""The run's config class, assembled from the stages' sections, and `load_config`.

Each stage module declares the sections it owns (`Stage.config`); this module adds the cluster
section (the orchestration's own) and builds `RunConfig` in pipeline order from the registry, so a
new stage brings its keys with it. Loading validates types and ranges, then each section's own
checks, then each stage's checks across its sections: a bad config fails here, before any job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import assemble, build, load_yaml, param
from pipeline import registry


def _profiles() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "slurm" / "profiles").glob("*.yaml"))


@dataclass(kw_only=True)
class ClusterConfig:
    profile: str = param("local", help=f"site profile in slurm/profiles ({', '.join(_profiles())})")
    account: str = param("", help="Slurm account, e.g. abc@h100 on Jean Zay")
    slurm: dict[str, Any] = param(default_factory=dict, help="Slurm parameters applied to every job")
    cpu: dict[str, Any] = param(default_factory=dict, help="Slurm parameters for CPU (data) jobs")
    gpu: dict[str, Any] = param(default_factory=dict, help="Slurm parameters for GPU (training) jobs")


def _sections() -> dict[str, type]:
    sections: dict[str, type] = {}
    for stage in registry.builtin():
        for name, cls in stage.config.items():
            if name in sections and sections[name] is not cls:
                raise TypeError(f"config section {name!r} is declared by two stages")  # a bug in the registry
            sections[name] = cls
    return {**sections, "cluster": ClusterConfig}


RunConfig = assemble(_sections())
RunConfig.__module__ = __name__  # pickled and documented as pipeline.config.RunConfig


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run file, apply `key.sub=value` overrides, build and validate the whole config."""
    cfg = build(RunConfig, load_yaml(path, overrides), "")
    for stage in registry.builtin():
        if stage.validate is not None:
            stage.validate(cfg)
    return cfg

