"""A config is untrusted input: nothing in it runs as shell in job scripts, and malformed values are refused
at load time (exit 2) before anything is written or submitted."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from core.errors import ConfigError
from pipeline import slurm
from pipeline.cli import main
from pipeline.config import load_config

# Each payload would create `marker` if any shell ran it.
PAYLOADS = ["$(touch {m})", "`touch {m}`", "x; touch {m}", "x' ; touch {m} ; echo '", 'x" ; touch {m} ; echo "',
            "${{HOME:+$(touch {m})}}", "$((1))$(touch {m})"]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_shell_values_are_literal_except_plain_references(tmp_path, payload):
    marker = tmp_path / "marker"
    value = payload.format(m=marker)
    word = slurm._shell_value(value)
    out = subprocess.run(["bash", "-c", f"V={word}; printf %s \"$V\""], capture_output=True, text=True, check=True)
    assert out.stdout == value and not marker.exists()


def test_plain_references_expand_on_the_node():
    out = subprocess.run(["bash", "-c", f"WORK=/w; printf %s {slurm._shell_value('$WORK/hf:${WORK}')}"],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "/w/hf:/w"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_rendered_scripts_do_not_run_config_strings(tmp_path, capsys, payload):
    """The whole rendered script, run by bash with srun/sbatch stand-ins that only print: no payload runs."""
    marker = tmp_path / "marker"
    value = payload.format(m=marker)
    cfg = tmp_path / "run.yaml"
    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "clean": {"inputs": [str(tmp_path / "in.jsonl")]},
                                   "cluster": {"profile": "local-cluster", "account": value,
                                               "cpu": {"env": {"PAYLOAD": value}}}}))
    assert load_config(str(cfg)).cluster.cpu["env"]["PAYLOAD"] == value
    assert main(["sbatch", "clean", "-c", str(cfg), f"cluster.slurm.comment={value!r}"]) == 0
    script = capsys.readouterr().out
    assert f"GRAINE_PY={sys.executable}\n" in script
    script = script.replace(f"GRAINE_PY={sys.executable}\n", "GRAINE_PY=true\n")  # graine itself not run
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("srun", "scontrol", "module"):
        (fake / tool).write_text("#!/bin/sh\nexit 0\n")
        (fake / tool).chmod(0o755)
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert not marker.exists(), f"payload {value!r} ran"


@pytest.mark.parametrize("override, message", [
    ('cluster.account="abc\\n#SBATCH --uid=0"', "control character"),
    ('cluster.gpu.env={"A\\rB": "1"}', "control character"),
    ("cluster.gpu.env={'A;touch x': '1'}", "not an environment variable name"),
    ("train.lr=.nan", "finite"),
    ("clean.min_lang_score=.inf", "finite"),
    ("seed=1e30", "seed=.* out of range"),
])
def test_malformed_config_exits_2_before_anything(tmp_path, capsys, override, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ncluster:\n  profile: local-cluster\n")
    for command in (["sbatch", "pretrain"], ["run", "pretrain", "--executor", "slurm", "--dry-run"]):
        assert main([*command, "-c", str(cfg), override]) == 2
        assert capsys.readouterr().err.count("graine: error:") == 1
    with pytest.raises(ConfigError, match=message):
        cfg_obj = load_config(str(cfg), [override])
        slurm.job_for(cfg_obj, "gpu")
    assert not (tmp_path / "run").exists()


def test_duplicate_keys_and_empty_files_are_refused(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("run_dir: a\ntrain:\n  lr: 1e-3\n  lr: 1e-2\n")
    assert main(["run", "pretrain", "-c", str(cfg), "--dry-run"]) == 2
    assert "'lr' is given twice" in capsys.readouterr().err
    cfg.write_text("# nothing yet\n")
    assert main(["run", "pretrain", "-c", str(cfg), "--dry-run"]) == 2
    assert "is empty" in capsys.readouterr().err


def test_a_newline_in_the_command_line_cannot_leave_the_script_comment(tmp_path, capsys):
    # YAML folds the newline of this value into a space, so the config is valid; the word itself, which
    # the script's "# Rendered by:" comment repeats, is not.
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ncluster:\n  profile: local-cluster\n")
    assert main(["sbatch", "clean", "-c", str(cfg), 'cluster.account="x\ntouch /tmp/graine-pwned"']) == 2
    assert "control character" in capsys.readouterr().err


# ------------------------------------------------------------------------------ what gets written, how
def test_dry_run_and_missing_inputs_write_nothing(tmp_path, capsys):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"text": "hello"}\n')
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "clean": {"inputs": [str(raw)]}}))
    assert main(["run", "clean", "-c", str(cfg), "--dry-run"]) == 0
    assert not (tmp_path / "run").exists()
    capsys.readouterr()
    assert main(["run", "clean", "-c", str(cfg), f"clean.inputs=[{tmp_path}/nothing-*.jsonl]"]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_run_directory_is_private_and_so_are_job_files(tmp_path):
    import os
    import stat

    from pipeline import runner
    from tests.support import toy_stages

    old = os.umask(0o002)  # a permissive session, as on many clusters
    try:
        cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "clean.num_tasks=2"])
        with toy_stages.registered():
            runner.run(cfg, ["toy-parts"], executor="local")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o750
    for path in (tmp_path / "run").rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert not mode & 0o022, f"{path} is writable by group or others ({oct(mode)})"
    pickles = list((tmp_path / "run" / "logs").rglob("*.pkl"))
    assert pickles  # submitit's job pickles are among them
    with pytest.raises(ConfigError, match="run_dir_mode"):
        load_config(None, ["run_dir_mode=0077"])


def test_make_clean_keeps_runs(tmp_path):
    import shutil

    shutil.copy(slurm.ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "ckpt").write_text("weeks of training")
    assert subprocess.run(["make", "-s", "clean"], cwd=tmp_path, capture_output=True).returncode == 0
    assert (tmp_path / "runs" / "demo" / "ckpt").exists()
    refused = subprocess.run(["make", "-s", "delete-runs"], cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode != 0 and "CONFIRM=delete-my-runs" in refused.stdout
    assert (tmp_path / "runs" / "demo" / "ckpt").exists()
    assert subprocess.run(["make", "-s", "delete-runs", "CONFIRM=delete-my-runs"], cwd=tmp_path).returncode == 0
    assert not (tmp_path / "runs").exists()


def test_unknown_language_is_refused_before_submission(tmp_path, capsys):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"text": "hello"}\n')
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "clean": {"inputs": [str(raw)]},
                                   "cluster": {"profile": "local-cluster"}}))
    assert main(["run", "clean", "-c", str(cfg), "--executor", "slurm", "--dry-run", "clean.languages=[en, xx]"]) == 2
    assert "clean.languages" in capsys.readouterr().err and not (tmp_path / "run").exists()
