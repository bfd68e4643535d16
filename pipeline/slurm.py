"""Slurm resources for graine's jobs: site profiles, merged with the run config, as submitit parameters.

A profile (`slurm/profiles/<name>.yaml`) describes a site once: per kind of job (`cpu` data tasks, `gpu`
training, `dev` short GPU runs; an `accel` job, one task on one GPU for evaluation, is cut from `gpu`) the
submitit `SlurmExecutor` parameters, the module/setup lines, the
environment and where run directories go. A run config picks a profile with `cluster.profile` and
overrides any parameter with `cluster.slurm.*` (every job) then `cluster.cpu.*` / `cluster.gpu.*`.

`job_for()` gives what the Slurm executor passes to submitit; `render_sbatch()` prints the same job as a
standalone script for people who submit by hand. Everything is validated before anything is submitted.

    python -m pipeline.slurm --refresh-examples   # rewrite slurm/examples/*.sbatch after a change here
"""

from __future__ import annotations

import argparse
import copy
import functools
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from submitit.slurm.slurm import _get_default_parameters

from core.errors import ConfigError
from core.stage import Stage
from pipeline.config import RunConfig

Kind = Literal["cpu", "gpu", "dev", "accel"]
KINDS: tuple[str, ...] = ("cpu", "gpu", "dev")  # a profile's job sections
JOB_KINDS = (*KINDS, "accel")  # accel: one task on one GPU, from the profile's gpu section
ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = ROOT / "slurm" / "profiles"
EXAMPLE_DIR = ROOT / "slurm" / "examples"
REFRESH_COMMAND = ".venv/bin/python -m pipeline.slurm --refresh-examples"

# Every job's tasks use the CPUs the job was given: srun >= 22.05 no longer passes --cpus-per-task on to
# its steps (SRUN_CPUS_PER_TASK does), and thread pools (torch/OpenMP, numpy's BLAS, tokenizers' rayon)
# size themselves from these variables, not from the node's core count. A profile's or config's `env`
# comes after, so it can still set OMP_NUM_THREADS itself.
CPU_LINES = [
    '[ -z "${SLURM_CPUS_PER_TASK:-}" ] || export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"',
    'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" RAYON_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
]
# srun's arguments for training steps: a rank that exits with an error kills the step, and when one
# rank ends the others get 60 s to end too; the job then fails instead of waiting for a dead peer.
TRAIN_SRUN_ARGS = ("--kill-on-bad-exit=1", "--wait=60")

# Keys graine reads beside submitit's own parameters in a profile's or a config's job section.
GRAINE_KEYS = ("env",)
# A dev run is a short GPU run: it takes cluster.gpu overrides except these, which make it "short".
DEV_KEEPS = ("qos", "time")


@dataclass
class SlurmJob:
    """One job's resources. `params` go as they are to `submitit.SlurmExecutor.update_parameters`:
    `setup` already exports `env`, which is kept apart for the local executor and for display."""

    params: dict[str, Any]
    env: dict[str, str]
    run_root: str  # where relative run directories go on this site ("" = the submission directory)
    kind: str = "cpu"
    profile: str = ""
    num_tasks: int = 1  # cpu: tasks of the step (array elements); gpu: processes (nodes x per node)

    @property
    def gpus_per_node(self) -> int:
        gres = str(self.params.get("gres") or "")
        match = re.fullmatch(r"gpu(?::[\w-]+)?:(\d+)", gres)
        return int(match.group(1)) if match else int(self.params.get("gpus_per_node") or 0)


# ------------------------------------------------------------------------------------------ profiles
def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@functools.cache
def _read_profile(name: str) -> dict[str, Any]:
    path = PROFILE_DIR / f"{name}.yaml"
    if name not in profile_names():
        raise ConfigError(f"cluster.profile={name!r} is not a site profile; valid profiles: "
                          f"{', '.join(profile_names())} (files in {PROFILE_DIR})")
    data = yaml.safe_load(path.read_text()) or {}
    for kind in KINDS:
        _check_keys(data.get(kind) or {}, f"{path.name}: {kind}")
    return data


def load_profile(name: str) -> dict[str, Any]:
    """The profile as a fresh dict (callers may change it)."""
    return copy.deepcopy(_read_profile(name))


def valid_parameters() -> list[str]:
    return sorted(_get_default_parameters())


