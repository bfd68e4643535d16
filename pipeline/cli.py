"""The `graine` command.

    graine run STAGE|all -c CONFIG [--executor inline|local|slurm] [--force] [--dry-run] [key=value ...]
    graine status -c CONFIG
    graine sbatch STAGE -c CONFIG [key=value ...]      # a standalone sbatch script, for hand submission
    graine task STAGE STEP -c CONFIG [--rank R]        # one task; what sbatch scripts run under srun
    graine publish STAGE -c CONFIG                     # publish a stage whose tasks are all complete
    graine checkpoint list|universal|dump ...          # checkpoint tools (list --full: recompute checksums)
    graine verify [STAGE] -c CONFIG                    # re-hash published outputs and checkpoints
    graine diff RUN_A RUN_B                            # where two runs diverge
    graine report -c CONFIG                            # report/index.html and PNG figures of the run
    graine plan -c CONFIG [--mfu F] [--gpu MODEL]      # memory per GPU, time and GPU-hours of pretrain

Exit codes: 0 success, 1 failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import signal
import sys

from core.errors import ConfigError, GraineError
from pipeline import registry
from pipeline.config import load_config

log = logging.getLogger("graine")

OVERRIDES = """overrides are key=value pairs, the value parsed as YAML:
  train.lr=3e-4   clean.languages='[en, fr]'   cluster.profile=jean-zay-h100 cluster.account=abc@h100"""


def epilog() -> str:
    """The overrides' syntax and the stages, in order, from the registry."""
    stages = "\n".join(f"  {s.name:<11} {s.description}" for s in registry.builtin())
    return f"{OVERRIDES}\n\nstages, in order (or 'all'):\n{stages}"


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 too; keep its usage line and add the fix
        self.print_usage(sys.stderr)
        self.exit(2, f"graine: error: {message}\n")


def _common(p: argparse.ArgumentParser, positional: str = "") -> None:
    p.add_argument("-c", "--config", default=os.environ.get("GRAINE_CONFIG"),
                   help="run configuration (YAML), e.g. configs/demo.yaml")
    # Overrides (key=value) are collected from what argparse leaves over, so they may come anywhere.
    p.usage = f"%(prog)s {positional + ' ' if positional else ''}[-c CONFIG] [options] [key=value ...]"


