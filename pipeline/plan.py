"""`graine plan`: the pretrain stage's resource plan on the configured site profile, as text, and the
check that stops `graine run pretrain --executor slurm` from queueing a job that cannot fit.

The model of memory, FLOPs and time is training/plan.py; this module fills its `JobSpec` from the run
config (model shape, batch, ZeRO stage, precision, nodes) and the profile (GPUs per node and their model,
the gpu QoS walltime), and formats the result.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from core.errors import ConfigError
from pipeline.config import RunConfig
from pipeline.slurm import training_allocation
from training import plan as model_plan
from training.plan import GIB, GPU_MODELS, JobSpec, Plan


def vocab_source(cfg: RunConfig) -> tuple[int, str]:
    """The tokenizer's vocabulary the embedding is padded from, and where it came from."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    published = Path(cfg.run_dir) / "tokenizer"
    if (published / "tokenizer.model").is_file() or (published / "tokenizer.json").is_file():
        from data_prep.tokenizer import tokenizer_info

        return tokenizer_info(published).vocab_size, f"the run's tokenizer ({published})"
    if cfg.tokenizer.from_pretrained:
        raise ConfigError(f"the vocabulary of tokenizer.from_pretrained={cfg.tokenizer.from_pretrained} is not known "
                          "before the tokenizer stage has run; set model.vocab_size (BLOOM's: 250880) to plan")
    return cfg.tokenizer.vocab_size, "tokenizer.vocab_size"


def host_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def job_spec(cfg: RunConfig, mfu: float | None = None, gpu: str | None = None) -> JobSpec:
    """The plan's inputs from the run config and its profile; `gpu` overrides the profile's gpu_model."""
    alloc = training_allocation(cfg)
    model = None
    if alloc.gpus_per_node:
        name = gpu or alloc.gpu_model
        if name not in GPU_MODELS:
            raise ConfigError(f"GPU model {name!r} (cluster.profile={cfg.cluster.profile}: gpu_model, or --gpu) is not "
                              f"one graine knows; valid models: {', '.join(GPU_MODELS)} (training/plan.py GPU_MODELS)")
        model = GPU_MODELS[name]
    elif gpu:
        raise ConfigError(f"--gpu {gpu}: cluster.profile={cfg.cluster.profile} has no GPUs; pick a GPU profile")
    if mfu is not None and not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {mfu} must be a fraction in (0, 1], e.g. 0.4 for 40%")
    vocab, _ = vocab_source(cfg)
    m, t = cfg.model, cfg.train
    attention = m.attention if m.attention in ("eager", "sdpa") else "flash" if model else "sdpa"
    return JobSpec(
        shape=model_plan.ModelShape(m.num_layers, m.hidden_size, m.num_heads, m.padded_vocab_size(vocab)),
        seq_len=t.seq_len, micro_batch_size=t.micro_batch_size, global_batch_size=t.global_batch_size,
        zero_stage=t.zero_stage, precision=t.precision, activation_checkpointing=t.activation_checkpointing,
        num_nodes=t.num_nodes, devices_per_node=alloc.gpus_per_node or t.devices_per_node, gpu=model,
        host_memory_gib=0.0 if model else host_memory_gib(), attention=attention,
        dropout=m.hidden_dropout > 0, loss_chunk_tokens=m.loss_chunk_tokens, fused_loss=model is not None, train_tokens=t.train_tokens,
        mfu=model_plan.DEFAULT_MFU if mfu is None else mfu, walltime_min=alloc.walltime_min,
        signal_delay_s=alloc.signal_delay_s, max_requeues=cfg.checkpoint.max_num_timeout)


def make_plan(cfg: RunConfig, mfu: float | None = None, gpu: str | None = None) -> Plan:
    return model_plan.plan(job_spec(cfg, mfu, gpu))


# ---------------------------------------------------------------------------------------- refusal
def refusal(cfg: RunConfig) -> str:
    """Why the pretrain job would not fit its GPUs ("" when it fits, or runs on CPUs: a CPU plan
    is printed by `graine plan` but never stops a run)."""
    if not training_allocation(cfg).gpus_per_node:
        return ""
    result = make_plan(cfg)
    return "" if result.fits else verdict(result)