def _check_keys(section: dict[str, Any], where: str) -> None:
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping of Slurm parameters, got {section!r}")
    valid = set(valid_parameters()) | set(GRAINE_KEYS)
    for key in section:
        if key not in valid:
            raise ConfigError(
                f"unknown Slurm parameter '{where}.{key}'; valid ones (submitit SlurmExecutor): "
                f"{', '.join(sorted(valid))}. Other sbatch options go under "
                f"{where}.additional_parameters, e.g. {where}.additional_parameters.{key}=...")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Later values win; env and additional_parameters merge key by key; None removes a key."""
    out = dict(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif key in ("env", "additional_parameters") and isinstance(value, dict):
            out[key] = _merge(out.get(key) or {}, value)
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------- job_for
def job_for(cfg: RunConfig, kind: Kind, num_tasks: int = 1) -> SlurmJob:
    """The Slurm job of one step of `kind` under `cfg.cluster`; ConfigError names the key to fix.

    cpu: one array element (1 node, 1 task); `num_tasks` is the array size and caps array_parallelism.
    gpu/dev: `train.num_nodes` nodes with one task per GPU. On a profile with GPUs the profile's
    gpus_per_node wins (change it with cluster.gpu.gpus_per_node); `train.devices_per_node` only sets
    the processes per node where there are no GPUs (local-cluster), e.g. the CPU demo's 2 gloo ranks.
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"job kind {kind!r} is not one of {JOB_KINDS}")  # a caller's bug, not user input
    cluster = cfg.cluster
    profile = _read_profile(cluster.profile)
    if not profile.get("slurm", True):
        raise ConfigError(f"cluster.profile={cluster.profile} runs without Slurm; pick a Slurm profile "
                          f"({', '.join(n for n in profile_names() if n != 'local')}) for --executor slurm")
    params = _merged_params(cfg, profile, kind)
    env = {**(profile.get("env") or {}), **params.pop("env", {})}
    env = {str(k): str(v) for k, v in env.items()}
    _check_env_names(env, f"cluster.{_section(kind)}")
    _apply_account(cfg, profile, params, kind)
    _apply_shape(cfg, profile, params, kind, num_tasks)
    params["time"] = _minutes(params.get("time"), f"cluster.{_section(kind)}.time")
    params["setup"] = list(params.get("setup") or []) + CPU_LINES + [f"export {k}={_shell_value(v)}" for k, v in env.items()]
    _check_gpu_rules(cfg, profile, params, kind)
    total = num_tasks if kind == "cpu" else params["nodes"] * params["ntasks_per_node"]
    return SlurmJob(params=params, env=env, run_root=str(profile.get("run_root") or ""),
                    kind=kind, profile=cluster.profile, num_tasks=total)


@dataclass(frozen=True)
class TrainingAllocation:
    """What `graine plan` reads of a profile for the pretrain job (no account needed)."""

    gpus_per_node: int  # 0: CPU processes (train.devices_per_node of them)
    gpu_model: str  # the profile's `gpu_model` (training.plan.GPU_MODELS), "" without GPUs
    walltime_min: int  # the gpu QoS limit; 0 where the profile has none (no Slurm)
    signal_delay_s: int
    qos: str


def training_allocation(cfg: RunConfig) -> TrainingAllocation:
    """The gpu job's GPUs per node, model, walltime and QoS on `cluster.profile` with the config's
    cluster.slurm / cluster.gpu overrides, as job_for merges them."""
    profile = _read_profile(cfg.cluster.profile)
    params = _merged_params(cfg, profile, "gpu")
    gpus = _gpus_per_node(params, "cluster.gpu")
    time = _minutes(params["time"], "cluster.gpu.time") if params.get("time") else 0
    return TrainingAllocation(gpus, str(profile.get("gpu_model") or "") if gpus else "", time,
                              int(params.get("signal_delay_s") or 0), str(params.get("qos") or ""))


def _section(kind: str) -> str:
    return "cpu" if kind == "cpu" else "gpu"


def _merged_params(cfg: RunConfig, profile: dict[str, Any], kind: str) -> dict[str, Any]:
    cluster = cfg.cluster
    _check_keys(cluster.slurm, "cluster.slurm")
    _check_keys(cluster.cpu, "cluster.cpu")
    _check_keys(cluster.gpu, "cluster.gpu")
    overrides = dict(getattr(cluster, _section(kind)))
    if kind == "dev":
        overrides = {k: v for k, v in overrides.items() if k not in DEV_KEEPS}
    params = _merge(copy.deepcopy(profile.get("gpu" if kind == "accel" else kind) or {}), cluster.slurm)
    return _merge(params, overrides)


