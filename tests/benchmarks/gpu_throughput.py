"""GPU throughput of graine's kernels and model against transformers' BLOOM, in one run (< 5 minutes on an H100).

    python tests/benchmarks/gpu_throughput.py --out results.json      # on the GPU machine
    python tests/benchmarks/gpu_throughput.py --cpu-smoke             # tiny shapes on CPU: catches bugs only

1. Correctness first: the Triton ALiBi attention (and compiled flex_attention) against the fp32 eager reference,
   forward and backward, bf16; graine's 560m loss against BloomForCausalLM's on the same weights.
2. Attention, forward + backward, bf16, at BLOOM-560m shape (batch 8, 16 heads, 2048 tokens, head dim 64) and
   1b7 shape (head dim 128): eager HF-style, SDPA + ALiBi mask, compiled flex_attention + ALiBi score_mod,
   Triton ALiBi, and causal flash attention without ALiBi (the floor).
3. A full training step (forward, backward, fused AdamW; bf16 weights; sequence 2048) of graine's BloomModel
   and of BloomForCausalLM at the 560m config, then graine at 1b7: tokens/s, TFLOP/s, MFU, peak memory.

Times are medians of CUDA-event-timed iterations after warm-up. MFU = flops_per_token x tokens/s / peak, with
BloomModel.flops_per_token (6N + 12 L h T) for both models and 989 TFLOP/s (H100 SXM, dense bf16).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernels.attention import attention_eager, attention_flex, attention_sdpa, split_qkv  # noqa: E402
from training.config import ModelConfig  # noqa: E402
from training.model import BloomModel  # noqa: E402
from training.presets import BLOOM_VOCAB_SIZE  # noqa: E402

H100_BF16_PEAK = 989e12


# ------------------------------------------------------------------------------------------------ timing
def timed(fn, warmup: int, iters: int, device: str) -> float:
    """Median milliseconds per call of fn()."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rel_err(out, ref) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


# --------------------------------------------------------------------------------------------- attention
def attention_hf_style(qkv, num_heads, dropout_p=0.0):
    """What BloomForCausalLM runs: baddbmm with the ALiBi row (slope * j), additive causal mask, fp32 softmax."""
    from kernels.attention import alibi_slopes, merge_heads

    q, k, v = split_qkv(qkv, num_heads)
    b, h, t, d = q.shape
    alibi = (alibi_slopes(h, q.device)[:, None, None] * torch.arange(t, device=q.device)).repeat(b, 1, 1)
    scores = alibi.to(q.dtype).baddbmm(q.reshape(b * h, t, d), k.reshape(b * h, t, d).transpose(1, 2),
                                       beta=1.0, alpha=1.0 / math.sqrt(d))
    mask = torch.full((t, t), torch.finfo(q.dtype).min, device=q.device, dtype=q.dtype).triu(1)
    probs = F.softmax(scores.view(b, h, t, t) + mask, dim=-1, dtype=torch.float32).to(q.dtype)
    return merge_heads(torch.matmul(probs, v))


def causal_flash_no_alibi(qkv, num_heads, dropout_p=0.0):
    from kernels.attention import merge_heads

    q, k, v = split_qkv(qkv, num_heads)
    return merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))


def attention_paths(device: str) -> dict:
    paths = {"eager (HF-style)": attention_hf_style, "SDPA + ALiBi mask": attention_sdpa}
    if device == "cuda":
        paths["flex_attention + ALiBi (compiled)"] = attention_flex
    if device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter: --cpu-smoke only
        from kernels.triton_attention import attention_triton

        paths["Triton ALiBi (graine)"] = attention_triton
    if device == "cuda":
        paths["causal flash, no ALiBi (floor)"] = causal_flash_no_alibi
    return paths


def check_attention(device, dtype, shapes) -> dict:
    results = {}
    for b, h, t, d in shapes:
        torch.manual_seed(0)
        qkv = torch.randn(b, t, h * 3 * d, device=device).to(dtype)
        grad = torch.randn(b, t, h * d, device=device).to(dtype)
        ref_in = qkv.detach().clone().float().requires_grad_()
        ref = attention_eager(ref_in, h)
        ref.backward(grad.float())
        for name, fn in attention_paths(device).items():
            if "floor" in name or "eager" in name or ("flex" in name and t % 128):
                continue  # (flex would compile again for a ragged length)
            x = qkv.detach().clone().requires_grad_()
            out = fn(x, h)
            out.backward(grad)
            errs = (rel_err(out, ref), rel_err(x.grad, ref_in.grad))
            key = f"{name} @ B{b} H{h} T{t} D{d}"
            results[key] = {"out_rel_err": errs[0], "grad_rel_err": errs[1], "ok": max(errs) <= 1e-2}
            print(f"  check {key}: out {errs[0]:.2e}  grad {errs[1]:.2e}  {'OK' if max(errs) <= 1e-2 else 'FAIL'}",
                  flush=True)
    return results


