"""Progress files seen by `graine status`: aggregation over a step's tasks, a live local array, and the
clean stage of the demo config through the local executor (its task logs and its kept progress files)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.progress import INTERVAL_ENV, Progress, read_progress
from pipeline import runner
from pipeline.array_progress import step_progress
from pipeline.status import stage_status
from pipeline.task import StagePaths
from tests.support import progress_stage, tiny_run, wait_for

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def write_task(paths: StagePaths, rank: int, *, done: int, total: int | None, seconds: float, started: float,
               nbytes: int = 0, finished: bool = False) -> Path:
    """A real Progress file of `rank` that has counted `done` units in `seconds`, started at epoch `started`."""
    clock = Clock(0.0)
    path = paths.progress_dir("filter") / f"{rank:05d}.json"
    p = Progress(f"clean/filter task {rank}", total, "docs", interval=1, tty=False, path=path, clock=clock,
                 wall=lambda: started)
    clock.t = seconds
    p.update(done, nbytes)
    if finished:
        p.close()
    return path


def test_aggregation_over_done_running_pending_and_dead_tasks(tmp_path):
    paths = StagePaths(tmp_path, "clean")
    now = 1_000_000.0
    for rank in (0, 1):  # done: markers (their finished files count only for the step's start)
        write_task(paths, rank, done=500, total=500, seconds=100, started=now - 300 + rank, finished=True)
        paths.marker("filter", rank).parent.mkdir(parents=True, exist_ok=True)
        paths.marker("filter", rank).write_text("{}")
    write_task(paths, 2, done=200, total=500, seconds=50, started=now - 50, nbytes=10_000_000)  # 4 docs/s, 0.2 MB/s
    write_task(paths, 3, done=100, total=500, seconds=50, started=now - 50, nbytes=5_000_000)  # 2 docs/s, 0.1 MB/s
    dead = write_task(paths, 4, done=50, total=500, seconds=50, started=now - 50)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state = json.loads(dead.read_text())
    dead.write_text(json.dumps({**state, "pid": int(proc.stdout)}))  # a task killed on this host: not running
    # ranks 5..7: no progress file yet

    step = step_progress("filter", 8, paths.progress_dir("filter"), paths.marker)
    assert (step.done, len(step.running), step.pending) == (2, 2, 4)
    assert step.rates() == pytest.approx({"docs/s": 6.0, "MB/s": 0.3})
    # Work left: 8 tasks - (2 done + 0.4 + 0.2) = 5.4 of 8, over 300 s since the first task started.
    assert step.eta(now) == pytest.approx(300 * 5.4 / 2.6)
    assert step.line(now) == "filter: 2/8 tasks done, 2 running, 4 pending; 6.00 docs/s, 0.30 MB/s, ETA 10m23s"

    # Tasks whose jobs the executor knows to run: running even without a file, or with a dead-looking one.
    known = step_progress("filter", 8, paths.progress_dir("filter"), paths.marker, running={4, 5})
    assert (known.done, len(known.running), known.pending) == (2, 4, 2)
    assert known.rates() == pytest.approx({"docs/s": 7.0, "MB/s": 0.3})  # rank 4's 1 doc/s; rank 5 has no file
    # A running task that has not written for three intervals (1 s each here) is silent.
    assert "2 running (2 silent for 3 progress intervals), 4 pending" in step.line(now + 10)

    # Nothing pending: the slowest running task's own ETA.
    last = step_progress("filter", 4, paths.progress_dir("filter"), paths.marker)
    assert (last.done, len(last.running), last.pending) == (2, 2, 0)
    assert last.eta(now) == pytest.approx(200.0)  # rank 3: 400 docs left at 2 docs/s


def test_running_tasks_without_a_total_fall_back_to_the_share_of_tasks_done(tmp_path):
    paths = StagePaths(tmp_path, "clean")
    now = 2_000_000.0
    write_task(paths, 0, done=10, total=None, seconds=10, started=now - 100, finished=True)
    paths.marker("filter", 0).parent.mkdir(parents=True, exist_ok=True)
    paths.marker("filter", 0).write_text("{}")
    write_task(paths, 1, done=10, total=None, seconds=10, started=now - 10)
    step = step_progress("filter", 4, paths.progress_dir("filter"), paths.marker)
    assert step.eta(now) == pytest.approx(100 * 3)  # 1 of 4 tasks in 100 s
    assert step.line(now) == "filter: 1/4 tasks done, 1 running, 2 pending; 1.00 docs/s, ETA 5m00s"
    nothing = step_progress("filter", 4, tmp_path / "none", lambda s, r: tmp_path / "none" / str(r))
    assert nothing.line(now) == "filter: 0/4 tasks done, 0 running, 4 pending"


DRIVER = textwrap.dedent("""
    from tests.support import progress_stage
    progress_stage.register()
    from pipeline import runner
    from pipeline.config import load_config
    runner.run(load_config(None, ["run_dir={run}", "clean.num_tasks=4"]), ["toy-progress"], executor="local")
