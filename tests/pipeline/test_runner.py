"""Orchestration with the toy stages: publication, lineage, re-runs, crashes, locks and status."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.errors import LockError, StageError
from pipeline import runner
from pipeline.config import load_config
from pipeline.lock import RunLock, pid_alive
from pipeline.status import stage_status

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("toys")


def cfg_for(run_dir, *overrides):
    return load_config(None, [f"run_dir={run_dir}", "clean.num_tasks=4", *overrides])


def executions(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_inline_publishes_with_completion_record(tmp_path):
    cfg = cfg_for(tmp_path / "run")
    runner.run(cfg, ["toy-parts"], executor="inline")
    out = tmp_path / "run" / "toy-parts"
    assert len((out / "all.txt").read_text().splitlines()) == 400
    record = json.loads((out / "_COMPLETE.json").read_text())
    assert record["config_hash"] == cfg.section_hash("seed", "clean")
    assert set(record["files"]) == {"all.txt"}
    assert record["versions"]["torch"] and record["host"] and record["num_tasks"] == {"write": 4, "merge": 1}
    assert (out / "config.yaml").exists()
    # No scratch or staging left behind, no partial output visible.
    assert not (tmp_path / "run" / ".work" / "toy-parts").exists()


def test_rerun_unchanged_does_nothing(tmp_path, monkeypatch):
    log = tmp_path / "exec.log"
    monkeypatch.setenv("TOY_EXEC_LOG", str(log))
    cfg = cfg_for(tmp_path / "run")
    runner.run(cfg, ["toy-parts", "toy-sum"], executor="inline")
    n = len(executions(log))
    plans = runner.run(cfg, ["toy-parts", "toy-sum"], executor="inline")
    assert [p.action for p in plans] == ["skip", "skip"]
    assert "nothing to do" in plans[0].reason
    assert len(executions(log)) == n


def test_changed_upstream_makes_downstream_stale_and_names_it(tmp_path):
    cfg = cfg_for(tmp_path / "run")
    runner.run(cfg, ["toy-parts", "toy-sum"], executor="inline")
    changed = cfg_for(tmp_path / "run", "clean.text_field=body")
    # The stage whose own config changed refuses without --force and names what to re-run after it.
    with pytest.raises(StageError, match=r"stale: config section\(s\) seed, clean changed.*--force.*toy-sum"):
        runner.run(changed, ["toy-parts"], executor="inline")
    runner.run(changed, ["toy-parts"], executor="inline", force=True)
    status = stage_status(changed, "toy-sum")
    assert status.state == "stale" and "input toy-parts changed" in status.detail
    with pytest.raises(StageError, match="input toy-parts changed"):
        runner.run(changed, ["toy-sum"], executor="inline")
    runner.run(changed, ["toy-sum"], executor="inline", force=True)
    assert stage_status(changed, "toy-sum").state == "complete"


def test_downstream_refuses_before_upstream(tmp_path):
    with pytest.raises(StageError, match="upstream toy-parts is not complete"):
        runner.run(cfg_for(tmp_path / "run"), ["toy-sum"], executor="inline")


def test_local_executor_matches_inline(tmp_path):
    runner.run(cfg_for(tmp_path / "a"), ["toy-parts"], executor="inline")
    runner.run(cfg_for(tmp_path / "b"), ["toy-parts"], executor="local")
    a = (tmp_path / "a" / "toy-parts" / "all.txt").read_bytes()
    assert a == (tmp_path / "b" / "toy-parts" / "all.txt").read_bytes()


def test_failed_task_reports_log_and_last_lines_then_rerun_redoes_only_it(tmp_path, monkeypatch):
    log = tmp_path / "exec.log"
    monkeypatch.setenv("TOY_EXEC_LOG", str(log))
    monkeypatch.setenv("TOY_FAIL_RANK", "2")
    cfg = cfg_for(tmp_path / "run")
    with pytest.raises(StageError) as err:
        runner.run(cfg, ["toy-parts"], executor="local")
    msg = str(err.value)
    assert "task 2 failed" in msg and "_log.err" in msg and "toy failure in task 2" in msg
    status = stage_status(cfg, "toy-parts")
    assert status.state == "failed" and "toy failure in task 2" in status.detail
    monkeypatch.delenv("TOY_FAIL_RANK")
    log.unlink()
    runner.run(cfg, ["toy-parts"], executor="local")
    assert sorted(executions(log)) == ["toy-parts/merge/0", "toy-parts/write/2"]


# Run with the repository root as the working directory (`python -c` puts it first on sys.path): the drivers
# import tests.support.toy_stages. Their task processes need not: the toy stages travel by value.
DRIVER = textwrap.dedent("""
    from tests.support import toy_stages
    toy_stages.register()
    from pipeline import runner
    from pipeline.config import load_config
    cfg = load_config(None, ["run_dir={run}", "clean.num_tasks=6"])
    runner.run(cfg, ["toy-parts"], executor="local")
