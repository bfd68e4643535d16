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
parameter's full shape, whatever the ZeRO stage and number of ranks that saved them: each file is written
as its tensors are read, a batch at a time (safetensors_io.READ_BYTES), from the partitions of every rank
(checkpoints.zero_stream), so memory holds one batch, not the optimizer nor a whole shard. Written as
`dumps/.tmp-global_step<N>/`, then renamed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from checkpoints import manifest, safe_load
from checkpoints.layout import TMP_PREFIX, read_state
from checkpoints.safetensors_io import write_sharded
from checkpoints.universal import manifest_sha256, optimizer_files
from checkpoints.zero_stream import STATES, ZeroCheckpoint
from core.errors import CheckpointError

log = logging.getLogger("graine.checkpoints")

INFO = "dump.json"


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
    # Before anything is written: a checkpoint holding a pickle that could run code is refused, naming
    # file and global (the partitions are then read with weights_only=True).
    safe_load.require_safe(source)
    tmp = out_root / f"{TMP_PREFIX}{source.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        info = _write_states(source, tmp, int(max_shard_gb * 1e9))
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


def _optimizer(zero: ZeroCheckpoint) -> tuple[list[dict], float | None]:
    """(hyper-parameters of each group, Adam's step count) from rank 0's optimizer file."""
    osd = safe_load.load(zero.files[0], mmap=True)["optimizer_state_dict"]
    base = osd.get("base_optimizer_state", osd.get("optimizer_state_dict")) or {}
    hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    groups = [{k: g[k] for k in hyper if k in g} for g in base.get("param_groups", [])]
    steps = [float(s["step"]) for s in (base.get("state") or {}).values() if "step" in s]
    return groups, (steps[0] if steps else None)


def _write_states(source: Path, out: Path, max_bytes: int) -> dict:
    import torch

    zero = ZeroCheckpoint(source)
    groups = zero.groups
    names = zero.names
    files = {}
    for state in STATES:
        files[state] = write_sharded(names, lambda n: (zero.shape(n), torch.float32),
                                     lambda shard, s=state: zero.read(shard, s), out, state, max_bytes,
                                     load_range=lambda n, a, b, s=state: zero.read_range(n, a, b, s))
    hyper, adam_step = _optimizer(zero)
    param_groups = [{**h, "params": list(group)} for h, group in zip(hyper, groups)]
    state = read_state(source)
    return {
        "step": state.step, "consumed_samples": state.consumed_samples,
        "consumed_tokens": state.consumed_tokens, "loss": state.loss,
        "source": str(source), "source_manifest_sha256": manifest_sha256(source),
        "saved_world_size": state.world_size, "zero_stage": zero.stage,
        "optimizer": {"type": "AdamW", "adam_step": adam_step,
                      "param_groups": param_groups},
        "parameters": {n: {"shape": list(zero.shape(n)), "dtype": "float32",
                           "group": next(i for i, g in enumerate(groups) if n in g)} for n in names},
        "files": files,
    }
