"""The `graine` command in-process: dry runs, hand-run tasks and publication, status."""

import pytest

from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("toys")


def test_dry_run_prints_resolved_config_and_jobs_and_submits_nothing(tmp_path, capsys):
    assert main(["run", "toy-parts", f"run_dir={tmp_path}", "clean.num_tasks=3", "--dry-run"]) == 2  # no -c
    capsys.readouterr()
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nclean:\n  num_tasks: 3\n")
    assert main(["run", "toy-parts", "-c", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# resolved configuration" in out and "num_tasks: 3" in out
    assert "toy-parts: run" in out and "step write (cpu): 3 task(s) [0..2]" in out
    assert not (tmp_path / "run").exists()


def test_hand_run_tasks_then_publish_equal_a_run(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nclean:\n  num_tasks: 2\n")
    assert main(["publish", "toy-parts", "-c", str(cfg)]) == 1  # nothing done yet
    for rank in (0, 1):
        assert main(["task", "toy-parts", "write", "-c", str(cfg), "--rank", str(rank)]) == 0
    assert main(["task", "toy-parts", "write", "-c", str(cfg), "--rank", "5"]) == 2
    assert main(["task", "toy-parts", "merge", "-c", str(cfg)]) == 0
    assert main(["publish", "toy-parts", "-c", str(cfg)]) == 0
    assert main(["run", "toy-parts", "-c", str(cfg), f"run_dir={tmp_path / 'ref'}", "--executor", "inline"]) == 0
    assert (tmp_path / "run/toy-parts/all.txt").read_bytes() == (tmp_path / "ref/toy-parts/all.txt").read_bytes()
    capsys.readouterr()
    assert main(["status", "-c", str(cfg)]) == 0
    assert "toy-parts   complete" in capsys.readouterr().out


def test_hand_run_task_refuses_a_work_folder_of_another_config(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nclean:\n  num_tasks: 2\n")
    assert main(["task", "toy-parts", "write", "-c", str(cfg), "--rank", "0"]) == 0
    assert main(["task", "toy-parts", "write", "-c", str(cfg), "--rank", "1", "clean.text_field=body"]) == 2
    assert "holds tasks of an attempt with other inputs or config" in capsys.readouterr().err


def test_unknown_stage_and_executor_exit_2(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path}\n")
    assert main(["run", "nope", "-c", str(cfg)]) == 2
    assert "valid stages" in capsys.readouterr().err
    assert main(["run", "toy-parts", "-c", str(cfg), "--executor", "cloud"]) == 2
    assert "valid executors: inline, local, slurm" in capsys.readouterr().err


def test_run_dir_variables_are_expanded_or_refused(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("run_dir: $GRAINE_TEST_ROOT/run\n")
    monkeypatch.delenv("GRAINE_TEST_ROOT", raising=False)
    assert main(["run", "toy-parts", "-c", str(cfg), "--dry-run"]) == 2
    assert "unset environment variable" in capsys.readouterr().err
    monkeypatch.setenv("GRAINE_TEST_ROOT", str(tmp_path / "scratch"))
    assert main(["run", "toy-parts", "-c", str(cfg), "--executor", "inline"]) == 0
    assert (tmp_path / "scratch" / "run" / "toy-parts" / "all.txt").exists()


@pytest.mark.parametrize("code, fix", [(28, "The disk is full"), (30, "read-only"), (13, "permissions")])
def test_filesystem_errors_are_one_line_with_the_fix(tmp_path, capsys, monkeypatch, code, fix):
    import errno
    import os

    from pipeline import runner

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "run" / ".work" / "x"))

    monkeypatch.setattr(runner, "run", fail)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\n")
    assert main(["run", "toy-parts", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fix in err and str(tmp_path / "run" / ".work" / "x") in err
    assert errno.errorcode[code]  # a real errno


def test_dry_run_lists_the_checks_it_passed(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ntrain:\n  devices_per_node: 2\n  global_batch_size: 16\n")
    assert main(["run", "pretrain", "-c", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# checks passed before submission" in out
    assert "pretrain: the stage's own checks against its job (2 rank(s), no GPU)" in out
    # The same check fails the command, before anything is written, when the job's shape breaks it.
    assert main(["run", "pretrain", "-c", str(cfg), "--dry-run", "train.global_batch_size=12"]) == 2
    assert "train.global_batch_size a multiple of 8" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_sbatch_dev_uses_the_profiles_dev_qos(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCRATCH", str(tmp_path))
    cfg = tmp_path / "run.yaml"
    cfg.write_text("cluster:\n  profile: jean-zay-h100\n  account: abc@h100\ntrain:\n  global_batch_size: 32\n")
    assert main(["sbatch", "pretrain", "-c", str(cfg)]) == 0
    assert "#SBATCH --qos=qos_gpu_h100-t3" in capsys.readouterr().out
    assert main(["sbatch", "pretrain", "-c", str(cfg), "--dev"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --qos=qos_gpu_h100-dev" in out and "#SBATCH --time=120" in out