def bench_attention(device, dtype, shapes, warmup, iters) -> dict:
    results = {}
    for label, (b, h, t, d) in shapes.items():
        qkv = torch.randn(b, t, h * 3 * d, device=device).to(dtype).requires_grad_()
        grad = torch.randn(b, t, h * d, device=device).to(dtype)
        # Causal attention FLOPs: 4 B H T^2 D / 2 forward, 2.5x that backward.
        flops = 3.5 * 2 * b * h * t * t * d
        for name, fn in attention_paths(device).items():
            def step(fn=fn, qkv=qkv, h=h, grad=grad):
                qkv.grad = None
                fn(qkv, h).backward(grad)
            try:
                ms = timed(step, warmup, iters, device)
                results[f"{label}/{name}"] = {"ms": ms, "tflops": flops / ms / 1e9}
                print(f"  {label:22s} {name:36s} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TFLOP/s", flush=True)
            except torch.OutOfMemoryError:
                results[f"{label}/{name}"] = {"ms": None, "error": "out of memory"}
                print(f"  {label:22s} {name:36s} out of memory", flush=True)
            torch.cuda.empty_cache() if device == "cuda" else None
    return results


# ---------------------------------------------------------------------------------------- training steps
def build_graine(cfg: ModelConfig, vocab: int, device, dtype):
    with torch.device(device):
        model = BloomModel(cfg, vocab)
    return model.to(dtype).train()


def build_hf(graine_model: BloomModel, cfg: ModelConfig, device, dtype):
    from transformers import BloomForCausalLM

    from training.hf_mapping import hf_config, to_hf_state_dict

    config = hf_config(cfg, graine_model.padded_vocab_size)
    config.use_cache = False
    with torch.device(device):
        model = BloomForCausalLM(config).to(dtype)
    model.load_state_dict(to_hf_state_dict(graine_model.state_dict(), cfg))
    return model.train()


def make_optimizer(model, device):
    groups = model.param_groups(0.1) if hasattr(model, "param_groups") else model.parameters()
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=device == "cuda")


def train_throughput(name, model, flops_per_token, micro_batch, seq, vocab, device, warmup, iters, hf=False) -> dict:
    ids = torch.randint(0, vocab, (micro_batch, seq + 1), device=device)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    opt = make_optimizer(model, device)

    def step():
        if hf:  # transformers shifts labels itself
            loss = model(input_ids=ids[:, :seq], labels=ids[:, :seq]).loss
        else:
            loss = model(inputs, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        ms = timed(step, warmup, iters, device)
    except torch.OutOfMemoryError:
        opt.state.clear()
        return {"model": name, "micro_batch": micro_batch, "error": "out of memory"}
    tokens_per_s = micro_batch * seq / (ms / 1e3)
    tflops = flops_per_token * tokens_per_s / 1e12
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    opt.state.clear()  # the Adam moments would otherwise outlive this measurement
    return {"model": name, "micro_batch": micro_batch, "step_ms": ms, "tokens_per_s": tokens_per_s,
            "tflops": tflops, "mfu": tflops * 1e12 / H100_BF16_PEAK, "peak_mem_gib": peak}


def free(device):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def bench_training(args, device, dtype) -> tuple[list[dict], dict]:
    rows, checks = [], {}
    seq = args.seq
    for size, micro_batches, with_hf in args.train_plan:
        cfg = ModelConfig(size=size, vocab_size=args.vocab, kernels="auto", **args.model_overrides)
        model = build_graine(cfg, args.vocab, device, dtype)
        fpt = model.flops_per_token(seq)
        if with_hf:
            hf = build_hf(model, cfg, device, dtype)
            ids = torch.randint(0, args.vocab, (2, seq), device=device)
            labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)
            with torch.no_grad():
                ours, theirs = model(ids, labels).item(), hf(input_ids=ids, labels=ids).loss.item()
            checks[f"{size} loss graine vs transformers"] = {"graine": ours, "transformers": theirs,
                                                            "rel_diff": abs(ours - theirs) / theirs,
                                                            "ok": abs(ours - theirs) / theirs <= 1e-2}
            print(f"  check {size} loss: graine {ours:.5f}  transformers {theirs:.5f}", flush=True)
            for mb in args.hf_micro_batches:
                row = train_throughput(f"transformers BloomForCausalLM {size}", hf, fpt, mb, seq, args.vocab,
                                       device, args.warmup_steps, args.steps, hf=True)
                rows.append(row)
                print("  ", row, flush=True)
                free(device)
                if "error" in row:
                    break
            del hf
            free(device)
        for mb in micro_batches:
            row = train_throughput(f"graine BloomModel {size}", model, fpt, mb, seq, args.vocab, device,
                                   args.warmup_steps, args.steps)
            rows.append(row)
            print("  ", row, flush=True)
            free(device)
            if "error" in row:
                break
        del model
        free(device)
    return rows, checks


