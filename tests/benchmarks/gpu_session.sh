#!/usr/bin/env bash
# One short session on a lent GPU machine (see README "Benchmarks"): the GPU-marked kernel tests, then
# graine's pretrain stage through DeepSpeed on the GPU, timed. Needs, beside the repository:
#   .whl/      deepspeed, hjson, submitit, pydantic(+core), zstandard wheels for the machine's Python
#   runs/demo  shards/ and tokenizer/ from `make preprocess` here (the GPU machine is offline)
# Usage there: bash tests/benchmarks/gpu_session.sh   (writes under $OUT when set)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, deepspeed; print('torch', torch.__version__, 'triton', triton.__version__, 'deepspeed', deepspeed.__version__)"

echo "== GPU-marked tests (kernels, model)"
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels tests/pipeline/test_model.py 2>&1 | tail -12

echo "== graine's process group on the GPU: CPU and CUDA tensors all-reduced (world 1, then 2 ranks on GPU 0)"
cat > /tmp/pg_check.py <<'PY'
import os, sys, torch, torch.distributed as dist
from training.distributed import Launch, init_process_group
rank, world = int(sys.argv[1]), int(sys.argv[2])
launch = Launch(rank, 0, world, world, 0, "127.0.0.1", int(sys.argv[3]), "check")  # every rank on GPU 0
try:
    device = init_process_group(launch, timeout_min=1)
    cpu, gpu = torch.ones(3), torch.ones(3, device=device)
    dist.all_reduce(cpu); dist.all_reduce(gpu); torch.cuda.synchronize()
    print(f"rank {rank}/{world}: backend {dist.get_backend()}, cpu {cpu.tolist()}, cuda {gpu.tolist()}", flush=True)
except Exception as exc:
    print(f"rank {rank}/{world}: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
os._exit(0)
PY
timeout 60 python3 /tmp/pg_check.py 0 1 29611 2>&1 | grep -v Warning | tail -2
(timeout 60 python3 /tmp/pg_check.py 0 2 29612 & timeout 60 python3 /tmp/pg_check.py 1 2 29612; wait) 2>&1 | grep "rank" | tail -4

seed_run() {  # a run directory holding the CPU-built shards and tokenizer
    mkdir -p "$1" && cp -r runs/demo/shards runs/demo/tokenizer "$1"/
}

echo "== pretrain, demo model, bf16, ZeRO 1, one GPU"
seed_run runs/gpu-demo
timeout 100 python3 -m pipeline.cli run pretrain -c configs/demo.yaml --executor inline run_dir=runs/gpu-demo \
    train.devices_per_node=1 train.precision=bf16 2>&1 | grep -E "train step|valid|done|error|Error" | tail -8

echo "== pretrain, BLOOM-560m shape, bf16, ZeRO 1, seq 2048, micro-batch 8, one GPU"
seed_run runs/gpu-560m
timeout 200 python3 -m pipeline.cli run pretrain -c configs/demo.yaml --executor inline run_dir=runs/gpu-560m \
    model.size=560m model.num_layers=0 model.hidden_size=0 model.num_heads=0 model.max_positions=2048 \
    train.devices_per_node=1 train.precision=bf16 train.zero_stage=1 train.seq_len=2048 \
    train.micro_batch_size=8 train.global_batch_size=8 train.lr=3e-4 train.warmup_tokens=0 \
    train.train_tokens=491520 train.decay_tokens=491520 train.log_interval=5 train.eval_interval=0 \
    checkpoint.interval=1000 2>&1 | grep -E "train step|saved|done|error|Error" | tail -10
cp runs/gpu-560m/logs/metrics.jsonl "$OUT/metrics-560m.jsonl" 2>/dev/null
cp runs/gpu-demo/logs/metrics.jsonl "$OUT/metrics-demo.jsonl" 2>/dev/null
echo "== done"
