"""Resource plan of a pretraining job, before it queues: parameters, memory per device, FLOPs, time,
GPU-hours and walltime-limited jobs. Pure functions of numbers (no torch): `graine plan` (pipeline/plan.py)
fills a `JobSpec` from the run config and the site profile and prints what `plan()` returns.

graine trains with data parallelism and DeepSpeed ZeRO only (no tensor or pipeline parallelism): every
rank runs the whole model on its micro-batch, and ZeRO partitions states over all `d` ranks of the job.

Memory per rank, bytes, for N parameters, d ranks, p = bytes of the training dtype (2 for bf16/fp16, 4
for fp32); the ZeRO paper's accounting (Rajbhandari et al. 2020), with DeepSpeed's own buffers beside it:
- weights     p·N, ZeRO-3: p·N/d
- gradients   p·N, ZeRO 2-3: p·N/d
- optimizer   Adam m and v in fp32 (8 bytes) plus an fp32 master copy (4 bytes) wherever one exists:
              always with bf16/fp16; with fp32 under ZeRO >= 1 too (DeepSpeed's ZeRO optimizer keeps its
              own flat fp32 partition even of fp32 weights); fp32 ZeRO-0 updates the weights in place.
              Divided by d under ZeRO >= 1.
- buffers     ZeRO-0: the flat gradient all-reduce bucket, min(N, 5e8)·p (DeepSpeed flattens the
              gradients to all-reduce them). ZeRO 1-2: the reduce bucket min(N, 5e8)·p and the reduced
              gradient partition cast to fp32 for the step, 4·N/d. ZeRO-3: the same, plus the parameters
              gathered at once: the largest of the embedding and two blocks (the one computing and the
              prefetched one), and one block's whole gradient before its reduce-scatter, all p bytes.
- activations per block, at micro-batch b, sequence s, width h, a heads (Korthikanti et al. 2022,
              "Reducing Activation Recomputation in Large Transformer Models", table 2: s·b·h·(34 + 5·a·s/h)
              bytes at 16 bits with dropout): 16·s·b·h elements of the activation dtype (QKV input, Q, K, V,
              attention output, the two LayerNorm inputs, MLP input, GeLU input and output), plus 2·s·b·h
              bytes of dropout masks when model.hidden_dropout > 0; attention that materialises the scores
              (model.attention=eager) adds 2.5·a·s²·b elements (softmax output, its dropout); SDPA (graine's
              choice on CPU) keeps its ALiBi float mask, a·s² elements; the flash-style kernels graine uses
              on GPU (Triton, flex_attention) keep none of the s² terms.
              With train.activation_checkpointing (graine checkpoints every block) a block keeps only its
              input, s·b·h elements, and one block's full activations exist during its recomputation.
- loss head   the chunked output projection + cross-entropy (kernels/cross_entropy.py) computes its
              gradients in the forward pass: an fp32 V x h weight-gradient accumulator and its copy in the
              training dtype, (4 + p)·V·h, plus one chunk of c = min(model.loss_chunk_tokens, b·s) tokens'
              logits: c·V·p with the Triton kernel (GPU: the gradient overwrites the logits), c·V·(2p + 8)
              with the torch one (CPU: an fp32 copy, its fp32 gradient and that cast back), plus the
              hidden states' gradient b·s·h·p.
- overhead    GPU: 2 GiB fixed (CUDA context ~0.5, NCCL communicators and buffers ~1, cuBLAS/Triton
              workspaces ~0.5) plus 5% of everything else for the caching allocator's fragmentation.
              CPU: 0.45 GiB per process (torch, DeepSpeed, gloo and the kernels' modules loaded: 0.42 GB
              measured by tests/pipeline/test_plan.py, plus what the first step's code pages add).
The total adds every term as if all were held at once (activations are in fact freed while the
gradients appear in the backward pass); against one CPU process's peak it is within 20%
(tests/pipeline/test_plan.py: 3-13% under the measured growth).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

GIB = 1024**3
DS_BUCKET = 500_000_000  # DeepSpeed's reduce_bucket_size / allreduce bucket default, elements
GPU_FIXED_GIB = 2.0
GPU_FRAGMENTATION = 0.05
CPU_FIXED_GIB = 0.45
# Each job of a walltime-limited chain loses this to starting (modules, imports, process group, the
# sample index mapped, the checkpoint loaded) beside the final save in the profile's signal_delay_s.
JOB_START_MIN = 10.0
# Default MFU: graine's pretrain stage through DeepSpeed measured on one H100 (tests/benchmarks/RESULTS-gpu.md,
# "BLOOM-560m shape ... bf16, ZeRO 1, sequence 2048 ... 20.4% MFU"). The bare model step reaches 46-55% in
# the same file; the engine path has not been profiled yet, so plans start from what the stage achieved.
DEFAULT_MFU = 0.204
DEFAULT_MFU_SOURCE = "graine's pretrain stage through DeepSpeed on one H100, 560m shape (tests/benchmarks/RESULTS-gpu.md)"
# Activation checkpointing recomputes each block's forward in the backward: 8 units of work for 6.
RECOMPUTE_FACTOR = 4 / 3


@dataclass(frozen=True)
class GpuModel:
    name: str
    memory_gib: float  # what the device reports (nvidia-smi's MiB / 1024)
    peak_tflops: dict[str, float]  # dense peak by train.precision; 0 = not supported


GPU_MODELS: dict[str, GpuModel] = {g.name: g for g in (
    GpuModel("V100-SXM2-16GB", 15.8, {"fp16": 125.0, "bf16": 0.0, "fp32": 15.7}),
    GpuModel("V100-SXM2-32GB", 31.7, {"fp16": 125.0, "bf16": 0.0, "fp32": 15.7}),
    GpuModel("A100-SXM4-40GB", 39.4, {"fp16": 312.0, "bf16": 312.0, "fp32": 19.5}),
    GpuModel("A100-SXM4-80GB", 80.0, {"fp16": 312.0, "bf16": 312.0, "fp32": 19.5}),
    GpuModel("H100-SXM5-80GB", 79.6, {"fp16": 989.0, "bf16": 989.0, "fp32": 67.0}),
    GpuModel("H100-PCIe-80GB", 79.6, {"fp16": 756.0, "bf16": 756.0, "fp32": 51.0}),
    GpuModel("H200-SXM-141GB", 139.8, {"fp16": 989.0, "bf16": 989.0, "fp32": 67.0}),
)}


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int  # padded rows of the embedding (tied to the output projection)

    def block_parameters(self) -> int:
        h = self.hidden_size
        # QKV 3h^2+3h, attention output h^2+h, MLP 4h^2+4h and 4h^2+h, two LayerNorms 4h.
        return 12 * h * h + 13 * h

    def parameters(self) -> int:
        """Exactly what BloomModel holds: embeddings, their LayerNorm, the blocks, the final LayerNorm."""
        h = self.hidden_size
        return self.vocab_size * h + 2 * h + self.num_layers * self.block_parameters() + 2 * h


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6·(12·L·h² + V·h) + 12·L·h·T (see
    BloomModel.flops_per_token, which returns this)."""
    L, h, V = shape.num_layers, shape.hidden_size, shape.vocab_size
    return 6.0 * (12 * L * h * h + V * h) + 12.0 * L * h * seq_len


