"""`graine plan` (training/plan.py, pipeline/plan.py): it renders for every preset on every profile through
the CLI, its counts are the model's own, the fix it names is the smallest that fits, `graine run pretrain
--executor slurm` refuses an unfit plan before anything is written, and its memory model matches what one
CPU process measures."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline import plan as pipeline_plan
from pipeline.cli import main
from pipeline.config import load_config
from tests.support.train_harness import REPO, env
from training import plan
from training.model import BloomModel
from training.presets import BLOOM_VOCAB_SIZE, PRESETS

PROFILES = ["jean-zay-a100", "jean-zay-h100", "jean-zay-v100", "generic", "local", "local-cluster"]
BLOOM = ["model.vocab_size=250880", "train.seq_len=2048", "train.micro_batch_size=1", "train.global_batch_size=512"]


def plan_cli(capsys, tmp_path: Path, *overrides: str, options: tuple[str, ...] = ()) -> tuple[int, str, str]:
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\n")
    code = main(["plan", "-c", str(config), *options, *overrides])
    out, err = capsys.readouterr()
    return code, out, err


def printed_parameters(out: str) -> int:
    return int(re.search(r": ([\d,]+) parameters", out).group(1).replace(",", ""))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("size", list(PRESETS))
def test_plan_renders_for_every_preset_on_every_profile(capsys, tmp_path, size, profile):
    precision = "fp16" if profile == "jean-zay-v100" else "bf16" if "local" not in profile else "fp32"
    code, out, err = plan_cli(capsys, tmp_path, f"model.size={size}", f"cluster.profile={profile}",
                              f"train.precision={precision}", "train.train_tokens=10000000000", *BLOOM)
    assert code == 0, err
    shape = PRESETS[size]
    expected = plan.ModelShape(shape.num_layers, shape.hidden_size, shape.num_heads, BLOOM_VOCAB_SIZE).parameters()
    assert printed_parameters(out) == expected
    assert "nan" not in out and "inf" not in out.replace("info", "")
    for line in ("weights", "gradients", "optimizer", "activations", "total", "FLOPs per token", "verdict"):
        assert line in out, line
    if "local" in profile:
        assert "CPU process" in out and "not estimated" in out
    else:
        gpu_hours = float(re.search(r"GPU-hours to request\s+([\d,]+)", out).group(1).replace(",", ""))
        assert gpu_hours > 0
        assert re.search(r"walltime jobs\s+\d", out)


@pytest.mark.parametrize("size, published", [("560m", 559_214_592), ("1b7", 1_722_408_960), ("176b", 176_247_271_424)])
def test_parameters_and_flops_are_the_models_own(size, published):
    """The counts of the released BLOOM checkpoints (559M, 1.72B, 176.2B with 250,880 rows), and exactly
    what BloomModel builds (on the meta device: no memory) and counts as FLOPs per token."""
    cfg = load_config(None, ["run_dir=/nonexistent", f"model.size={size}", "model.vocab_size=250880"])
    with torch.device("meta"):
        model = BloomModel(cfg.model, BLOOM_VOCAB_SIZE, init=False)
    shape = plan.ModelShape(cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_heads, model.padded_vocab_size)
    assert shape.parameters() == model.num_parameters()
    assert abs(shape.parameters() - published) / published < 0.01
    assert plan.flops_per_token(shape, 2048) == model.flops_per_token(2048)


def spec_of(*overrides: str, mfu: float | None = None) -> plan.JobSpec:
    return pipeline_plan.job_spec(load_config(None, ["run_dir=/nonexistent", *overrides]), mfu=mfu)


def test_memory_terms_follow_the_zero_stage():
    spec = spec_of("model.size=7b1", "cluster.profile=jean-zay-a100", "train.num_nodes=2", "train.precision=bf16", *BLOOM)
    n, d = spec.shape.parameters(), spec.ranks
    by_stage = [plan.memory(dataclasses.replace(spec, zero_stage=z)) for z in range(4)]
    assert d == 16
    assert [m.weights for m in by_stage] == [2 * n, 2 * n, 2 * n, 2 * n / d]
    assert [m.gradients for m in by_stage] == [2 * n, 2 * n, 2 * n / d, 2 * n / d]
    assert [m.optimizer for m in by_stage] == [12 * n, 12 * n / d, 12 * n / d, 12 * n / d]
    fp32 = [plan.memory(dataclasses.replace(spec, zero_stage=z, precision="fp32")) for z in (0, 1)]
    assert fp32[0].optimizer == 8 * n and fp32[1].optimizer == 12 * n / d  # DeepSpeed's own fp32 partition
    assert by_stage[0].activations_other < by_stage[0].activations / 5  # checkpointing keeps one input per block


def test_the_fix_named_is_the_smallest_change_that_fits():
    spec = spec_of("model.size=7b1", "cluster.profile=jean-zay-a100", "train.precision=bf16", "model.vocab_size=250880",
                   "train.seq_len=2048", "train.micro_batch_size=4", "train.global_batch_size=512", "train.zero_stage=1")
    result = plan.plan(spec)
    assert not result.fits
    fixes = {next(iter(f.changes)): f.changes[next(iter(f.changes))] for f in result.fixes}
    assert {"train.zero_stage", "train.micro_batch_size", "train.activation_checkpointing", "train.num_nodes"} == set(fixes)
    assert result.fixes[0].changes == {"train.zero_stage": 2}  # a ZeRO stage is preferred: it costs no compute

    def fits(**change) -> bool:
        return plan.plan(dataclasses.replace(spec, **change), search=False).fits

    for key, value in fixes.items():
        assert fits(**{key.split(".")[1]: value}), key
    # One step short of each fix does not fit: a ZeRO stage lower, the next larger micro-batch that
    # divides the global batch, one node fewer.
    assert not fits(zero_stage=fixes["train.zero_stage"] - 1)
    micro = fixes["train.micro_batch_size"]
    assert not fits(micro_batch_size=min(m for m in range(micro + 1, 5) if 512 % m == 0))
    assert not fits(num_nodes=fixes["train.num_nodes"] - 1)


def test_176b_on_48_a100_nodes_needs_zero3_and_checkpointing(capsys, tmp_path):
    config = str(REPO / "configs/bloom-176b.yaml")
    code = main(["plan", "-c", config, f"run_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "DOES NOT FIT" in out and "no single knob is enough" in out
    assert "train.zero_stage=3 train.activation_checkpointing=true" in out
    assert "train.global_batch_size=2048 is not a multiple of train.micro_batch_size x ranks = 2 x 384" in out
    cfg = load_config(config, [f"run_dir={tmp_path}", "train.zero_stage=3", "train.activation_checkpointing=true"])
    result = pipeline_plan.make_plan(cfg)
    assert result.fits and result.spec.ranks == 384
    # Time: tokens / (GPUs x peak x MFU / FLOPs per token), a third more with recomputation.
    tokens_per_s = 384 * 312e12 * plan.DEFAULT_MFU / result.flops_per_token / plan.RECOMPUTE_FACTOR
    assert result.tokens_per_s == pytest.approx(tokens_per_s)
    assert result.train_hours == pytest.approx(366e9 / tokens_per_s / 3600)
    assert result.jobs == math.ceil(result.train_hours / ((1200 - plan.JOB_START_MIN - 3) / 60))
    assert result.gpu_hours == pytest.approx(384 * (result.train_hours + result.jobs * (plan.JOB_START_MIN + 3) / 60))


def test_mfu_scales_the_time_and_the_default_is_the_measured_one(capsys, tmp_path):
    results = (REPO / "tests/benchmarks/RESULTS-gpu.md").read_text()
    assert f"{plan.DEFAULT_MFU:.1%} MFU" in results  # the default quotes a measured figure, not a guess
    slow = plan.plan(spec_of("model.size=1b7", "cluster.profile=jean-zay-h100", "train.precision=bf16", *BLOOM, mfu=0.2))
    fast = plan.plan(spec_of("model.size=1b7", "cluster.profile=jean-zay-h100", "train.precision=bf16", *BLOOM, mfu=0.4))
    assert fast.tokens_per_s == pytest.approx(2 * slow.tokens_per_s)
    code, out, _ = plan_cli(capsys, tmp_path, "model.size=1b7", "cluster.profile=jean-zay-h100", *BLOOM,
                            options=("--mfu", "0.4"))
    assert code == 0 and "MFU                   40.0%" in out
    code, _, err = plan_cli(capsys, tmp_path, "cluster.profile=jean-zay-h100", options=("--mfu", "40"))
    assert code == 2 and "--mfu 40.0 must be a fraction" in err
    code, _, err = plan_cli(capsys, tmp_path, "cluster.profile=jean-zay-h100", options=("--gpu", "TPU"))
    assert code == 2 and "A100-SXM4-80GB" in err


def test_v100_in_bf16_says_it_has_no_bf16(capsys, tmp_path):
    code, out, _ = plan_cli(capsys, tmp_path, "model.size=560m", "cluster.profile=jean-zay-v100", "train.precision=bf16",
                            *BLOOM)
    assert code == 0 and "V100-SXM2-32GB has no bf16 (set train.precision=fp16)" in out


# --------------------------------------------------------------------------------------------- refusal
UNFIT = ["model.size=176b", "model.vocab_size=250880", "train.seq_len=2048", "train.micro_batch_size=1",
         "train.global_batch_size=8", "train.precision=bf16", "train.zero_stage=1", "train.num_nodes=1",
         "cluster.profile=jean-zay-a100", "cluster.account=abc@a100"]


def _run_all(capsys, tmp_path: Path, *options: str) -> tuple[int, str, str]:
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"text": "hello"}\n')
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nclean:\n  inputs: ['{raw}']\n")
    code = main(["run", "all", "-c", str(config), "--executor", "slurm", *options, *UNFIT])
    out, err = capsys.readouterr()
    return code, out, err


def test_slurm_run_of_a_plan_that_does_not_fit_exits_2_before_anything_is_written(capsys, tmp_path, monkeypatch):
    # No sbatch on the PATH: were the check to let the run through, its submission would fail here
    # instead of reaching a Slurm cluster.
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    code, _, err = _run_all(capsys, tmp_path)
    assert code == 2, err
    assert "pretrain: DOES NOT FIT" in err and "smallest" in err and "--force submits anyway" in err
    assert not (tmp_path / "run").exists()  # no lock, no logs/jobs: nothing was submitted
    # --force passes the check (the dry run then lists it among the checks and submits nothing).
    code, out, err = _run_all(capsys, tmp_path, "--force", "--dry-run")
    assert code == 0, err
    assert "pretrain: memory plan (DOES NOT FIT" in out and "submitted anyway: --force" in out
    assert not (tmp_path / "run").exists()


def test_slurm_run_pretrain_of_a_plan_that_does_not_fit_exits_2(capsys, tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\n")
    code = main(["run", "pretrain", "-c", str(config), "--executor", "slurm", *UNFIT])
    err = capsys.readouterr().err
    assert code == 2 and "pretrain: DOES NOT FIT" in err, err
    assert not (tmp_path / "run").exists()
    # The same job on the local executor is not planned against GPUs: it goes on to the runner, which
    # refuses it for its own reason (the upstream stages have not run), exit 1.
    code = main(["run", "pretrain", "-c", str(config), "--executor", "local", *UNFIT])
    err = capsys.readouterr().err
    assert code == 1 and "DOES NOT FIT" not in err and "upstream" in err, err


def test_cpu_plans_never_stop_a_run():
    cfg = load_config(None, ["run_dir=/nonexistent", *UNFIT[:-2], "train.precision=fp32", "cluster.profile=local-cluster"])
    assert not pipeline_plan.make_plan(cfg).fits  # 176B does not fit this machine either...
    assert pipeline_plan.refusal(cfg) == ""  # ...but only GPU jobs are refused
    fitting = load_config(None, ["run_dir=/nonexistent", *UNFIT[:-2], "model.size=560m", "cluster.profile=jean-zay-a100"])
    assert pipeline_plan.refusal(fitting) == ""


# ------------------------------------------------------------------------------ against a measurement
COMMON = ["model.pad_vocab_to_multiple=32", "train.zero_stage=0", "train.precision=fp32", "train.devices_per_node=1",
          "cluster.profile=local"]
# Optimizer states dominate the first case, activations the others (with and without checkpointing).
CPU_CASES = {
    "states": ["model.num_layers=8", "model.hidden_size=768", "model.num_heads=12", "train.seq_len=64",
               "train.micro_batch_size=1", "train.global_batch_size=1"],
    "activations": ["model.num_layers=4", "model.hidden_size=256", "model.num_heads=4", "model.max_positions=512",
                    "train.seq_len=512", "train.micro_batch_size=4", "train.global_batch_size=4"],
}
CPU_CASES["checkpointed"] = [*CPU_CASES["activations"], "train.activation_checkpointing=true"]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_memory_model_matches_one_cpu_process_within_20_percent(tmp_path, case):
    """Peak RSS of building a model in fp32 and taking 3 DeepSpeed ZeRO-0 AdamW steps in one process
    (training.engine, as the pretrain stage does), against the plan for that process: weights, gradients,
    Adam moments, DeepSpeed's flat all-reduce bucket (a 4th copy: measured, it appears from the second step,
    once the moments exist), activations and the loss head. "states": 57M parameters, a short sequence;
    "activations": 3M parameters, 4 x 512 tokens, with and without activation checkpointing. The growth is
    measured over the process once torch, DeepSpeed, gloo and the model's modules are loaded; the absolute
    peak against the plan's total, fixed per-process overhead included. glibc serves large blocks with mmap
    so that freed blocks leave the RSS."""
    overrides = [*COMMON, *CPU_CASES[case]]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"steps": 3, "vocab": 96, "overrides": [f"run_dir={tmp_path / 'run'}", *overrides]}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "tests.support.plan_memory_worker", str(spec)]
    proc = subprocess.run(cmd, env=env({"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    measured = json.loads(Path(f"{spec}.out.json").read_text())
    phases = measured["phases"]
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "model.vocab_size=96", *overrides])
    predicted = pipeline_plan.make_plan(cfg).memory
    assert predicted.overhead == plan.CPU_FIXED_GIB * plan.GIB
    assert pipeline_plan.job_spec(cfg).shape.parameters() == measured["parameters"]
    grown = max(phases.values()) - phases["baseline"]
    dynamic = predicted.total - predicted.overhead
    print(f"\nplan vs one CPU process ({case}), {measured['parameters'] / 1e6:.1f}M parameters, fp32, ZeRO-0: predicted "
          f"growth {dynamic / 1e6:.0f} MB (states {predicted.states / 1e6:.0f}, buffers {predicted.buffers / 1e6:.0f}, "
          f"activations {predicted.activations / 1e6:.0f}, loss head {predicted.loss_head / 1e6:.1f}), measured "
          f"{grown / 1e6:.0f} MB ({grown / dynamic - 1:+.1%}); peak RSS {max(phases.values()) / 1e6:.0f} MB against "
          f"the plan's total {predicted.total / 1e6:.0f} MB ({max(phases.values()) / predicted.total - 1:+.1%}); "
          "growth by phase: " + ", ".join(f"{k} {(v - phases['baseline']) / 1e6:.0f} MB" for k, v in phases.items()))
    assert abs(grown / dynamic - 1) < 0.2
    assert abs(max(phases.values()) / predicted.total - 1) < 0.2


def test_plan_matches_the_pretrain_stages_recorded_gpu_peak_within_15_percent():
    """RESULTS-gpu.md records graine's pretrain stage on one H100 at the 560m shape (vocabulary 8,064 padded
    ids, bf16, ZeRO-1, sequence 2048, micro-batch 8): its logged peak memory, training.metrics.memory_gb,
    is torch.cuda.max_memory_allocated in GiB. The plan less its overhead and fragmentation (neither is in
    max_memory_allocated) is checked against it."""
    text = (REPO / "tests/benchmarks/RESULTS-gpu.md").read_text()
    run = re.search(r"BLOOM-560m shape .*?bf16, ZeRO 1, sequence (\d+), micro-batch (\d+),.*?vocabulary of ([\d,]+) "
                    r"padded ids, ([\d.]+) GB\)", text, re.S)
    seq, micro, vocab, measured = int(run[1]), int(run[2]), int(run[3].replace(",", "")), float(run[4])
    cfg = load_config(None, ["run_dir=/nonexistent", "model.size=560m", f"model.vocab_size={vocab}",
                             f"train.seq_len={seq}", f"train.micro_batch_size={micro}", f"train.global_batch_size={micro}",
                             "train.zero_stage=1", "train.precision=bf16", "cluster.profile=jean-zay-h100",
                             "cluster.gpu.gpus_per_node=1"])
    predicted = pipeline_plan.make_plan(cfg, gpu="H100-SXM5-80GB").memory
    dynamic = (predicted.total - predicted.overhead) / plan.GIB
    print(f"\nplan vs the recorded H100 run (560m shape, vocabulary {vocab}): predicted {dynamic:.2f} GiB, "
          f"measured {measured} GiB ({dynamic / measured - 1:+.1%})")
    assert abs(dynamic / measured - 1) < 0.15


# One GPU: torch.cuda.max_memory_allocated of DeepSpeed ZeRO-1 bf16 steps against the plan (issue 15 asks 15%).
GPU_CASES = {"560m": ["model.size=560m", "train.micro_batch_size=4"], "1b7": ["model.size=1b7", "train.micro_batch_size=2"]}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the plan's GPU check needs one (issue 15)")
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_memory_model_matches_one_gpu_within_15_percent(tmp_path, case):
    """Not yet run on a GPU when written (no device was lent): the allocated peak of 3 ZeRO-1 bf16 steps at
    sequence 2048, vocabulary 250,880, against the plan's total less its fixed overhead and fragmentation
    (neither is in max_memory_allocated)."""
    overrides = [*GPU_CASES[case], "model.vocab_size=250880", "train.seq_len=2048", "train.global_batch_size=4",
                 "train.zero_stage=1", "train.precision=bf16", "cluster.profile=jean-zay-h100",
                 "cluster.gpu.gpus_per_node=1"]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"steps": 3, "vocab": 250880, "device": "cuda",
                                "overrides": [f"run_dir={tmp_path / 'run'}", *overrides]}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "tests.support.plan_memory_worker", str(spec)]
    proc = subprocess.run(cmd, env=env({"DS_ACCELERATOR": "cuda"}), cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    phases = json.loads(Path(f"{spec}.out.json").read_text())["phases"]
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", *overrides])
    predicted = pipeline_plan.make_plan(cfg, gpu="H100-SXM5-80GB").memory
    dynamic = predicted.total - predicted.overhead
    grown = max(phases.values()) - phases["baseline"]
    print(f"\nplan vs one GPU ({case}): predicted {dynamic / plan.GIB:.2f} GiB (states {predicted.states / plan.GIB:.2f}, "
          f"buffers {predicted.buffers / plan.GIB:.2f}, activations {predicted.activations / plan.GIB:.2f}, loss head "
          f"{predicted.loss_head / plan.GIB:.2f}), max_memory_allocated grew {grown / plan.GIB:.2f} GiB "
          f"({grown / dynamic - 1:+.1%})")
    assert abs(grown / dynamic - 1) < 0.15