def _apply_account(cfg: RunConfig, profile: dict[str, Any], params: dict[str, Any], kind: str) -> None:
    # A kind-specific account (cluster.cpu.account=abc@cpu) is more specific than cluster.account.
    if cfg.cluster.account and "account" not in params:
        params["account"] = cfg.cluster.account
    rules = profile.get("account") or {}
    if rules.get("required") and not params.get("account"):
        raise ConfigError(f"cluster.account is not set and cluster.profile={cfg.cluster.profile} needs one; "
                          f"set cluster.account={rules.get('example', 'abc@h100')}")
    suffix = rules.get("gpu_suffix")
    account = str(params.get("account") or "")
    if kind != "cpu" and suffix and not account.endswith(suffix):
        raise ConfigError(f"cluster.account={account} is not an {suffix} account, which "
                          f"cluster.profile={cfg.cluster.profile} GPU jobs need; set "
                          f"cluster.account={account.split('@')[0]}{suffix} or pick the profile of your account")


def _apply_shape(cfg: RunConfig, profile: dict[str, Any], params: dict[str, Any], kind: str,
                 num_tasks: int) -> None:
    """Nodes, tasks and GPUs: one task per array element on CPU, one task per GPU for training."""
    if kind == "cpu":
        params.setdefault("nodes", 1)
        params.setdefault("ntasks_per_node", 1)
        params["array_parallelism"] = min(int(params.get("array_parallelism", 256)), max(num_tasks, 1))
        return
    gpus = _gpus_per_node(params, f"cluster.{_section(kind)}")
    if kind == "accel":  # one task on one GPU (or one process where the profile's gpu jobs have none)
        gpus = min(gpus, 1)
    params.pop("gres", None)
    params.pop("gpus_per_node", None)
    if gpus:
        if profile.get("gpu_request", "gpus_per_node") == "gres":
            params["gres"] = f"gpu:{gpus}"
        else:
            params["gpus_per_node"] = gpus
    params["nodes"] = 1 if kind == "accel" else cfg.train.num_nodes
    params["ntasks_per_node"] = 1 if kind == "accel" else gpus or cfg.train.devices_per_node


def _gpus_per_node(params: dict[str, Any], where: str) -> int:
    gres = params.get("gres")
    if gres is not None:
        match = re.fullmatch(r"gpu(?::[\w-]+)?:(\d+)", str(gres))
        if not match:
            raise ConfigError(f"{where}.gres={gres!r} is not gpu:N; set {where}.gpus_per_node=N instead")
        return int(match.group(1))
    value = params.get("gpus_per_node") or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}.gpus_per_node={value!r} must be a whole number of GPUs, e.g. 4")
    return value


def _check_gpu_rules(cfg: RunConfig, profile: dict[str, Any], params: dict[str, Any], kind: str) -> None:
    if kind == "cpu" and params.get("gres") and re.fullmatch(r"gpu(?::[\w-]+)?:0", str(params["gres"])):
        # Sites such as Jean Zay reject CPU jobs that name a GPU resource, even zero of it.
        raise ConfigError("cluster.cpu.gres asks for 0 GPUs; remove it: CPU jobs must not name a GPU gres")
    account = str(params.get("account") or "")
    if kind != "cpu" and account.endswith("@h100") and "h100" not in str(params.get("constraint") or ""):
        raise ConfigError(f"cluster.account={account} is an H100 account: GPU jobs need the h100 constraint "
                          "(Jean Zay refuses them otherwise); set cluster.gpu.constraint=h100 or "
                          "cluster.profile=jean-zay-h100")