""")


def test_kill_driver_half_way_then_rerun_redoes_only_unfinished(tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "exec.log"
    env = {**os.environ, "TOY_EXEC_LOG": str(log), "TOY_DELAY": "1.5", "GRAINE_LOCAL_PARALLEL": "2"}
    script = DRIVER.format(run=run)
    # The driver and its task processes share a new session: killing the group is a node dying.
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO, start_new_session=True)
    markers = run / ".work" / "toy-parts" / "completions" / "write"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(markers.glob("0*"))) < 2:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {int(p.name) for p in markers.glob("0*")}
    assert 2 <= len(done) < 6, done
    assert not (run / "toy-parts").exists()  # nothing published half-way

    log.unlink()
    env.pop("TOY_DELAY")
    subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, check=True, timeout=120)
    redone = {int(line.rsplit("/", 1)[1]) for line in executions(log) if "/write/" in line}
    assert redone == set(range(6)) - done
    runner.run(load_config(None, [f"run_dir={tmp_path / 'ref'}", "clean.num_tasks=6"]), ["toy-parts"], executor="inline")
    assert (run / "toy-parts" / "all.txt").read_bytes() == (tmp_path / "ref" / "toy-parts" / "all.txt").read_bytes()


def test_second_pipeline_is_refused_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    cfg = cfg_for(run)
    env = {**os.environ, "TOY_DELAY": "3"}
    script = DRIVER.format(run=run)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    try:
        lock = run / ".graine.lock"
        deadline = time.time() + 30
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.05)
        before = sorted(str(p) for p in run.rglob("*") if ".work" not in p.parts and "logs" not in p.parts)
        with pytest.raises(LockError) as err:
            runner.run(cfg, ["toy-parts"], executor="inline")
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "host" in msg
        after = sorted(str(p) for p in run.rglob("*") if ".work" not in p.parts and "logs" not in p.parts)
        assert before == after
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".graine.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    with RunLock(tmp_path, "test") as lock:
        assert lock.holder()["pid"] == os.getpid()
    assert not (tmp_path / ".graine.lock").exists()


def test_lock_held_by_dead_driver_with_live_tasks_is_not_stale(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".graine.lock").write_text(json.dumps(
            {"host": os.uname().nodename, "pid": 999999, "local_pids": [sleeper.pid]}))
        with pytest.raises(LockError, match="in use by another pipeline"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()


def test_status_states(tmp_path):
    cfg = cfg_for(tmp_path / "run")
    assert stage_status(cfg, "toy-parts").state == "not started"
    runner.run(cfg, ["toy-parts"], executor="inline")
    st = stage_status(cfg, "toy-parts")
    assert st.state == "complete" and st.summary == "400 lines"
    assert stage_status(cfg, "toy-sum").state == "not started"


def test_kill_driver_only_its_live_tasks_keep_the_lock_then_rerun_finishes(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "TOY_DELAY": "2", "GRAINE_LOCAL_PARALLEL": "2"}
    script = DRIVER.format(run=run)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    jobs = run / ".work" / "toy-parts" / "jobs.json"
    deadline = time.time() + 60
    while time.time() < deadline and not jobs.exists():
        time.sleep(0.05)
    proc.kill()  # only the driver: its task processes live on
    proc.wait()
    cfg = load_config(None, [f"run_dir={run}", "clean.num_tasks=6"])
    with pytest.raises(LockError, match="in use by another pipeline"):
        runner.run(cfg, ["toy-parts"], executor="inline")
    # Once the orphaned tasks have finished, the lock is stale and a re-run completes the stage.
    lock = json.loads((run / ".graine.lock").read_text())
    deadline = time.time() + 60
    while any(pid_alive(p) for p in lock["local_pids"]) and time.time() < deadline:
        time.sleep(0.2)
    runner.run(cfg, ["toy-parts"], executor="local")
    runner.run(load_config(None, [f"run_dir={tmp_path / 'ref'}", "clean.num_tasks=6"]), ["toy-parts"], executor="inline")
    assert (run / "toy-parts" / "all.txt").read_bytes() == (tmp_path / "ref" / "toy-parts" / "all.txt").read_bytes()


def test_take_over_gives_back_a_lock_that_changed_under_it(tmp_path):
    # Another pipeline took the stale lock over between our read and our rename: its lock must survive.
    fresh = {"host": "elsewhere", "pid": 1, "chain": "fresh"}
    (tmp_path / ".graine.lock").write_text(json.dumps(fresh))
    RunLock(tmp_path)._take_over("test", judged={"host": "elsewhere", "pid": 2, "chain": "stale"})
    assert json.loads((tmp_path / ".graine.lock").read_text()) == fresh
    assert [p.name for p in tmp_path.iterdir()] == [".graine.lock"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_driver_ends_its_tasks_before_releasing_the_lock(tmp_path, signum):
    """Ctrl-C (or SIGTERM) to the driver alone: its task processes end, then the lock goes; not before."""
    run = tmp_path / "run"
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"run_dir: {run}\nclean:\n  num_tasks: 4\n")
    driver = textwrap.dedent(f"""
        import sys
        from tests.support import toy_stages
        toy_stages.register()
        from pipeline import cli
        sys.argv = ["graine", "run", "toy-parts", "-c", {str(cfg_file)!r}]
        cli.entry()
    """)
    env = {**os.environ, "TOY_DELAY": "30", "GRAINE_LOCAL_PARALLEL": "2"}
    proc = subprocess.Popen([sys.executable, "-c", driver], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    lock_file = run / ".graine.lock"
    deadline = time.time() + 60
    while time.time() < deadline and len((json.loads(lock_file.read_text()) if lock_file.exists() else {})
                                         .get("local_pids", [])) < 2:
        time.sleep(0.1)
    pids = json.loads(lock_file.read_text())["local_pids"]
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    proc.send_signal(signum)  # the driver only
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-2000:]
    assert not any(pid_alive(p) for p in pids), "a task outlived the interrupted driver"
    assert not lock_file.exists()
    assert "ending the tasks started on this machine" in err


def test_a_new_task_count_neither_stales_a_complete_stage_nor_reuses_markers_of_another_split(tmp_path):
    run = tmp_path / "run"
    runner.run(cfg_for(run, "clean.num_tasks=3"), ["toy-parts"], executor="inline")
    plans = runner.run(cfg_for(run, "clean.num_tasks=5"), ["toy-parts"], executor="inline")
    assert plans[0].action == "skip"  # same outputs whatever the split: nothing to redo
    # A half-done attempt split 3 ways is not continued 5 ways: its markers name other task ranges.
    from core import lineage
    from pipeline.registry import folder_of as get_folder
    from pipeline.registry import get

    fp3 = lineage.fingerprint(cfg_for(run, "clean.num_tasks=3"), get("toy-parts"), get_folder)
    fp5 = lineage.fingerprint(cfg_for(run, "clean.num_tasks=5"), get("toy-parts"), get_folder)
    assert fp3.config_hash == fp5.config_hash and fp3.key != fp5.key