def _trust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="append", default=[], metavar="PATH",
                   help="load this checkpoint folder (or file) even if its pickles could run code: only for a "
                        "checkpoint whose author you trust (repeatable; sets GRAINE_TRUST_CHECKPOINT)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="graine", description="Train BLOOM-style multilingual language models on Slurm.",
               epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    r = sub.add_parser("run", help="run a stage (or all) and everything it needs that is not done",
                       epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("stage", help=f"{', '.join(registry.ORDER)} or all")
    r.add_argument("--executor", "-e", default=os.environ.get("GRAINE_EXECUTOR") or "local",
                   help="inline (this process), local (processes here, default) or slurm")
    r.add_argument("--force", action="store_true", help="redo the stage even if it is complete")
    r.add_argument("--dry-run", action="store_true", help="print the resolved config and the jobs; submit nothing")
    r.add_argument("--wait", action="store_true", help="with --executor slurm: wait for the jobs to finish")
    _trust(r)
    _common(r, "STAGE")

    s = sub.add_parser("status", help="state of every stage of a run")
    _common(s)

    b = sub.add_parser("sbatch", help="print a standalone sbatch script for a stage")
    b.add_argument("stage")
    b.add_argument("--dev", action="store_true", help="a training stage on the profile's dev QoS (short walltime, "
                                                      "quick start: e.g. qos_gpu_h100-dev, 2 h on Jean Zay)")
    _common(b, "STAGE")

    t = sub.add_parser("task", help="run one task of a step (used inside sbatch scripts)")
    t.add_argument("stage")
    t.add_argument("step")
    t.add_argument("--rank", type=int, default=None, help="task index; default $SLURM_PROCID or 0")
    _trust(t)
    _common(t, "STAGE STEP")

    pb = sub.add_parser("publish", help="publish a stage whose tasks are all complete")
    pb.add_argument("stage")
    _common(pb, "STAGE")

    ck = sub.add_parser("checkpoint", help="list, convert (universal) or dump checkpoints")
    ck.add_argument("action", choices=["list", "universal", "dump"])
    ck.add_argument("step", nargs="?", help="checkpoint step (universal, dump)")
    ck.add_argument("--full", action="store_true", help="list: recompute every file's sha256 (default: sizes)")
    _trust(ck)
    _common(ck, "{list,universal,dump} [STEP]")

    v = sub.add_parser("verify", help="re-hash published outputs against their completion records")
    v.add_argument("stage", nargs="?", help="one stage (default: every published stage, and the checkpoints)")
    _common(v, "[STAGE]")

    rp = sub.add_parser("report", help="write <run_dir>/report/index.html and its PNG figures (loss, throughput, "
                                       "perplexity, data mix, tokenizer, lineage)")
    _common(rp)

    pl = sub.add_parser(
        "plan", help="memory per GPU, FLOPs, time, GPU-hours and walltime jobs of the pretrain stage on the profile",
        description="The pretrain stage's resource plan on cluster.profile (formulas: training/plan.py):\n"
                    "- parameters, FLOPs per token;\n"
                    "- memory per GPU by ZeRO stage 0-3: weights, gradients, optimizer states, DeepSpeed buffers,\n"
                    "  activations (with and without activation checkpointing), the loss head and a fixed\n"
                    "  overhead, against the GPU's memory;\n"
                    "- tokens/s at an MFU, time to train.train_tokens, GPU-hours to request, and the\n"
                    "  walltime-limited jobs (requeues) at the profile's gpu QoS limit;\n"
                    "- when it does not fit, the smallest change that does.\n"
                    "Exit 0 whether or not it fits; `graine run pretrain --executor slurm` refuses a plan that\n"
                    "does not fit (exit 2) unless --force.",
        epilog="examples:\n  graine plan -c configs/demo.yaml\n"
               "  graine plan -c configs/bloom-176b.yaml train.zero_stage=3 train.activation_checkpointing=true\n"
               "  graine plan -c configs/bloom-176b.yaml cluster.profile=jean-zay-h100 train.num_nodes=96 --mfu 0.4\n\n"
               + OVERRIDES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("--mfu", type=float, default=None,
                    help="model FLOPs utilisation to assume, e.g. 0.45 (default: the pretrain stage's measured one, "
                         "tests/benchmarks/RESULTS-gpu.md)")
    pl.add_argument("--gpu", default=None, metavar="MODEL",
                    help="plan for this GPU instead of the profile's gpu_model (training/plan.py GPU_MODELS)")
    _common(pl)

    df = sub.add_parser("diff", help="compare two run directories stage by stage and say where they diverge")
    df.add_argument("run_a", metavar="RUN_A", help="a run directory (its run_dir)")
    df.add_argument("run_b", metavar="RUN_B", help="the run directory to compare it with")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides are key=value)")
    args.overrides = extra
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if getattr(args, "trust_checkpoint", None):  # inherited by the tasks and ranks this command starts
        from checkpoints.safe_load import trust

        trust(args.trust_checkpoint)
    try:
        return COMMANDS[args.command](args)
    except GraineError as exc:
        print(f"graine: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("graine: interrupted; completed tasks are kept, re-run the same command to go on", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in FILESYSTEM_ERRORS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"graine: error: cannot write{where}: {exc.strerror}. {FILESYSTEM_ERRORS[exc.errno]}; what completed "
              "before is kept, and the same command goes on once this is fixed", file=sys.stderr)
        return 1


# Filesystem errors a user can fix, with the fix: reported in one line instead of a traceback.
FILESYSTEM_ERRORS = {
    errno.EACCES: "Check the permissions of the run directory (run_dir) and its parents",
    errno.EPERM: "Check the permissions of the run directory (run_dir) and its parents",
    errno.EROFS: "The filesystem is read-only: set run_dir to a writable place ($SCRATCH on Jean Zay)",
    errno.ENOSPC: "The disk is full: free space (df -h) or set run_dir elsewhere",
    errno.EDQUOT: "The disk quota is exhausted: free space (on Jean Zay: idr_quota_user) or set run_dir elsewhere",
}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _config(args, need_run_dir: bool = True):
    if args.config is None:
        raise ConfigError("no run configuration: pass -c CONFIG (e.g. -c configs/demo.yaml)")
    cfg = load_config(args.config, args.overrides)
    # A relative run directory goes where the site keeps run data ($SCRATCH/graine on Jean Zay), the
    # same place for the driver, `graine status` and every job.
    from pipeline.slurm import load_profile

    root = str(load_profile(cfg.cluster.profile).get("run_root") or "")
    if root and not cfg.run_dir.startswith(("/", "$", "~")):
        cfg.run_dir = f"{root.rstrip('/')}/{cfg.run_dir}"
    cfg.run_dir = os.path.expanduser(os.path.expandvars(cfg.run_dir))
    if "$" in cfg.run_dir and need_run_dir:
        raise ConfigError(f"run_dir={cfg.run_dir} names an unset environment variable; set it (e.g. $SCRATCH "
                          "on Jean Zay) or give run_dir as a path")
    return cfg


def cmd_run(args) -> int:
    from pipeline import runner
    from pipeline.executors import EXECUTORS

    if args.executor not in EXECUTORS:
        raise ConfigError(f"--executor {args.executor} is unknown; valid executors: {', '.join(EXECUTORS)}")
    if args.force:  # the training job's refusal of a changed train.init_from reads it (training.init_from)
        from training.init_from import FORCE_ENV

        os.environ[FORCE_ENV] = "1"
    cfg = _config(args)
    targets = runner.resolve([args.stage])
    checks = runner.preflight(cfg, targets, args.executor)  # dry run or not: a bad config exits 2 here
    checks += _check_plan(cfg, targets, args.executor, args.force)
    if args.dry_run:
        print(dry_run(cfg, targets, args.executor, args.force, checks))
        return 0
    runner.run(cfg, [args.stage], executor=args.executor, force=args.force, wait=args.wait,
               command=shlex.join(["graine", *sys.argv[1:]]))
    return 0


def _check_plan(cfg, targets, executor: str, force: bool) -> list[str]:
    """On Slurm, a pretrain job whose plan does not fit its GPUs is not queued (exit 2) unless --force:
    it would wait in the queue for hours, then fail at its first step."""
    from pipeline import runner

    if executor != "slurm" or "pretrain" not in [s.name for s in targets]:
        return []
    upstream = False
    for stage in targets:  # pretrain that is complete and stays so is not submitted: nothing to check
        action = runner.plan_stage(cfg, stage, force, upstream_rerun=upstream).action
        upstream = upstream or action == "run"
        if stage.name == "pretrain" and action == "skip":
            return []
    from pipeline.plan import refusal

    why = refusal(cfg)
    if why and not force:
        raise ConfigError(f"pretrain: {why}. `graine plan -c CONFIG` shows the whole plan; --force submits anyway")
    return [f"pretrain: memory plan ({why + '; submitted anyway: --force' if why else 'fits its GPUs'})"]


def dry_run(cfg, targets, executor: str, force: bool, checks: list[str]) -> str:
    from pipeline import runner

    lines = ["# resolved configuration", cfg.to_yaml().rstrip(), "",
             "# checks passed before submission",
             "config: keys, types and ranges; each section's and each stage's checks across keys (at load)",
             *checks, "", f"# jobs ({executor} executor)"]
    upstream = False
    for stage in targets:
        plan = runner.plan_stage(cfg, stage, force, upstream_rerun=upstream)
        upstream = upstream or plan.action == "run"
        lines.append(f"{stage.name}: {plan.action} — {plan.reason}")
        for step in stage.steps if plan.action == "run" else []:
            ranks = plan.tasks[step.name]
            what = (f"{cfg.train.num_nodes} node(s) x {cfg.train.devices_per_node} process(es)"
                    if step.kind == "gpu" else f"{len(ranks)} task(s) {_ranges(ranks)}")
            if executor == "slurm":
                from pipeline.slurm import job_for

                job = job_for(cfg, step.kind, len(ranks) or 1)
                if step.kind == "gpu":
                    what = f"{job.params['nodes']} node(s) x {job.params['ntasks_per_node']} task(s), one per device"
                what += "\n    sbatch " + " ".join(f"{k}={v}" for k, v in job.params.items() if k != "setup")
            line = f"  step {step.name} ({step.kind}): {what}"
            lines.append(line)
        if plan.action == "run" and stage.publish:
            lines.append(f"  then publish {cfg.run_dir}/{stage.folder}/")
    return "\n".join(lines)


def _ranges(ranks: list[int]) -> str:
    if not ranks:
        return ""
    return f"[{ranks[0]}..{ranks[-1]}]" if ranks == list(range(ranks[0], ranks[-1] + 1)) else str(ranks)


def cmd_status(args) -> int:
    from pipeline.status import format_status

    print(format_status(_config(args)))
    return 0


def cmd_sbatch(args) -> int:
    from pipeline.runner import preflight
    from pipeline.slurm import render_sbatch

    cfg = _config(args)
    preflight(cfg, [registry.get(args.stage)], "slurm")
    print(render_sbatch(cfg, registry.get(args.stage), args.config, args.overrides, dev=args.dev))
    return 0


def cmd_task(args) -> int:
    from pipeline.task import TaskRunner

    cfg = _config(args)
    stage = registry.get(args.stage)
    steps = {s.name: s for s in stage.steps}
    if args.step not in steps:
        raise ConfigError(f"stage {stage.name} has no step '{args.step}'; its steps: {', '.join(steps)}")
    step = steps[args.step]
    if stage.publish:  # training checks its own checkpoints' data fingerprint instead
        _check_work_folder(cfg, stage)
    rank = args.rank if args.rank is not None else int(os.environ.get("SLURM_PROCID", 0))
    n = step.num_tasks(cfg)
    if step.kind == "cpu" and not 0 <= rank < n:
        raise ConfigError(f"--rank {rank} is outside 0..{n - 1} for {stage.name}/{step.name}")
    result = TaskRunner(cfg.to_dict(), stage, step.name, n)(rank)
    print(result)
    return 0


def _check_work_folder(cfg, stage) -> None:
    """Hand-run tasks must not mix with a previous attempt's parts made from other inputs or config."""
    from core import lineage
    from pipeline.task import StagePaths

    paths = StagePaths(cfg.run_path, stage.name)
    key = lineage.fingerprint(cfg, stage, registry.folder_of).key
    stamp = paths.read_fingerprint()
    if "key" not in stamp:
        paths.write_fingerprint(key)
        return
    if stamp["key"] != key:
        raise ConfigError(f"{paths.work} holds tasks of an attempt with other inputs or config; remove it "
                          f"(or run `graine run {stage.name} --force`) before running tasks by hand")


def cmd_publish(args) -> int:
    from pipeline.task import StagePaths, publish

    cfg = _config(args)
    stage = registry.get(args.stage)
    paths = StagePaths(cfg.run_path, stage.name)
    for step in stage.steps:
        n = step.count(cfg)
        missing = [r for r in range(n) if not paths.marker(step.name, r).exists()]
        if missing:
            raise GraineError(f"{stage.name}/{step.name}: tasks {missing[:10]} are not complete; run them first")
    print(publish(cfg, stage))
    return 0


def cmd_checkpoint(args) -> int:
    from pipeline.checkpoint_cli import checkpoint_command

    return checkpoint_command(_config(args), args.action, args.step, full=args.full)


def cmd_verify(args) -> int:
    """Exit 0 when every published output matches its record (checksums recomputed), 1 otherwise."""
    from checkpoints import manifest
    from core.lineage import read_record
    from core.verify import check_folder

    cfg = _config(args)
    names = [registry.get(args.stage).name] if args.stage else registry.known()
    problems, checked = [], 0
    for name in names:
        folder = cfg.run_path / registry.get(name).folder
        record = read_record(folder)
        if record is None:
            print(f"{name:<11} not published")
            continue
        found = check_folder(folder, record, full=True)
        checked += len(record.get("files") or {})
        print(f"{name:<11} {'OK' if not found else 'CHANGED'} ({len(record.get('files') or {})} files)")
        problems += [f"  {p}" for p in found]
    if args.stage in (None, "pretrain"):
        for step in sorted((cfg.run_path / "checkpoints").glob("global_step*[0-9]")):
            why = manifest.verify(step, full=True)
            print(f"{step.name:<11} {'OK' if why is None else 'INVALID: ' + why}")
            problems += [f"  {step}: {why}"] if why else []
    print("\n".join(problems) if problems else f"every file matches its record ({checked} stage files re-hashed)")
    return 1 if problems else 0


def cmd_diff(args) -> int:
    """Exit 0 when the two runs' published outputs are the same, 1 when they diverge (like diff(1))."""
    from pathlib import Path

    from pipeline.diff import diff_runs

    report = diff_runs(Path(args.run_a), Path(args.run_b))
    print(report.text())
    return 0 if report.diverged_at is None else 1


def cmd_plan(args) -> int:
    from pipeline.plan import format_plan, make_plan

    cfg = _config(args, need_run_dir=False)  # the run directory is only looked in for a trained tokenizer
    print(format_plan(cfg, make_plan(cfg, mfu=args.mfu, gpu=args.gpu)))
    return 0


def cmd_report(args) -> int:
    from pipeline.report import build_report

    print(build_report(_config(args)))
    return 0


COMMANDS = {"run": cmd_run, "status": cmd_status, "sbatch": cmd_sbatch, "task": cmd_task,
            "publish": cmd_publish, "checkpoint": cmd_checkpoint, "verify": cmd_verify,
            "diff": cmd_diff, "report": cmd_report, "plan": cmd_plan}


def entry() -> None:  # pragma: no cover - console script
    signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C: local tasks end before the lock is released
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # A process that ran a distributed step leaves through os._exit (gloo shutdown race, docs/DEEPSPEED_CPU.md).
    task = sys.modules.get("pipeline.task")
    os._exit(code) if os.environ.get("RANK") or getattr(task, "ran_distributed", False) else sys.exit(code)


if __name__ == "__main__":
    entry()