def _minutes(value: Any, key: str) -> int:
    """Walltime as minutes: an int, or one of Slurm's strings (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]])."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value or "")
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text)
    if not match or not any(c not in "0:-" for c in text):
        raise ConfigError(f"{key}={value!r} is not a walltime; give minutes (e.g. 1200) or '20:00:00' (quoted: "
                          "unquoted YAML reads 20:00:00 as a base-60 number)")
    days, rest = match.groups()
    parts = [int(p) for p in rest.split(":")]
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        parts += [0] * (3 - len(parts))
        seconds = ((int(days) * 24 + parts[0]) * 60 + parts[1]) * 60 + parts[2]
    else:  # MM, MM:SS, HH:MM:SS
        parts = {1: [0, *parts, 0], 2: [0, *parts], 3: parts}[len(parts)]
        seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    return -(-seconds // 60)  # Slurm rounds a partial minute up


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})")


def _shell_value(value: str) -> str:
    """`value` as one shell word: single-quoted, so that nothing in it is interpreted ($(...), backticks,
    ;, quotes), except `$NAME` and `${NAME}` references, which expand on the compute node ($WORK, $PATH).

    >>> _shell_value("$WORK/hf $(id)")
    '"${WORK}"\'/hf $(id)\''
    """
    parts, pos = [], 0
    for m in _REFERENCE.finditer(value):
        if m.start() > pos:
            parts.append(_single_quoted(value[pos:m.start()]))
        parts.append('"${%s}"' % (m.group(1) or m.group(2)))
        pos = m.end()
    if pos < len(value) or not parts:
        parts.append(_single_quoted(value[pos:]))
    return "".join(parts)


def _single_quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _check_env_names(env: dict[str, str], where: str) -> None:
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{where}.env key {name!r} is not an environment variable name (letters, digits and _, "
                              "not starting with a digit); rename it")


def run_dir_for(cfg: RunConfig, job: SlurmJob) -> str:
    """The run directory as the job sees it: a relative `run_dir` goes under the site's run_root."""
    if not job.run_root or cfg.run_dir.startswith(("/", "$", "~")):
        return cfg.run_dir
    return f"{job.run_root.rstrip('/')}/{cfg.run_dir}"


# ------------------------------------------------------------------------------------ render_sbatch
# Parameters submitit consumes itself rather than writing as #SBATCH lines (or that it writes for itself).
_NOT_SBATCH = {"setup", "teardown", "signal_delay_s", "array_parallelism", "stderr_to_stdout", "srun_args",
               "use_srun", "wckey", "job_name", "additional_parameters", "num_gpus", "map_count"}
_FIRST = ("job_name", "account", "partition", "constraint", "qos", "time", "nodes", "ntasks",
          "ntasks_per_node", "gres", "gpus_per_node", "cpus_per_task", "hint")


def render_sbatch(cfg: RunConfig, stage: Stage, config_path: str, overrides: list[str], *,
                  dev: bool = False, python: str | None = None) -> str:
    """A standalone, commented sbatch script running `stage` as `graine run --executor slurm` would.

    graine runs in the job through `python` (default: the interpreter rendering the script, the
    environment graine is installed in; on a cluster the module's, the same path on compute nodes).
    """
    gpu = any(step.kind == "gpu" for step in stage.steps)
    accel = not gpu and any(step.kind == "accel" for step in stage.steps)
    kind = ("dev" if dev else "gpu") if gpu else "accel" if accel else "cpu"
    tasks = max((step.num_tasks(cfg) for step in stage.steps if step.kind == "cpu"), default=1)
    job = job_for(cfg, kind, num_tasks=tasks)
    if not gpu and not accel:
        # One allocation runs every task of a step, at most this many at once: no more than the
        # profile's nodes can give (script_tasks), so that the job can start at all.
        job.num_tasks = min(tasks, int(_read_profile(cfg.cluster.profile).get("script_tasks") or tasks))
    run_dir = run_dir_for(cfg, job)
    args = ["-c", shlex.quote(config_path), *(shlex.quote(o) for o in overrides)]
    if run_dir != cfg.run_dir:
        args.append('"run_dir=$RUN_DIR"')
    lines = _header(cfg, stage, job, config_path, overrides)
    lines += _sbatch_lines(stage, job)
    lines += ["", "# Site setup: modules, then the environment (caches under $WORK, no internet on compute nodes)."]
    lines += job.params["setup"]
    lines += ["", "set -eo pipefail  # after the module lines: module scripts are not written for -e"]
    if run_dir != cfg.run_dir:
        lines += [f"RUN_DIR={_shell_value(run_dir)}  # run directories on this site go under {job.run_root}"]
    lines += ["# graine through the interpreter it is installed in (no `graine` needed on the job's PATH).",
              f"GRAINE_PY={shlex.quote(python or sys.executable)}"]
    lines += _gpu_body(stage, job, args) if gpu else _cpu_body(cfg, stage, job, args)
    return "\n".join(lines) + "\n"