""")


def test_status_of_a_live_local_array_then_its_kept_progress_files(tmp_path):
    from pipeline.config import load_config

    run, go = tmp_path / "run", tmp_path / "go"
    env = {**os.environ, "TOY_PROGRESS_GO": str(go), "GRAINE_LOCAL_PARALLEL": "4", INTERVAL_ENV: "0.1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(run=run)], env=env, cwd=REPO)
    progress_stage.register()
    try:
        cfg = load_config(None, [f"run_dir={run}", "clean.num_tasks=4"])
        paths = StagePaths(run, "toy-progress")

        def waiting() -> bool:
            files = [read_progress(paths.progress_dir("count") / f"{r:05d}.json") for r in (1, 2, 3)]
            # A waiting task's file says what it last wrote: up to one interval (5 updates) before 200.
            return paths.marker("count", 0).exists() and all(f and f["done"] >= 150 for f in files)

        wait_for(waiting, 120, "task 0 to finish and tasks 1-3 to wait at 200 docs", poll=0.1)
        st = stage_status(cfg, "toy-progress")
        assert st.state == "running", st
        # The waiting tasks write nothing: after three intervals they are called silent.
        assert re.match(r"count: 1/4 tasks done, 3 running( \(3 silent for 3 progress intervals\))?, 0 pending; "
                        r"[\d,.]+ docs/s, [\d.]+ MB/s, ETA \w+; local processes ", st.detail), st.detail
        go.write_text("")
        assert driver.wait(timeout=120) == 0
    finally:
        go.write_text("")  # whatever failed, the tasks finish on their own
        try:
            driver.wait(timeout=120)
        finally:
            progress_stage.unregister()
    assert (run / "toy-progress" / "count.txt").read_text() == "4000\n"
    kept = sorted((run / "logs" / "jobs" / "toy-progress" / "progress" / "count").glob("*.json"))
    assert [read_progress(p)["done"] for p in kept] == [1000] * 4
    assert all(read_progress(p)["finished"] for p in kept)
    assert not (run / ".work" / "toy-progress").exists()


def test_clean_stage_of_the_demo_config_reports_progress_in_its_task_logs(tmp_path, monkeypatch):
    """The real clean stage through the local executor: progress lines (no carriage returns) in the task
    logs, and progress files that say finished with every document the filter tasks read."""
    from data_prep import synthetic

    corpus = tmp_path / "corpus"
    synthetic.main([str(corpus), "--docs-per-language", "40"])
    monkeypatch.setenv(INTERVAL_ENV, "0.05")
    cfg = tiny_run.config(tmp_path / "run", corpus, "clean.num_tasks=2")
    runner.run(cfg, ["clean"], executor="local")

    run = tmp_path / "run"
    stats = json.loads((run / "clean" / "stats.json").read_text())
    kept = run / "logs" / "jobs" / "clean" / "progress"
    filters = [read_progress(kept / "filter" / f"{r:05d}.json") for r in range(2)]
    assert all(f["finished"] and f["unit"] == "docs" for f in filters)
    docs_in = sum(lang["docs_in"] for lang in stats["languages"].values())
    assert docs_in > 0 and sum(f["done"] for f in filters) == docs_in
    assert sum(f["bytes"] for f in filters) == sum(lang["bytes_in"] for lang in stats["languages"].values())
    writes = [read_progress(kept / "write" / f"{r:05d}.json") for r in range(2)]
    assert all(w["finished"] and w["done"] == w["total"] for w in writes)

    logs = list((run / "logs" / "jobs" / "clean").glob("*/*_log.err"))
    text = "".join(p.read_text() for p in logs)
    assert re.search(r"clean/filter task [01]: finished, [\d,]+ docs, [\d,.]+ docs/s, [\d.]+ kB at", text), text[-3000:]
    assert "clean/write task 0:" in text
    assert "\r" not in text
    record = json.loads((run / "clean" / "_COMPLETE.json").read_text())
    assert not [f for f in record["files"] if "progress" in f]


def test_tokenizer_and_preprocess_progress_files_agree_with_their_outputs(tmp_path):
    """Inline runs write progress files too; after publication they are kept beside the job logs."""
    run = tmp_path / "run"
    tiny_run.prepare(run, tmp_path / "corpus")
    kept = run / "logs" / "jobs"
    clean_docs = json.loads((run / "clean" / "stats.json").read_text())["totals"]["docs_out"]
    sample = read_progress(kept / "tokenizer" / "progress" / "sample" / "00000.json")
    # The last pass over clean/ (a sampling pass) knew its total from the counting pass.
    assert sample["finished"] and sample["done"] == sample["total"] == clean_docs
    assert sample["what"].startswith("tokenizer sample: sampling")
    blend = json.loads((run / "shards" / "blend.json").read_text())
    tokenize = read_progress(kept / "preprocess" / "progress" / "tokenize" / "00000.json")
    assert tokenize["finished"] and tokenize["done"] == clean_docs
    assert tokenize["counts"]["tokens"] == sum(t["tokens"] for t in blend["totals"].values())
    assert tokenize["bytes"] == sum(d[s]["text_bytes"] for d in blend["datasets"].values() for s in ("train", "valid")
                                    if s in d)
    merge = read_progress(kept / "preprocess" / "progress" / "merge" / "00000.json")
    assert merge["done"] == merge["total"] == len(blend["datasets"])
