"""`graine checkpoint dump STEP`: the optimizer's state per parameter, for others to study or continue.

    dumps/global_step<N>/
        fp32.safetensors        fp32 master weights            (numbered shards + an index beyond
        exp_avg.safetensors     Adam's first moment             `max_shard_gb`, as Hugging Face does)
        exp_avg_sq.safetensors  Adam's second moment
        dump.json               step, tokens, source checkpoint, optimizer (AdamW, its hyper-parameters,
                                Adam's step count, which parameters each group holds), and every
                                parameter's shape, dtype and group
        manifest.json           size and sha256 of every file (checkpoints.manifest)

Tensors are keyed by graine's parameter names (`h.0.mlp.dense_h_to_4h.weight`, ...) and have the
parameter's full shape, whatever the ZeRO stage and number of ranks that saved them: they are read
from the checkpoint's universal conversion (DeepSpeed's ds_to_universal), made on the fly in the
dump's temporary folder when `graine checkpoint universal` has not published one. Written as
`dumps/.tmp-global_step<N>/`, then renamed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from checkpoints import manifest, safe_load
from checkpoints.layout import TMP_PREFIX, read_state
from checkpoints.safetensors_io import write_sharded
from checkpoints.universal import (
    check_universal,
    manifest_sha256,
    optimizer_files,
    run_ds_to_universal,
    universal_of,
)
from core.errors import CheckpointError

log = logging.getLogger("graine.checkpoints")

STATES = ("fp32", "exp_avg", "exp_avg_sq")
INFO = "dump.json"


def parameter_groups(source: Path) -> list[dict[str, tuple[int, ...]]]:
    """Per optimizer group, {name: shape} in the optimizer's order (DeepSpeed's `param_shapes`)."""
    groups: list[dict[str, tuple[int, ...]]] = []
    for path in sorted(source.glob("*model_states.pt")):
        saved = safe_load.load(path, mmap=True).get("param_shapes") or []
        for i, shapes in enumerate(saved):
            if i == len(groups):
                groups.append({})
            groups[i].update({name: tuple(shape) for name, shape in shapes.items()})
    if not groups:
        raise CheckpointError(f"{source} records no parameter shapes (param_shapes); is it a DeepSpeed ZeRO checkpoint?")
    return groups


def _reader(zero: Path, shapes: dict[str, tuple[int, ...]]):
    def load(state: str, name: str) -> torch.Tensor:
        path = zero / name / f"{state}.pt"
        if not path.is_file():
            raise CheckpointError(f"the universal conversion has no {state} for {name} ({path}); the parameter "
                                  "had no optimizer state (frozen, or never given a gradient)")
        value = safe_load.load(path)
        tensor = value["param"] if isinstance(value, dict) else value
        if tensor.numel() != _numel(shapes[name]):
            raise CheckpointError(f"{path} has {tensor.numel()} values, the parameter {name} {shapes[name]}")
        return tensor.float().reshape(shapes[name])
    return load


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def dump(source: Path, out_root: Path, max_shard_gb: float = 2.0, force: bool = False) -> Path:
    """Dump the (verified) checkpoint folder `source` into `out_root/<its tag>/`; returns that folder."""
    source, out_root = Path(source), Path(out_root)
    final = out_root / source.name
    if not optimizer_files(source):
        raise CheckpointError(f"{source} was saved with train.zero_stage=0: DeepSpeed keeps its optimizer inside the "
                              "model states without a layout-independent form; dump a checkpoint of a ZeRO 1-3 run")
    if not force and manifest.verify(final, full=False) is None and _made_from(final, source):
        log.info("%s is up to date", final)
        return final
    # Before anything is written: the source is unpickled by ds_to_universal (weights_only=False), a
    # published conversion by graine (weights_only=True): refuse either early, naming file and global.
    universal = universal_of(source)
    safe_load.require_safe(source, *([universal] if check_universal(universal, source) is None else []))
    tmp = out_root / f"{TMP_PREFIX}{source.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if check_universal(universal, source) is not None:
            universal = tmp / ".universal"
            run_ds_to_universal(source, universal, 0)
        info = _write_states(source, universal / "zero", tmp, int(max_shard_gb * 1e9))
        shutil.rmtree(tmp / ".universal", ignore_errors=True)
        (tmp / INFO).write_text(json.dumps(info, indent=1))
        manifest.seal(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.replace_folder(tmp, final)
    log.info("dumped %d parameters of %s to %s", len(info["parameters"]), source, final)
    return final


def _made_from(dumped: Path, source: Path) -> bool:
    try:
        return json.loads((dumped / INFO).read_text())["source_manifest_sha256"] == manifest_sha256(source)
    except (OSError, ValueError, KeyError):
        return False


def _adam_step(step_file: Path, common: dict) -> float | None:
    """Adam's step count: per parameter after ZeRO 1/2 conversions, in the optimizer state after ZeRO-3."""
    if step_file.is_file():
        return float(safe_load.load(step_file))
    for group_state in ((common.get("optimizer_state_dict") or {}).get("state") or {}).values():
        if "step" in group_state:
            return float(group_state["step"])
    return None


def _write_states(source: Path, zero: Path, out: Path, max_bytes: int) -> dict:
    groups = parameter_groups(source)
    shapes = {name: shape for group in groups for name, shape in group.items()}
    names = list(shapes)
    load = _reader(zero, shapes)
    files = {}
    for state in STATES:
        files[state] = write_sharded(names, lambda n: 4 * _numel(shapes[n]),
                                     lambda shard, s=state: {n: load(s, n) for n in shard}, out, state, max_bytes)
    common = safe_load.load(zero / "optimizer_state.pt")
    hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    param_groups = [{**{k: g[k] for k in hyper if k in g}, "params": list(group)}
                    for g, group in zip(common.get("param_groups", []), groups)]
    adam_step = _adam_step(zero / names[0] / "step.pt", common)
    state = read_state(source)
    return {
        "step": state.step, "consumed_samples": state.consumed_samples,
        "consumed_tokens": state.consumed_tokens, "loss": state.loss,
        "source": str(source), "source_manifest_sha256": manifest_sha256(source),
        "saved_world_size": state.world_size, "zero_stage": common.get("zero_stage"),
        "optimizer": {"type": "AdamW", "adam_step": adam_step,
                      "param_groups": param_groups},
        "parameters": {n: {"shape": list(shapes[n]), "dtype": "float32",
                           "group": next(i for i, g in enumerate(groups) if n in g)} for n in names},
        "files": files,
    }