def _header(cfg: RunConfig, stage: Stage, job: SlurmJob, config_path: str, overrides: list[str]) -> list[str]:
    command = shlex.join(["graine", "sbatch", stage.name, "-c", config_path, *overrides])
    shape = (f"{job.params['nodes']} node(s) x {job.params['ntasks_per_node']} tasks, one per "
             f"{'GPU' if job.gpus_per_node else 'process'}" if job.kind != "cpu"
             else f"{job.num_tasks} tasks in one allocation")
    return [
        "#!/bin/bash",
        f"# graine stage '{stage.name}' on profile {job.profile} ({job.kind} job: {shape}).",
        f"# Rendered by: {command}",
        "# Submit it from the directory holding the config (relative paths are resolved there): sbatch <this file>",
        "# `graine run ... --executor slurm` submits the same resources through submitit instead.",
    ]


def _sbatch_lines(stage: Stage, job: SlurmJob) -> list[str]:
    params = {k: v for k, v in job.params.items() if k not in _NOT_SBATCH}
    params.update(job.params.get("additional_parameters") or {})
    params["job_name"] = f"graine-{stage.name}"
    if job.kind == "cpu":
        # One allocation for every task of every step, instead of the array submitit uses.
        params.pop("nodes", None)
        params.pop("ntasks_per_node", None)
        params["ntasks"] = job.num_tasks
    ordered = [k for k in _FIRST if k in params] + sorted(k for k in params if k not in _FIRST)
    lines = [_flag(k, params[k]) for k in ordered]
    lines.append("#SBATCH --output=%x-%j.out  # %x job name, %j job id; in the submission directory")
    if job.kind in ("gpu", "dev"):  # the training's requeue chain (its trap is in _gpu_body)
        lines.append("#SBATCH --open-mode=append  # a requeued job adds to its log instead of replacing it")
        delay = int(job.params.get("signal_delay_s", 90))
        lines.append(f"# USR1 to this batch shell {delay} s before the walltime: the trap below asks the "
                     "training to save and stop, then requeues the job.")
        lines.append(f"#SBATCH --signal=B:USR1@{delay}")
    return lines