@dataclass(frozen=True)
class JobSpec:
    """What the plan depends on; `pipeline.plan.job_spec` fills it from a run config and a profile."""

    shape: ModelShape
    seq_len: int
    micro_batch_size: int
    global_batch_size: int
    zero_stage: int
    precision: str  # fp32 | bf16 | fp16
    activation_checkpointing: bool
    num_nodes: int
    devices_per_node: int
    gpu: GpuModel | None  # None: CPU processes
    host_memory_gib: float = 0.0  # CPU: the node's memory, shared by its processes
    attention: str = "flash"  # flash (Triton, flex), sdpa (an ALiBi mask per block) or eager (the T x T scores)
    dropout: bool = False  # model.hidden_dropout > 0 keeps dropout masks
    loss_chunk_tokens: int = 4096
    fused_loss: bool = True  # the Triton cross-entropy (GPU) writes the gradient into the logits in place
    train_tokens: int = 0
    mfu: float = DEFAULT_MFU
    walltime_min: float = 0.0  # the profile's gpu QoS limit; 0 = none
    signal_delay_s: float = 0.0
    max_requeues: int = 0  # checkpoint.max_num_timeout

    @property
    def ranks(self) -> int:
        return self.num_nodes * self.devices_per_node


@dataclass(frozen=True)
class Memory:
    """Bytes per rank, by term."""

    weights: float
    gradients: float
    optimizer: float
    buffers: float
    activations: float
    loss_head: float
    overhead: float
    activations_other: float  # the activations with activation checkpointing flipped, for comparison

    @property
    def states(self) -> float:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        return self.states + self.buffers + self.activations + self.loss_head + self.overhead


@dataclass(frozen=True)
class Fix:
    changes: dict[str, object]  # config key -> new value
    total_gib: float

    def text(self) -> str:
        return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.changes.items())


