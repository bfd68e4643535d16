"""Site profiles, their merge with a run config, and the sbatch scripts rendered from them."""

from __future__ import annotations

import re

import pytest

from core.errors import ConfigError
from pipeline import registry, slurm
from pipeline.config import load_config

H100 = ["cluster.profile=jean-zay-h100", "cluster.account=abc@h100"]
A100 = ["cluster.profile=jean-zay-a100", "cluster.account=abc@a100"]


def cfg(*overrides: str):
    return load_config(None, list(overrides))


def render(stage: str, overrides: list[str], **kw) -> str:
    return slurm.render_sbatch(cfg(*overrides), registry.get(stage), "configs/demo.yaml", overrides, **kw)


def sbatch_flags(script: str) -> list[str]:
    return [line.split()[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


@pytest.mark.parametrize("name", ["jean-zay-a100", "jean-zay-h100", "jean-zay-v100", "generic", "local-cluster"])
@pytest.mark.parametrize("kind", ["cpu", "gpu", "dev", "accel"])
def test_every_slurm_profile_gives_valid_submitit_parameters(name, kind):
    account = {"jean-zay-a100": "abc@a100", "jean-zay-h100": "abc@h100", "jean-zay-v100": "abc@v100"}.get(name, "")
    job = slurm.job_for(cfg(f"cluster.profile={name}", f"cluster.account={account}"), kind, num_tasks=3)
    assert set(job.params) <= set(slurm.valid_parameters())
    assert isinstance(job.params["time"], int) and job.params["time"] > 0
    assert job.env["HF_HUB_OFFLINE"] == "1"
    assert "export HF_HUB_OFFLINE='1'" in job.params["setup"]
    if kind == "cpu":
        assert "gres" not in job.params and not job.params.get("gpus_per_node")
        assert job.params["array_parallelism"] == 3
    if kind == "accel":  # one task on (at most) one GPU, whatever the training's shape
        assert (job.params["nodes"], job.params["ntasks_per_node"], job.num_tasks) == (1, 1, 1)
        assert job.gpus_per_node == (0 if name == "local-cluster" else 1)


def test_profile_list_and_unknown_profile():
    assert {"jean-zay-a100", "jean-zay-h100", "jean-zay-v100", "generic", "local-cluster", "local"} <= set(
        slurm.profile_names())
    with pytest.raises(ConfigError, match=r"cluster.profile='jean-zay-h200'.*jean-zay-h100.*local-cluster"):
        slurm.job_for(cfg("cluster.profile=jean-zay-h200"), "gpu")


def test_local_profile_is_not_for_slurm():
    assert slurm.load_profile("local")["cpu"]["cpus_per_task"] >= 1
    with pytest.raises(ConfigError, match="cluster.profile=local runs without Slurm"):
        slurm.job_for(cfg(), "cpu")


def test_overrides_merge_all_jobs_then_kind():
    job = slurm.job_for(cfg(*H100, "cluster.slurm.time=30", "cluster.slurm.mail_user=a@b.fr",
                            "cluster.gpu.time=6000", "cluster.gpu.qos=qos_gpu_h100-t4",
                            "cluster.gpu.additional_parameters.hint=multithread"), "gpu")
    assert job.params["time"] == 6000 and job.params["qos"] == "qos_gpu_h100-t4"
    assert job.params["mail_user"] == "a@b.fr"
    # additional_parameters merge key by key: the profile's requeue stays.
    assert job.params["additional_parameters"] == {"hint": "multithread", "requeue": True}
    cpu = slurm.job_for(cfg(*H100, "cluster.slurm.time=30", "cluster.gpu.time=6000"), "cpu")
    assert cpu.params["time"] == 30 and cpu.params["partition"] == "cpu_p1"
    # A dev run keeps its short qos and time, but takes the other GPU overrides.
    dev = slurm.job_for(cfg(*H100, "cluster.gpu.time=6000", "cluster.gpu.qos=x", "cluster.gpu.cpus_per_task=12"), "dev")
    assert (dev.params["qos"], dev.params["time"], dev.params["cpus_per_task"]) == ("qos_gpu_h100-dev", 120, 12)


def test_null_removes_a_profile_parameter_and_walltime_strings_are_minutes():
    # Quoted: unquoted YAML reads 20:00:00 as a base-60 integer (72000).
    job = slurm.job_for(cfg(*H100, "cluster.gpu.qos=null", "cluster.gpu.time='20:00:00'"), "gpu")
    assert "qos" not in job.params and job.params["time"] == 1200
    assert slurm.job_for(cfg(*H100, "cluster.gpu.time=1-00:00:00"), "gpu").params["time"] == 1440
    with pytest.raises(ConfigError, match=r"cluster.gpu.time='soon'"):
        slurm.job_for(cfg(*H100, "cluster.gpu.time=soon"), "gpu")


def test_unknown_parameter_names_the_key_and_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        slurm.job_for(cfg(*H100, "cluster.gpu.gpus_per_nod=4"), "gpu")
    message = str(err.value)
    assert "cluster.gpu.gpus_per_nod" in message
    for valid in ("gpus_per_node", "cpus_per_task", "partition", "additional_parameters"):
        assert valid in message
    with pytest.raises(ConfigError, match=r"cluster.slurm.hint.*additional_parameters"):
        slurm.job_for(cfg(*H100, "cluster.slurm.hint=nomultithread"), "cpu")


def test_missing_or_wrong_account_on_jean_zay():
    with pytest.raises(ConfigError, match=r"cluster.account=abc@h100"):
        slurm.job_for(cfg("cluster.profile=jean-zay-h100"), "gpu")
    with pytest.raises(ConfigError, match=r"set cluster.account=abc@a100"):
        slurm.job_for(cfg("cluster.profile=jean-zay-a100"), "cpu")
    with pytest.raises(ConfigError, match=r"cluster.account=abc@a100 is not an @h100 account"):
        slurm.job_for(cfg("cluster.profile=jean-zay-h100", "cluster.account=abc@a100"), "gpu")
    with pytest.raises(ConfigError, match=r"H100 account.*cluster.gpu.constraint=h100"):
        slurm.job_for(cfg("cluster.profile=generic", "cluster.account=abc@h100"), "gpu")
    # A CPU account set for CPU jobs only is more specific than cluster.account.
    assert slurm.job_for(cfg(*H100, "cluster.cpu.account=abc@cpu"), "cpu").params["account"] == "abc@cpu"


def test_gpu_shape_one_task_per_gpu():
    job = slurm.job_for(cfg(*H100, "train.num_nodes=3", "train.devices_per_node=2"), "gpu")
    assert (job.params["nodes"], job.params["ntasks_per_node"], job.params["gres"]) == (3, 4, "gpu:4")
    assert job.gpus_per_node == 4 and job.num_tasks == 12 and "gpus_per_node" not in job.params
    fewer = slurm.job_for(cfg(*H100, "cluster.gpu.gpus_per_node=2"), "gpu")
    assert (fewer.params["gres"], fewer.params["ntasks_per_node"]) == ("gpu:2", 2)
    generic = slurm.job_for(cfg("cluster.profile=generic"), "gpu")
    assert generic.params["gpus_per_node"] == 8 and "gres" not in generic.params
    # Without GPUs (the local cluster) train.devices_per_node sets the processes per node.
    local = slurm.job_for(cfg("cluster.profile=local-cluster", "train.devices_per_node=2"), "gpu")
    assert local.params["ntasks_per_node"] == 2 and local.gpus_per_node == 0


def test_evaluate_is_a_job_of_one_gpu_on_the_gpu_partition():
    """Evaluation (an `accel` step) takes one GPU of the training's partition, QoS and constraint, not the
    training's nodes, and has no requeue trap: it is not a training chain."""
    assert [s.kind for s in registry.get("evaluate").steps] == ["accel"]
    job = slurm.job_for(cfg(*H100, "train.num_nodes=4"), "accel")
    assert (job.params["nodes"], job.params["ntasks_per_node"], job.params["gres"]) == (1, 1, "gpu:1")
    flags = sbatch_flags(script := render("evaluate", [*H100, "train.num_nodes=4"]))
    for flag in ("--constraint=h100", "--gres=gpu:1", "--nodes=1", "--ntasks-per-node=1", "--account=abc@h100"):
        assert flag in flags, flag
    assert any(re.fullmatch(r"--qos=qos_gpu_h100-t\d", f) for f in flags)
    assert not any(f.startswith("--signal") for f in flags) and "trap" not in script
    assert "run_step evaluate 1" in script.splitlines()
    generic = slurm.job_for(cfg("cluster.profile=generic"), "accel")
    assert generic.params["gpus_per_node"] == 1 and "gres" not in generic.params


def test_cpu_jobs_never_ask_for_zero_gpus():
    with pytest.raises(ConfigError, match="cluster.cpu.gres"):
        slurm.job_for(cfg(*A100, "cluster.cpu.gres=gpu:0"), "cpu")
    assert "--gres" not in render("clean", A100)


def test_run_dir_goes_under_the_site_run_root():
    job = slurm.job_for(cfg(*H100), "gpu")
    assert slurm.run_dir_for(cfg(*H100), job) == "$SCRATCH/graine/runs/demo"
    assert slurm.run_dir_for(cfg(*H100, "run_dir=/abs/run"), job) == "/abs/run"


def test_h100_pretrain_script():
    script = render("pretrain", H100)
    flags = sbatch_flags(script)
    for flag in ("--constraint=h100", "--hint=nomultithread", "--gres=gpu:4", "--ntasks-per-node=4",
                 "--cpus-per-task=24", "--account=abc@h100", "--requeue", "--signal=B:USR1@180"):
        assert flag in flags, flag
    assert any(re.fullmatch(r"--qos=qos_gpu_h100-t\d", f) for f in flags)
    assert any(re.fullmatch(r"--time=\d+", f) for f in flags)
    assert "module load arch/h100" in script.splitlines()
    assert any(line.startswith("module load pytorch-gpu/py3/") for line in script.splitlines())
    assert "scontrol requeue" in script and "--array=1-10%1" in script
    assert re.search(r'^srun .*"\$GRAINE_PY" -m pipeline.cli task pretrain train -c configs/demo.yaml .*cluster.account=abc@h100',
                     script, re.M)


def test_a100_pretrain_script():
    flags = sbatch_flags(script := render("pretrain", A100))
    for flag in ("--constraint=a100", "--gres=gpu:8", "--ntasks-per-node=8", "--cpus-per-task=8",
                 "--account=abc@a100", "--hint=nomultithread"):
        assert flag in flags, flag
    assert any(f.startswith("--time=") for f in flags)
    assert "module load arch/a100" in script.splitlines()


def test_dev_script_uses_the_dev_qos():
    flags = sbatch_flags(render("pretrain", H100, dev=True))
    assert "--qos=qos_gpu_h100-dev" in flags and "--time=120" in flags


def test_clean_script_runs_each_step_then_publishes():
    script = render("clean", [*A100, "clean.num_tasks=6", "clean.inputs=[raw/it's here.jsonl]"])
    assert "--ntasks=6" in sbatch_flags(script) and "--partition=cpu_p1" in sbatch_flags(script)
    lines = script.splitlines()
    sruns = [line.strip() for line in lines if line.strip().startswith("srun ")]
    assert sruns == [sruns[0]] and sruns[0].startswith("srun --ntasks=1 --exact ")  # one job step per task
    assert "run_step filter 6" in lines and "run_step stats 1" in lines
    assert lines[-1].startswith('"$GRAINE_PY" -m pipeline.cli publish clean -c configs/demo.yaml')
    # Overrides are shell-quoted: a quote or space in a value cannot break the command.
    assert "'clean.inputs=[raw/it'\"'\"'s here.jsonl]'" in sruns[0]


def test_committed_examples_are_in_sync():
    stale = slurm.stale_examples()
    assert not stale, f"slurm/examples out of date: {stale}; run {slurm.REFRESH_COMMAND}"


@pytest.mark.parametrize("text, minutes", [("90", 90), ("5:30", 6), ("20:00:00", 1200), ("1-00:00:00", 1440),
                                           ("2-12", 3600), ("1-2:30", 1590)])
def test_walltime_strings_follow_slurm(text, minutes):
    assert slurm.job_for(cfg(*H100, f"cluster.gpu.time='{text}'"), "gpu").params["time"] == minutes