# ----------------------------------------------------------------------------------------- format
def _gib(x: float) -> str:
    return f"{x / GIB:,.2f}"


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def verdict(p: Plan) -> str:
    where = (f"{p.spec.gpu.name} ({p.capacity_gib:.1f} GiB)" if p.spec.gpu
             else f"this machine's memory per process ({p.capacity_gib:.1f} GiB)")
    total = p.memory.total / GIB
    if p.fits:
        return f"FITS: {total:,.1f} GiB per rank of {where}"
    text = f"DOES NOT FIT: {total:,.1f} GiB per rank > {where}"
    if p.fixes:
        best, *others = p.fixes
        text += f"; smallest change: {best.text()} ({best.total_gib:,.1f} GiB)"
        if others:
            text += "; each of these alone fits too: " + ", ".join(f"{f.text()} ({f.total_gib:,.1f} GiB)" for f in others)
    elif p.combined_fix:
        text += (f"; no single knob is enough, the smallest combination: {p.combined_fix.text()} "
                 f"({p.combined_fix.total_gib:,.1f} GiB)")
    else:
        text += ("; nothing fits with data parallelism and ZeRO alone (ZeRO-3, activation checkpointing, micro-batch "
                 "1, 64x the nodes): what no rank count divides (activations, gathered layers, the loss head) is too "
                 "large for one device; a smaller model or a larger GPU")
    return text


def _memory_table(p: Plan) -> list[str]:
    spec = p.spec
    stages = [model_plan.memory(dataclasses.replace(spec, zero_stage=z)) for z in range(4)]
    dtype = "fp32" if spec.precision == "fp32" else spec.precision
    master = "fp32 master + Adam m, v" if spec.precision != "fp32" else "Adam m, v (+ fp32 master under ZeRO)"
    rows = [("weights (" + dtype + ")", "weights"), ("gradients (" + dtype + ")", "gradients"),
            ("optimizer: " + master, "optimizer"), ("DeepSpeed buffers (buckets, gathers)", "buffers"),
            ("activations" + (" (checkpointed)" if spec.activation_checkpointing else ""), "activations"),
            ("loss head (chunked projection + CE)", "loss_head"),
            ("overhead (CUDA, NCCL, fragmentation)" if spec.gpu else "overhead (torch, DeepSpeed, gloo)", "overhead")]
    head = "".join(f"{'ZeRO-' + str(z) + ('*' if z == spec.zero_stage else ''):>10}" for z in range(4))
    title = f"memory per {'GPU' if spec.gpu else 'process'}, GiB (* = train.zero_stage)"
    width = max(len(title), *(len(label) + 2 for label, _ in rows)) + 1
    lines = [f"{title:<{width}}{head}"]
    for label, attr in rows:
        lines.append(f"  {label:<{width - 2}}" + "".join(f"{_gib(getattr(m, attr)):>10}" for m in stages))
    lines.append(f"  {'total':<{width - 2}}" + "".join(f"{_gib(m.total):>10}" for m in stages))
    fits = ["fits" if m.total <= p.capacity_gib * GIB else "no" for m in stages]
    lines.append(f"  {'fits in ' + f'{p.capacity_gib:.1f} GiB':<{width - 2}}" + "".join(f"{f:>10}" for f in fits))
    on, off = ((p.memory.activations, p.memory.activations_other) if spec.activation_checkpointing
               else (p.memory.activations_other, p.memory.activations))
    lines.append(f"  activations at micro-batch {spec.micro_batch_size} x {spec.seq_len} tokens: {_gib(off)} GiB without "
                 f"activation checkpointing, {_gib(on)} GiB with (train.activation_checkpointing="
                 f"{str(spec.activation_checkpointing).lower()}); attention: {spec.attention}")
    return lines


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.2g} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:,.1f} h = {hours / 24:,.1f} days"


