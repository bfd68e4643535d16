"""Checkpoint benchmark: save and load time and GB/s, and step time with and without a save, on CPU.

Run: .venv/bin/python tests/benchmarks/bench_checkpoint.py [--models demo,1b3] [--steps 3] [--dir /tmp]
One process (world size 1), DeepSpeed ZeRO-1, fp32, graine's Checkpointer (so "save" includes the RNG
files, fsync, sha256 of every file, the manifest and the atomic rename; "load" includes verifying every
checksum before DeepSpeed reads the files). Models:
    demo   configs/demo.yaml's model (2 x 64, vocabulary 8000)
    1b3    6 layers x 2048, vocabulary 8000: 319M parameters, 1.28 GB of fp32 weights (checkpoint ~5 GB:
           weights + fp32 master + two Adam moments)
    560m   BLOOM-560m with BLOOM's 250,880-row vocabulary (2.2 GB of weights, checkpoint ~9 GB, ~14 GB RAM)
Loads read what was just written: unless the page cache can be dropped (root), they measure memory, not disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import torch  # noqa: E402

from checkpoints.checkpointer import Checkpointer  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from training.engine import build_engine  # noqa: E402
from training.model import BloomModel  # noqa: E402

MODELS = {
    "demo": ["model.size=demo", "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4"],
    "1b3": ["model.size=custom", "model.num_layers=6", "model.hidden_size=2048", "model.num_heads=16"],
    "560m": ["model.size=560m", "model.vocab_size=250880"],
}
VOCAB = 8000


def init_single_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def drop_page_cache() -> bool:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench_model(name: str, steps: int, root: Path) -> dict:
    cfg = load_config(None, [*MODELS[name], "train.seq_len=128", "train.micro_batch_size=1",
                             "train.global_batch_size=1", "train.zero_stage=1", "model.kernels=torch"])
    torch.manual_seed(0)
    model = BloomModel(cfg.model, VOCAB)
    params = sum(p.numel() for p in model.parameters())
    engine, _ = build_engine(model, cfg.train, 1, 1)
    ids = torch.randint(0, VOCAB, (1, cfg.train.seq_len))

    def step() -> float:
        t = time.perf_counter()
        loss = engine(ids, labels=ids)
        engine.backward(loss)
        engine.step()
        return time.perf_counter() - t

    step()  # warm-up: optimizer state allocated, kernels chosen
    times = [step() for _ in range(steps)]
    plain = sorted(times)[steps // 2]
    ckpt = Checkpointer(root / name / "checkpoints", keep_last=2)
    t = time.perf_counter()
    train_time = step()
    t_save = time.perf_counter()
    folder = ckpt.save(engine, 1, {"step": 1, "consumed_samples": 1, "consumed_tokens": 128}, cfg.to_yaml())
    save = time.perf_counter() - t_save
    step_with_save = time.perf_counter() - t
    size = folder_bytes(folder)

    t = time.perf_counter()
    engine.save_checkpoint(str(root / name / "plain"), tag="global_step1", save_latest=False)
    ds_save = time.perf_counter() - t
    cold = drop_page_cache()
    t = time.perf_counter()
    ckpt.load(engine)
    load = time.perf_counter() - t
    drop_page_cache()
    t = time.perf_counter()
    engine.load_checkpoint(str(root / name / "plain"), tag="global_step1", load_lr_scheduler_states=False)
    ds_load = time.perf_counter() - t
    engine = model = None  # free before the next model
    shutil.rmtree(root / name, ignore_errors=True)
    return {"model": name, "params": params, "bytes": size, "save": save, "ds_save": ds_save, "load": load,
            "ds_load": ds_load, "step": plain, "step_with_save": step_with_save, "train": train_time, "cold": cold, "times": times}


def table(rows: list[dict]) -> str:
    head = (f"{'model':<6} {'params':>8} {'ckpt GB':>8} | {'save s':>7} {'GB/s':>6} {'DS-only s':>9} | "
            f"{'load s':>7} {'GB/s':>6} {'DS-only s':>9} | {'step s':>7} {'step+save s':>11} {'x':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        gb = r["bytes"] / 1e9
        lines.append(f"{r['model']:<6} {r['params'] / 1e6:>7.1f}M {gb:>8.3f} | {r['save']:>7.2f} {gb / r['save']:>6.2f} "
                     f"{r['ds_save']:>9.2f} | {r['load']:>7.2f} {gb / r['load']:>6.2f} {r['ds_load']:>9.2f} | "
                     f"{r['step']:>7.3f} {r['step_with_save']:>11.2f} {r['step_with_save'] / r['step']:>6.1f}")
    cold = all(r["cold"] for r in rows)
    lines.append(f"save = graine's Checkpointer (DeepSpeed files + RNG + fsync + sha256 + manifest + rename); DS-only = "
                 f"engine.save_checkpoint / load_checkpoint alone; load = checksum verification + DeepSpeed load; "
                 f"page cache {'dropped before each load' if cold else 'NOT dropped (not root): loads read memory'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="demo,1b3", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--steps", type=int, default=3, help="steps timed without a save (median)")
    p.add_argument("--dir", default=None, help="where checkpoints are written (default: a temporary folder)")
    args = p.parse_args(argv)
    init_single_process()
    import logging

    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="graine-bench-ckpt-") as tmp:
        for name in args.models.split(","):
            rows.append(bench_model(name, args.steps, Path(tmp)))
            print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, torch {torch.__version__}, disk {args.dir or tempfile.gettempdir()}")
    print(table(rows))
    sys.stdout.flush()
    os._exit(0)  # gloo's shutdown race (DEEPSPEED_CPU.md)


if __name__ == "__main__":
    raise SystemExit(main())
