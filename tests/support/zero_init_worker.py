"""One rank of a construction check (`python -m torch.distributed.run ... -m tests.support.zero_init_worker
SPEC`): builds a model with ZeRO-3 either through `training.engine.build_model` (zero.Init) or whole, as
graine did before (BloomModel in fp32 on every rank, partitioned by deepspeed.initialize), runs a few
optimizer steps on fixed tokens, and writes rank-local results (losses, peak RSS) to `SPEC.rank<N>.json`.

The spec: {"mode": "zero_init" | "whole", "overrides": [...], "steps": N}.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def main(spec_path: str) -> None:
    import torch.distributed as dist

    from pipeline.config import load_config
    from training.engine import build_engine, build_model, ensure_cpu_accelerator
    from training.model import BloomModel

    ensure_cpu_accelerator()
    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo")
    cfg = load_config(None, spec["overrides"])
    vocab, t = spec.get("vocab", 96), cfg.train
    baseline = peak_rss_bytes()  # torch, DeepSpeed and the process group, before any parameter exists
    if spec["mode"] == "zero_init":
        model = build_model(cfg.model, t, vocab, cfg.seed)
    else:
        model = BloomModel(cfg.model, vocab, seed=cfg.seed)
    built = peak_rss_bytes()
    result = {"baseline_rss": baseline, "built_rss": built, "parameters": model.num_parameters()}
    if spec.get("steps", 3) == 0:  # construction only
        finish(spec_path, rank, result)
    engine, _ = build_engine(model, t, world, t.global_batch_size)
    tokens = torch.Generator().manual_seed(7)
    losses = []
    for _ in range(spec.get("steps", 3)):
        ids = torch.randint(0, vocab, (world, t.micro_batch_size, t.seq_len + 1), generator=tokens)[rank]
        loss = engine(ids[:, :-1], labels=ids[:, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    finish(spec_path, rank, {**result, "losses": losses, "peak_rss": peak_rss_bytes()})


def finish(spec_path: str, rank: int, result: dict) -> None:
    Path(f"{spec_path}.rank{rank}.json").write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # gloo's shutdown race (DEEPSPEED_CPU.md): no interpreter teardown


if __name__ == "__main__":
    main(sys.argv[1])