@dataclass(frozen=True)
class Plan:
    spec: JobSpec
    parameters: int
    memory: Memory
    capacity_gib: float  # one device's memory (GPU) or the node's memory per process (CPU)
    flops_per_token: float
    tokens_per_s: float | None  # None on CPU: no peak to take an MFU of
    train_hours: float | None
    gpu_hours: float | None
    jobs: int | None
    job_hours: float | None  # training hours one walltime-limited job gives
    fixes: list[Fix] = field(default_factory=list)  # single-knob changes that fit, best first
    combined_fix: Fix | None = None  # when no single knob is enough
    batch_problem: str = ""

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.capacity_gib * GIB


# ------------------------------------------------------------------------------------------ memory
def _dtype_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def activation_bytes(spec: JobSpec, checkpointing: bool) -> float:
    """Activations one rank keeps for the backward pass (formula in the module's docstring)."""
    sh, p = spec.shape, _dtype_bytes(spec.precision)
    s, b, h, a = spec.seq_len, spec.micro_batch_size, sh.hidden_size, sh.num_heads
    sbh = s * b * h
    block = 16 * sbh * p + (2 * sbh if spec.dropout else 0)
    if spec.attention == "eager":
        block += 2.5 * a * s * s * b * p
    elif spec.attention == "sdpa":
        block += a * s * s * p  # the ALiBi bias, a float mask shared by the micro-batch, saved for backward
    if checkpointing:
        return sh.num_layers * sbh * p + block
    return sh.num_layers * block + 2 * sbh * p  # + the embedding LayerNorm's input and the final LayerNorm's


def memory(spec: JobSpec) -> Memory:
    sh, p, d, n = spec.shape, _dtype_bytes(spec.precision), spec.ranks, spec.shape.parameters()
    z = spec.zero_stage
    weights = p * n / (d if z == 3 else 1)
    gradients = p * n / (d if z >= 2 else 1)
    master = 4 if (spec.precision != "fp32" or z >= 1) else 0
    optimizer = (8 + master) * n / (d if z >= 1 else 1)
    bucket = min(n, DS_BUCKET) * p
    if z == 0:
        buffers = bucket
    else:
        buffers = bucket + 4 * n / d
        if z == 3:
            block = sh.block_parameters()
            buffers += (max(sh.vocab_size * sh.hidden_size, 2 * block) + block) * p
    tokens = spec.micro_batch_size * spec.seq_len
    chunk = min(spec.loss_chunk_tokens, tokens) * sh.vocab_size * (p if spec.fused_loss else 2 * p + 8)
    loss_head = (4 + p) * sh.vocab_size * sh.hidden_size + chunk + tokens * sh.hidden_size * p
    acts = activation_bytes(spec, spec.activation_checkpointing)
    other = activation_bytes(spec, not spec.activation_checkpointing)
    dynamic = weights + gradients + optimizer + buffers + acts + loss_head
    overhead = (GPU_FIXED_GIB * GIB + GPU_FRAGMENTATION * dynamic) if spec.gpu else CPU_FIXED_GIB * GIB
    return Memory(weights, gradients, optimizer, buffers, acts, loss_head, overhead, other)


def capacity_gib(spec: JobSpec) -> float:
    if spec.gpu:
        return spec.gpu.memory_gib
    return spec.host_memory_gib / max(spec.devices_per_node, 1)


# ------------------------------------------------------------------------------------------- time
def peak_tflops(spec: JobSpec) -> float:
    return spec.gpu.peak_tflops.get(spec.precision, 0.0) if spec.gpu else 0.0


def throughput(spec: JobSpec) -> float | None:
    """Tokens/s of the whole job at `spec.mfu` (model FLOPs; recomputation is extra work, not MFU)."""
    peak = peak_tflops(spec)
    if not peak:
        return None
    rate = spec.ranks * peak * 1e12 * spec.mfu / flops_per_token(spec.shape, spec.seq_len)
    return rate / RECOMPUTE_FACTOR if spec.activation_checkpointing else rate


def job_hours(spec: JobSpec) -> float | None:
    """Training time one job of the chain gives: the walltime less its start and its final save."""
    if not spec.walltime_min:
        return None
    return max(spec.walltime_min - JOB_START_MIN - spec.signal_delay_s / 60, 1.0) / 60


