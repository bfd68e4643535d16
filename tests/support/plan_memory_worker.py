"""One process measuring what `graine plan` predicts for it (`python -m torch.distributed.run
--nproc_per_node=1 -m tests.support.plan_memory_worker SPEC`): builds the model and the DeepSpeed engine of
the spec's config the way the pretrain stage does (training.engine), runs `steps` optimizer steps on
random tokens, and writes the peak RSS before construction and after each phase to `SPEC.out.json`.

DeepSpeed, its communication extension, the process group and the model's modules (a model on the meta
device) are loaded before the baseline, so the growth over it is the model's, the optimizer's and
DeepSpeed's buffers', what the plan predicts beside its fixed per-process overhead.
On a GPU (spec "device": "cuda") the same runs on cuda:0 under NCCL and the figures are
torch.cuda.max_memory_allocated's, the baseline torch.cuda.memory_allocated before construction.
The spec: {"overrides": [...], "steps": N, "vocab": V, "device": "cpu" | "cuda"}.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(spec_path: str) -> None:
    import torch
    import torch.distributed as dist

    from training.engine import build_engine, build_model, ensure_cpu_accelerator
    from training.model import BloomModel

    ensure_cpu_accelerator()
    import deepspeed  # noqa: F401  (loaded before the baseline: its import is not the plan's to predict)

    from pipeline.config import load_config

    spec = json.loads(Path(spec_path).read_text())
    cuda = spec.get("device", "cpu") == "cuda"
    if cuda:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda:0" if cuda else "cpu")
    dist.all_reduce(torch.zeros(1, device=device))  # the communication path set up before the baseline
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peak = torch.cuda.max_memory_allocated if cuda else peak_rss_bytes
    now = torch.cuda.memory_allocated if cuda else rss_bytes
    cfg = load_config(None, spec["overrides"])
    vocab, t = spec["vocab"], cfg.train
    with torch.device("meta"):  # the kernels' modules (Triton's interpreter among them) load here, not below
        BloomModel(cfg.model, vocab, init=False)
    held = {"baseline": now()}
    phases = {"baseline": held["baseline"] if cuda else peak()}
    model = build_model(cfg.model, t, vocab, cfg.seed)
    phases["built"], held["built"] = peak(), now()
    engine, _ = build_engine(model, t, 1, t.global_batch_size)
    phases["engine"], held["engine"] = peak(), now()
    tokens = torch.Generator().manual_seed(7)
    for step in range(spec["steps"]):
        ids = torch.randint(0, vocab, (t.micro_batch_size, t.seq_len + 1), generator=tokens).to(device)
        loss = engine(ids[:, :-1], labels=ids[:, 1:])
        engine.backward(loss)
        engine.step()
        phases[f"step{step + 1}"], held[f"step{step + 1}"] = peak(), now()
    out = {"phases": phases, "held": held, "parameters": model.num_parameters(), "loss": loss.item()}
    Path(f"{spec_path}.out.json").write_text(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # gloo's shutdown race (DEEPSPEED_CPU.md): no interpreter teardown


if __name__ == "__main__":
    main(sys.argv[1])