def _time_lines(p: Plan) -> list[str]:
    spec = p.spec
    lines = [f"  FLOPs per token       {p.flops_per_token:.4g} (6·(12·L·h² + V·h) + 12·L·h·T; activation "
             f"checkpointing executes {model_plan.RECOMPUTE_FACTOR:.2f}x that)"]
    if p.tokens_per_s is None:
        why = (f"{spec.gpu.name} has no {spec.precision} (set train.precision=fp16)" if spec.gpu
               else "no peak FLOP/s is known for CPUs, so no MFU to apply; the run logs its measured tokens/s")
        return [*lines, f"  time                  not estimated: {why}"]
    peak = model_plan.peak_tflops(spec)
    default = " (default: " + model_plan.DEFAULT_MFU_SOURCE + "; --mfu to change)" if spec.mfu == model_plan.DEFAULT_MFU else ""
    lines += [f"  peak                  {peak:g} TFLOP/s per GPU ({spec.gpu.name}, {spec.precision}) x {spec.ranks} GPUs",
              f"  MFU                   {spec.mfu:.1%}{default}",
              *([f"                        with activation checkpointing a quarter of that work is recomputation: "
                 f"{spec.mfu / model_plan.RECOMPUTE_FACTOR:.1%} counted in model FLOPs"]
                if spec.activation_checkpointing else []),
              f"  tokens/s              {p.tokens_per_s:,.0f} ({p.tokens_per_s / spec.ranks:,.0f} per GPU)",
              f"  time to train_tokens  {_duration(p.train_hours)} for {spec.train_tokens:,} tokens"]
    if p.job_hours:
        lines.append(f"  walltime jobs         {p.jobs:,} of {spec.walltime_min / 60:g} h ({p.job_hours:.2f} h of training each: "
                     f"{model_plan.JOB_START_MIN:g} min to start, {spec.signal_delay_s / 60:g} min for the final save), "
                     f"{p.jobs - 1:,} requeue(s)")
    else:
        lines.append("  walltime jobs         1 (no walltime limit on this profile)")
    lines.append(f"  GPU-hours to request  {p.gpu_hours:,.0f} ({spec.ranks} GPUs x the training time, plus each job's "
                 "start and final save)")
    return lines


def format_plan(cfg: RunConfig, p: Plan) -> str:
    spec, alloc = p.spec, training_allocation(cfg)
    m = cfg.model
    vocab, source = vocab_source(cfg)
    qos = f", QoS {alloc.qos}" if alloc.qos else ""
    device = f"{spec.gpu.name} ({spec.gpu.memory_gib:.1f} GiB)" if spec.gpu else "CPU process(es)"
    lines = [f"graine plan: stage pretrain on cluster.profile={cfg.cluster.profile}{qos}",
             f"job      {spec.num_nodes} node(s) x {spec.devices_per_node} {device} = {spec.ranks} ranks; data parallel + "
             f"ZeRO-{spec.zero_stage}, {spec.precision}",
             f"model    {m.size}: {m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads} heads, vocabulary {vocab:,} "
             f"({source}) padded to {spec.shape.vocab_size:,}: {p.parameters:,} parameters ({_count(p.parameters)})",
             f"batch    micro-batch {spec.micro_batch_size} x {spec.seq_len} tokens per rank, global batch "
             f"{spec.global_batch_size} samples = {spec.global_batch_size * spec.seq_len:,} tokens"]
    if spec.gpu and cfg.train.devices_per_node != spec.devices_per_node:
        lines.append(f"note     train.devices_per_node={cfg.train.devices_per_node} is not used on a GPU profile: the job "
                     f"gets one rank per GPU, {spec.devices_per_node} per node (cluster.gpu.gpus_per_node)")
    if p.batch_problem:
        lines.append(f"problem  {p.batch_problem}")
    lines += ["", *_memory_table(p), "", "compute", *_time_lines(p)]
    if p.jobs and p.jobs - 1 > spec.max_requeues:
        lines.append(f"  warning: {p.jobs - 1:,} requeues exceed checkpoint.max_num_timeout={spec.max_requeues}; raise it "
                     f"to {p.jobs - 1} or the chain stops early")
    lines += ["", f"verdict  {verdict(p)}"]
    if not p.fits and spec.gpu:
        lines.append("         `graine run pretrain --executor slurm` refuses to submit this plan unless --force")
    return "\n".join(lines)