# ------------------------------------------------------------------------------------------- plan
def plan(spec: JobSpec, search: bool = True) -> Plan:
    mem = memory(spec)
    rate = throughput(spec)
    hours = spec.train_tokens / rate / 3600 if rate else None
    per_job = job_hours(spec)
    jobs = (max(1, math.ceil(hours / per_job)) if per_job else 1) if hours is not None else None
    gpu_hours = None
    if hours is not None:
        lost = (JOB_START_MIN + spec.signal_delay_s / 60) / 60 * (jobs or 1)
        gpu_hours = spec.ranks * (hours + lost)
    result = Plan(spec, spec.shape.parameters(), mem, capacity_gib(spec), flops_per_token(spec.shape, spec.seq_len),
                  rate, hours, gpu_hours, jobs, per_job, batch_problem=batch_problem(spec))
    if search and not result.fits:
        fixes, combined = find_fixes(spec)
        result = dataclasses.replace(result, fixes=fixes, combined_fix=combined)
    return result


def batch_problem(spec: JobSpec) -> str:
    """The global batch must be a whole number of micro-batches on every rank (training.schedule)."""
    step = spec.micro_batch_size * spec.ranks
    if spec.global_batch_size % step == 0:
        return ""
    lower = spec.global_batch_size // step * step
    options = [v for v in (lower, lower + step) if v > 0]
    return (f"train.global_batch_size={spec.global_batch_size} is not a multiple of train.micro_batch_size x ranks "
            f"= {spec.micro_batch_size} x {spec.ranks} = {step}; the stage refuses it: set train.global_batch_size="
            f"{' or '.join(map(str, options))}, or a rank count that divides it")


def _fits(spec: JobSpec) -> tuple[bool, float]:
    total = memory(spec).total
    return total <= capacity_gib(spec) * GIB, total / GIB


def find_fixes(spec: JobSpec) -> tuple[list[Fix], Fix | None]:
    """Single config changes that make `spec` fit, in order of preference (the smallest change first:
    a higher ZeRO stage costs communication only, a smaller micro-batch some efficiency, checkpointing a
    third more compute, more nodes more GPUs); and, when none alone does, the combination of the fewest
    knobs that does (None if even ZeRO-3 with checkpointing and micro-batch 1 on 64x the nodes do not)."""
    singles = []
    for z in range(spec.zero_stage + 1, 4):
        ok, gib = _fits(dataclasses.replace(spec, zero_stage=z))
        if ok:
            singles.append(Fix({"train.zero_stage": z}, gib))
            break
    for m in _micro_batches(spec):
        ok, gib = _fits(dataclasses.replace(spec, micro_batch_size=m))
        if ok:
            singles.append(Fix({"train.micro_batch_size": m}, gib))
            break
    if not spec.activation_checkpointing:
        ok, gib = _fits(dataclasses.replace(spec, activation_checkpointing=True))
        if ok:
            singles.append(Fix({"train.activation_checkpointing": True}, gib))
    nodes = _fewest_nodes(spec)
    if nodes:
        singles.append(nodes)
    if singles:
        return singles, None
    return [], _combined(spec)


def _micro_batches(spec: JobSpec) -> list[int]:
    """Smaller micro-batches that still divide the global batch, largest first."""
    return [m for m in range(spec.micro_batch_size - 1, 0, -1) if spec.global_batch_size % m == 0]


def _fewest_nodes(spec: JobSpec, limit: int = 64) -> Fix | None:
    if spec.zero_stage == 0:
        return None  # nothing is partitioned: more ranks hold the same each
    for n in range(spec.num_nodes + 1, spec.num_nodes * limit + 1):
        ok, gib = _fits(dataclasses.replace(spec, num_nodes=n))
        if ok:
            return Fix({"train.num_nodes": n}, gib)
    return None


def _combined(spec: JobSpec) -> Fix | None:
    best: tuple[tuple, Fix] | None = None
    stages = range(spec.zero_stage, 4)
    for z in stages:
        for ac in sorted({spec.activation_checkpointing, True}):
            for m in [spec.micro_batch_size, *_micro_batches(spec)]:
                trial = dataclasses.replace(spec, zero_stage=z, activation_checkpointing=ac, micro_batch_size=m)
                ok, gib = _fits(trial)
                if not ok:
                    continue
                changes = {k: v for k, v, old in (("train.zero_stage", z, spec.zero_stage),
                                                  ("train.activation_checkpointing", ac, spec.activation_checkpointing),
                                                  ("train.micro_batch_size", m, spec.micro_batch_size)) if v != old}
                key = (len(changes), z, ac, -m)
                if best is None or key < best[0]:
                    best = (key, Fix(changes, gib))
    if best:
        return best[1]
    most = dataclasses.replace(spec, zero_stage=3, activation_checkpointing=True, micro_batch_size=1)
    nodes = _fewest_nodes(most)
    if nodes:
        return Fix({"train.zero_stage": 3, "train.activation_checkpointing": True, "train.micro_batch_size": 1,
                    **nodes.changes}, nodes.total_gib)
    return None