def _flag(key: str, value: Any) -> str:
    key = key.replace("_", "-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


GRAINE = '"$GRAINE_PY" -m pipeline.cli'


def _task(stage: Stage, step: str, args: list[str], rank: str = "") -> str:
    """The command of one task; `step` and `rank` are shell words as they are to appear."""
    return " ".join([GRAINE, "task", shlex.quote(stage.name), step, *([rank] if rank else []), *args])


def _cpu_body(cfg: RunConfig, stage: Stage, job: SlurmJob, args: list[str]) -> list[str]:
    one_task = _task(stage, '"$1"', args, '--rank "$rank"')
    lines = ["", f"# Each task of a step is a job step of its own (--exact), {job.num_tasks} at a time in this allocation;",
             "# Slurm starts the next as one ends. A task that already completed (its completion marker exists)",
             "# returns at once, so resubmitting this script redoes only the unfinished tasks.",
             "# `graine run --executor slurm` submits each step as a job array instead, one element per task.",
             "run_step() {  # run_step STEP NUM_TASKS: every task in the background, then fail if one failed",
             '    local pids=() rank',
             '    for ((rank = 0; rank < $2; rank++)); do',
             f"        srun --ntasks=1 --exact --kill-on-bad-exit=1 {one_task} &",
             '        pids+=($!)',
             "    done",
             '    for pid in "${pids[@]}"; do wait "$pid"; done',
             "}"]
    for step in stage.steps:
        lines += ["", f"# step {step.name}: {step.num_tasks(cfg)} task(s)",
                  f"run_step {shlex.quote(step.name)} {step.num_tasks(cfg)}"]
    if stage.publish:
        lines += ["", "# Every step complete: publish the staging folder as the stage's output.",
                  " ".join([GRAINE, "publish", shlex.quote(stage.name), *args])]
    return lines


def _gpu_body(stage: Stage, job: SlurmJob, args: list[str]) -> list[str]:
    lines = [
        "",
        "# torch.distributed from Slurm, inside each task (graine.distributed): rank = SLURM_PROCID, local",
        "# rank = SLURM_LOCALID, world size = SLURM_NTASKS, rendezvous on the first node of the job at port",
        "# 10000 + job id % 20000 (the same after a requeue). Export MASTER_ADDR/MASTER_PORT here to override.",
        "# A rank that fails ends the step (--kill-on-bad-exit); when one rank ends, the others get 60 s",
        "# (--wait); a rank stuck on a dead peer fails after train.dist_timeout_min.",
        "",
        "# Long runs outlive the walltime; chain jobs in one of two ways:",
        "#  1. requeue (this script): USR1 arrives before the walltime, the training saves a checkpoint and",
        "#     exits, and `scontrol requeue $SLURM_JOB_ID` puts the same job back in the queue; it resumes",
        "#     from checkpoints/latest. Stop a chain with `scancel`, pause it with `scontrol hold`.",
        "#  2. an array run one element at a time: `sbatch --array=1-10%1 <this file>`; each element resumes",
        "#     where the last stopped (set train.exit_duration_min below the walltime so it stops cleanly).",
        "#     Array elements are not requeued: the next element continues.",
        "STOP_REQUESTED=0",
        "on_usr1() {",
        '    echo "USR1: walltime close, asking the training to save and stop"',
        "    STOP_REQUESTED=1",
        '    kill -USR1 "$SRUN_PID" 2>/dev/null || true  # srun forwards USR1 to every task',
        "}",
        "trap on_usr1 USR1",
    ]
    for step in stage.steps:
        lines += ["", f"# step {step.name}: one task per {'GPU' if job.gpus_per_node else 'process'}",
                  f"srun {' '.join(TRAIN_SRUN_ARGS)} {_task(stage, shlex.quote(step.name), args)} &",
                  "SRUN_PID=$!",
                  "# The trap interrupts `wait`: wait again until srun itself has exited.",
                  'rc=0; while :; do wait "$SRUN_PID" && rc=0 || rc=$?; kill -0 "$SRUN_PID" 2>/dev/null || break; done',
                  'if [ "$STOP_REQUESTED" = 1 ] && [ "$rc" = 0 ] && [ -z "${SLURM_ARRAY_JOB_ID:-}" ]; then',
                  '    scontrol requeue "$SLURM_JOB_ID"; exit 0',
                  "fi",
                  '[ "$rc" = 0 ] || exit "$rc"']
    return lines


# ----------------------------------------------------------------------------------------- examples
# Committed examples: (file, stage, overrides), rendered from the default config plus these overrides.
EXAMPLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("pretrain-jean-zay-a100.sbatch", "pretrain", ("cluster.profile=jean-zay-a100", "cluster.account=abc@a100")),
    ("pretrain-jean-zay-h100.sbatch", "pretrain", ("cluster.profile=jean-zay-h100", "cluster.account=abc@h100")),
    ("clean-jean-zay-a100.sbatch", "clean", ("cluster.profile=jean-zay-a100", "cluster.account=abc@a100")),
    ("evaluate-jean-zay-h100.sbatch", "evaluate", ("cluster.profile=jean-zay-h100", "cluster.account=abc@h100")),
)
EXAMPLE_CONFIG = "configs/demo.yaml"  # and graine run by the site module's `python` (a rendered script names the renderer's interpreter)


def render_examples() -> dict[str, str]:
    from pipeline import registry
    from pipeline.config import load_config

    out = {}
    for filename, stage, overrides in EXAMPLES:
        cfg = load_config(None, list(overrides))
        out[filename] = render_sbatch(cfg, registry.get(stage), EXAMPLE_CONFIG, list(overrides), python="python")
    return out


def stale_examples() -> list[str]:
    """Committed examples that differ from what the generator renders now."""
    return [name for name, text in render_examples().items()
            if not (EXAMPLE_DIR / name).is_file() or (EXAMPLE_DIR / name).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.slurm", description=__doc__.split("\n")[0])
    parser.add_argument("--refresh-examples", action="store_true", help=f"rewrite {EXAMPLE_DIR}/*.sbatch")
    parser.add_argument("--check-examples", action="store_true", help="exit 1 when an example is stale")
    opts = parser.parse_args(argv)
    if opts.refresh_examples:
        EXAMPLE_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in render_examples().items():
            (EXAMPLE_DIR / name).write_text(text)
            print(f"wrote {EXAMPLE_DIR / name}")
        return 0
    if opts.check_examples:
        stale = stale_examples()
        for name in stale:
            print(f"{EXAMPLE_DIR / name} is stale; run {REFRESH_COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
