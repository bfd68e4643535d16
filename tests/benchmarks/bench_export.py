"""Export benchmark: peak memory of `graine run export` on a multi-GB ZeRO checkpoint, against
DeepSpeed's whole-model consolidation.

Run: .venv/bin/python tests/benchmarks/bench_export.py [--layers 6] [--hidden 2048] [--shard-gb 0.25,2] [--dir /tmp]
A real run (generated corpus -> clean -> tokenizer -> preprocess, then one pretrain step on 2 gloo ranks
under ZeRO-1, fp32) saves a checkpoint of a model of `layers` x `hidden` (6 x 2048: 319M parameters,
1.28 GB of fp32 master weights; ~5 GB on disk with the weights and both Adam moments). Each reader then
runs in a fresh process, and its peak resident memory (VmHWM, file-backed pages of its memory maps
included) is read at its end:
    graine export     training.export.export_checkpoint: the fp32 masters read from the memory-mapped
                      partitions of both ranks a read batch (128 MB) at a time as each fp32 safetensors
                      file (of at most --shard-gb) is written
    graine dump       `graine checkpoint dump`'s writer: fp32 masters and both Adam moments (3x the
                      export's bytes), read the same way, in 2 GB files
    DeepSpeed whole   deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint, then
                      safetensors.torch.save_file of the whole state dict (what an export without
                      streaming does)
    imports only      python with torch, deepspeed, transformers' BloomConfig and graine's export imported:
                      the floor under both
Each row prints the peak, the peak over the fp32 state and the time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The readers, each run as `python -c` in a fresh process; the last line printed is its JSON result.
PEAK = """
def peak_bytes():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
"""
READERS = {
    "graine export": PEAK + """
import json, sys, time
from pathlib import Path
from training.export import ExportConfig, export_checkpoint
folder, tokenizer, out, shard_gb = sys.argv[1:5]
t = time.perf_counter()
record = export_checkpoint(Path(folder), Path(tokenizer), Path(out), ExportConfig(max_shard_gb=float(shard_gb)))
print(json.dumps({"peak": peak_bytes(), "seconds": time.perf_counter() - t, "files": len(record["weights"])}))
""",
    "graine dump": PEAK + """
import json, sys, time
from pathlib import Path
from checkpoints.dump import _write_states
folder, tokenizer, out, shard_gb = sys.argv[1:5]
Path(out).mkdir(parents=True)
t = time.perf_counter()
info = _write_states(Path(folder), Path(out), int(float(shard_gb) * 1e9))
print(json.dumps({"peak": peak_bytes(), "seconds": time.perf_counter() - t,
                  "files": sum(len(f) for f in info["files"].values())}))
""",
    "DeepSpeed whole": PEAK + """
import json, sys, time
from pathlib import Path
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import save_file
folder, tokenizer, out, shard_gb = sys.argv[1:5]
t = time.perf_counter()
state = get_fp32_state_dict_from_zero_checkpoint(str(Path(folder).parent), tag=Path(folder).name)
Path(out).mkdir(parents=True, exist_ok=True)
save_file({k: v.contiguous() for k, v in state.items()}, str(Path(out) / "model.safetensors"))
print(json.dumps({"peak": peak_bytes(), "seconds": time.perf_counter() - t, "files": 1}))
""",
    "imports only": PEAK + """
import json
import deepspeed.utils.zero_to_fp32, safetensors.torch, training.export
from training.hf_compat import import_transformers
import_transformers()
from transformers import BloomConfig  # the export writes config.json with it
print(json.dumps({"peak": peak_bytes(), "seconds": 0.0, "files": 0}))
""",
}


def make_checkpoint(root: Path, layers: int, hidden: int) -> tuple[Path, Path, int]:
    """A real 2-rank ZeRO-1 checkpoint after one step; returns (its folder, the tokenizer, parameters)."""
    from pipeline import runner
    from tests.support import tiny_run

    run_dir, corpus = root / "run", root / "corpus"
    tiny_run.prepare(run_dir, corpus)
    shape = [f"model.num_layers={layers}", f"model.hidden_size={hidden}", f"model.num_heads={hidden // 128}"]
    cfg = tiny_run.config(run_dir, corpus, *shape, "train.zero_stage=1", "train.precision=fp32",
                          "train.train_tokens=128", "train.decay_tokens=128", "train.warmup_tokens=0",
                          "train.eval_interval=0", "checkpoint.interval=1")
    runner.run(cfg, ["pretrain"], executor="local")
    folder = run_dir / "checkpoints" / "global_step1"
    state = json.loads((folder / "graine_state.json").read_text())
    assert state["world_size"] == 2, state
    from checkpoints.zero_stream import ZeroCheckpoint

    reader = ZeroCheckpoint(folder)
    return folder, run_dir / "tokenizer", sum(math.prod(reader.shape(n)) for n in reader.names)


def run_reader(name: str, folder: Path, tokenizer: Path, out: Path, shard_gb: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-c", READERS[name], str(folder), str(tokenizer), str(out), str(shard_gb)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--shard-gb", default="0.25,2", help="export.max_shard_gb of graine's export, comma-separated")
    p.add_argument("--dir", default=None, help="where the run is written (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="graine-bench-export-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        folder, tokenizer, params = make_checkpoint(root, args.layers, args.hidden)
        on_disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"checkpoint: {params / 1e6:.0f}M parameters, {on_disk / 1e9:.2f} GB on disk, 2 ranks ZeRO-1 "
              f"(made in {time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
        fp32 = params * 4
        rows = []
        runs = [("graine export", float(gb)) for gb in args.shard_gb.split(",")] + [
            ("graine dump", 2.0), ("DeepSpeed whole", 0.0), ("imports only", 0.0)]
        for name, shard_gb in runs:
            got = run_reader(name, folder, tokenizer, root / f"out-{name.replace(' ', '-')}-{shard_gb}", shard_gb)
            rows.append((f"{name} {shard_gb:g} GB" if name == "graine export" else name, got))
            print(f"{rows[-1][0]}: done", file=sys.stderr, flush=True)
    print(f"{params / 1e6:.0f}M parameters, fp32 state {fp32 / 1e9:.2f} GB, checkpoint {on_disk / 1e9:.2f} GB "
          "(2 ranks, ZeRO-1); graine's export in fp32 shards of the size named")
    head = f"{'reader':<22} {'peak RSS GB':>11} {'/ fp32 state':>12} {'seconds':>8} {'files':>6}"
    print(head)
    print("-" * len(head))
    for name, got in rows:
        print(f"{name:<22} {got['peak'] / 1e9:>11.2f} {got['peak'] / fp32:>12.2f} {got['seconds']:>8.1f} {got['files']:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