# ------------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (bug check, no timings worth reading)")
    parser.add_argument("--skip-1b7-train", action="store_true", help="leave out graine's 1b7 training step")
    args = parser.parse_args()
    t_start = time.time()

    if args.cpu_smoke:
        device, dtype = "cpu", torch.float32
        check_shapes = [(1, 4, 64, 16)]
        attn_shapes = {"tiny": (1, 4, 64, 16)}
        args.vocab, args.seq, args.steps, args.warmup_steps = 1000, 64, 2, 1
        args.model_overrides = dict(num_layers=2, hidden_size=64, num_heads=4)
        args.train_plan = [("560m", [2], True)]
        args.hf_micro_batches = [2]
        warmup, iters = 1, 2
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: run with --cpu-smoke, or on the GPU machine", file=sys.stderr)
            return 2
        device, dtype = "cuda", torch.bfloat16
        # The timed shapes first (the Triton kernels autotune on their first call), then a ragged length.
        check_shapes = [(8, 16, 2048, 64), (8, 16, 2048, 128), (1, 12, 777, 64)]
        attn_shapes = {"560m (8x16x2048x64)": (8, 16, 2048, 64), "1b7 (8x16x2048x128)": (8, 16, 2048, 128)}
        args.vocab, args.seq, args.steps, args.warmup_steps = BLOOM_VOCAB_SIZE, 2048, 6, 3
        args.model_overrides = {}
        args.train_plan = [("560m", [8, 16], True)] + ([] if args.skip_1b7_train else [("1b7", [8], False)])
        args.hf_micro_batches = [2, 4]
        warmup, iters = 3, 10
        torch.backends.cuda.matmul.allow_tf32 = True

    env = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version()}
    for pkg in ("triton", "transformers"):
        try:
            env[pkg] = __import__(pkg).__version__
        except ImportError:
            env[pkg] = None
    print("environment:", env, flush=True)
    from kernels.dispatch import select_kernels

    env["kernels"] = select_kernels("auto").describe()
    print("kernels (auto):", env["kernels"], flush=True)

    print("\n== correctness (bf16 vs fp32 reference; relative L2 error <= 1e-2) ==", flush=True)
    checks = check_attention(device, dtype, check_shapes)
    print(f"\n== attention forward+backward [{time.time() - t_start:.0f}s] ==", flush=True)
    attention = bench_attention(device, dtype, attn_shapes, warmup, iters)
    free(device)
    print(f"\n== training step (fwd+bwd+fused AdamW, seq {args.seq}) [{time.time() - t_start:.0f}s] ==", flush=True)
    training, model_checks = bench_training(args, device, dtype)
    checks.update(model_checks)

    summary = summarize(attention, training, attn_shapes)
    results = {"env": env, "checks": checks, "attention": attention, "training": training, "summary": summary,
               "seconds": time.time() - t_start, "command": " ".join(sys.argv)}
    print_tables(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"results written to {args.out}")
    return 0 if all(c["ok"] for c in checks.values()) else 1


def summarize(attention, training, attn_shapes) -> dict:
    out = {}
    for label in attn_shapes:
        tri = attention.get(f"{label}/Triton ALiBi (graine)", {}).get("ms")
        flex = attention.get(f"{label}/flex_attention + ALiBi (compiled)", {}).get("ms")
        if tri and flex:
            out[f"{label}: Triton speed-up over compiled flex"] = flex / tri
    ok = [r for r in training if "error" not in r]
    hf = [r for r in ok if r["model"].startswith("transformers") and "560m" in r["model"]]
    ours = [r for r in ok if r["model"].startswith("graine") and "560m" in r["model"]]
    if hf and ours:
        out["560m: graine tokens/s over transformers' best"] = (max(r["tokens_per_s"] for r in ours)
                                                                / max(r["tokens_per_s"] for r in hf))
    b17 = [r for r in ok if r["model"].startswith("graine") and "1b7" in r["model"]]
    if b17:
        out["1b7: graine best MFU"] = max(r["mfu"] for r in b17)
    return out


def print_tables(results) -> None:
    print(f"\n==== results on {results['env']['device']} ({results['seconds']:.0f} s) ====")
    print("correctness:")
    for k, v in results["checks"].items():
        print(f"  {'OK  ' if v['ok'] else 'FAIL'} {k}")
    print(f"{'attention fwd+bwd (bf16)':62s} {'ms':>8s} {'TFLOP/s':>8s}")
    for k, v in results["attention"].items():
        ms = f"{v['ms']:8.3f}" if v.get("ms") else "     OOM"
        tf = f"{v['tflops']:8.1f}" if v.get("ms") else ""
        print(f"  {k:60s} {ms} {tf}")
    print(f"{'training step':40s} {'mb':>3s} {'ms':>8s} {'tokens/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak GiB':>9s}")
    for r in results["training"]:
        if "error" in r:
            print(f"  {r['model']:38s} {r['micro_batch']:3d} {r['error']}")
        else:
            print(f"  {r['model']:38s} {r['micro_batch']:3d} {r['step_ms']:8.1f} {r['tokens_per_s']:9.0f} "
                  f"{r['tflops']:8.1f} {100 * r['mfu']:5.1f}% {r['peak_mem_gib']:9.1f}")
    for k, v in results["summary"].items():
        print(f"  {k}: {v:.2f}")


if __name__ == "__main__":
    sys.exit(main())
