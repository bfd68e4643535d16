"""`graine report` on a real tiny run (corpus -> clean -> tokenizer -> preprocess -> pretrain with a batch
ramp-up, validation losses and logged loss spikes -> export of two steps -> evaluate): every figure is a PNG
that reads back, the page references each and holds the lineage rows; a run with only clean done gives
placeholders naming the stages to run; strings from run files are escaped and broken lines are skipped."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from pipeline import registry, runner
from pipeline.cli import main
from tests.support import tiny_run

pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[2]
# One process, a ramp-up 4 -> 6 -> 8 samples, a validation loss every 4 steps and a spike detector sensitive
# enough to log events on this tiny model's noisy loss (logged only: training is not changed).
EXTRA = ("preprocess.validation_fraction=0.2", "checkpoint.keep_every=4", "evaluate.max_tokens=512",
         "train.devices_per_node=1", "train.global_batch_size=8", "train.rampup.start=4", "train.rampup.increment=2",
         "train.rampup.samples=24", "train.eval_interval=4", "train.spike.action=log", "train.spike.sigma=0.5",
         "train.spike.window=2", "train.spike.warmup_steps=2", "train.spike.grad_norm=false")
FIGURES = ("loss", "schedule", "throughput", "perplexity", "data_clean", "data_blend", "tokenizer")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    """(run_dir, corpus) of a run through every stage."""
    from data_prep import synthetic

    base = tmp_path_factory.mktemp("report")
    synthetic.main([str(base / "corpus"), "--docs-per-language", "40"])
    cfg = tiny_run.config(base / "run", base / "corpus", *EXTRA)
    runner.run(cfg, ["clean", "tokenizer", "preprocess"], executor="inline")
    runner.run(cfg, ["pretrain"], executor="inline")  # one rank: in this process, twice as fast as a local job
    for step in ("4", "latest"):
        runner.run(tiny_run.config(base / "run", base / "corpus", *EXTRA, f"export.step={step}"), ["export"],
                   executor="inline", force=True)
    runner.run(cfg, ["evaluate"], executor="inline")
    return base / "run", base / "corpus"


def report_args(run_dir: Path, corpus: Path) -> list[str]:
    return ["report", "-c", str(REPO / "configs" / "demo.yaml"), *tiny_run.overrides(run_dir, corpus, *EXTRA)]


def check_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, (path, pixels.shape)
    assert pixels.std() > 0, f"{path} is blank"


def test_report_of_a_whole_run(demo, capsys):
    from pipeline.status import format_status

    run_dir, corpus = demo
    assert main(report_args(run_dir, corpus)) == 0
    index = run_dir / "report" / "index.html"
    assert capsys.readouterr().out.strip() == str(index)
    page = index.read_text()
    for name in FIGURES:
        check_png(run_dir / "report" / f"{name}.png")
        assert f'<img src="{name}.png"' in page
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(f"{n}.png" for n in FIGURES)
    assert 'class="missing"' not in page

    # The lineage table: one row per stage, complete, with the hashes and jobs of its completion record.
    for name in registry.ORDER:
        folder = registry.folder_of(name)
        record = json.loads((run_dir / folder / "_COMPLETE.json").read_text())
        row = re.search(rf"<tr><td>{name}</td><td>{folder}/</td><td>complete</td><td>{record['finished']}</td>"
                        r"(.*?)</tr>", page)
        assert row, f"no lineage row for {name}"
        assert record["output_hash"] in row.group(1) and record["config_hash"] in row.group(1)
        assert all(h in row.group(1) for h in record["inputs"].values())
    assert re.search(r"<tr><td>pretrain</td>.*?<td>inline</td><td>[^<]+</td></tr>", page)

    # Every logged spike is in the events table.
    events = [json.loads(line) for line in (run_dir / "logs" / "events.jsonl").read_text().splitlines()]
    assert events, "the spike detector logged nothing: the fixture no longer exercises the event markers"
    for ev in events:
        assert f"<tr><td>{ev['step']}</td><td>spike</td>" in page

    # `graine status` names the report, and says when the run's metrics are newer than it.
    cfg = tiny_run.config(run_dir, corpus, *EXTRA)
    assert f"report: {index} (up to date" in format_status(cfg)
    metrics = run_dir / "logs" / "metrics.jsonl"
    built = index.stat().st_mtime
    os.utime(index, (built - 60, metrics.stat().st_mtime - 60))
    assert f"report: {index} (older than logs/metrics.jsonl" in format_status(cfg)


def test_what_the_loss_figure_marks_comes_from_the_run(demo):
    from pipeline.report_data import read_training
    from training.spikes import read_events

    run_dir, _ = demo
    log = read_training(run_dir)
    steps = [r["step"] for r in log.train]
    assert steps == list(range(1, steps[-1] + 1))
    assert [r["global_batch"] for r in log.train][:1] == [4] and log.train[-1]["global_batch"] == 8
    assert [c[0] for c in log.checkpoints] == sorted(int(p.name[11:]) for p in (run_dir / "checkpoints").glob("global_step*"))
    assert log.checkpoints[-1][1] == log.train[-1]["tokens"] == 2048
    assert [v["step"] for v in log.valid] == [4, 8]
    by_step = {r["step"]: r["tokens"] for r in log.train}
    assert log.tokens_at(4) == by_step[4] and log.tokens_at(8) == by_step[8]
    assert [e["step"] for e in log.events] == [e["step"] for e in read_events(run_dir)]


def test_a_run_with_only_clean_done_gives_placeholders(demo, tmp_path):
    run_dir, corpus = demo
    only_clean = tmp_path / "run"
    only_clean.mkdir()
    shutil.copytree(run_dir / "clean", only_clean / "clean")
    assert main(report_args(only_clean, corpus)) == 0
    page = (only_clean / "report" / "index.html").read_text()
    check_png(only_clean / "report" / "data_clean.png")
    assert sorted(p.name for p in (only_clean / "report").iterdir()) == ["data_clean.png", "index.html"]
    placeholders = re.findall(r'<p class="missing">(.*?)</p>', page)
    # loss, schedule, throughput (pretrain), perplexity (evaluate), blend (preprocess), tokenizer
    assert len(placeholders) == 6
    for stage, target in (("pretrain", "pretrain"), ("evaluate", "evaluate"), ("preprocess", "preprocess"),
                          ("tokenizer", "tokenizer")):
        assert any(f"graine run {stage} -c CONFIG</code> (<code>make {target}</code>)" in p for p in placeholders)
    assert re.search(r"<tr><td>clean</td><td>clean/</td><td>complete</td>", page)
    for name in registry.ORDER[1:]:
        assert re.search(rf"<tr><td>{name}</td><td>{registry.folder_of(name)}/</td><td>not run</td>", page)


def test_strings_from_run_files_are_escaped_and_broken_lines_skipped(demo, tmp_path):
    from pipeline.report_data import read_training

    run_dir, corpus = demo
    run = tmp_path / "run"
    shutil.copytree(run_dir / "clean", run / "clean")
    stats = json.loads((run / "clean" / "stats.json").read_text())
    hostile = "<script>alert(1)</script>"
    stats["languages"][hostile] = {"docs_in": 5, "docs_out": 1, "bytes_in": 500, "bytes_out": 100,
                                   "dropped": {r"$\frac{": 3, '"><img src=x onerror=alert(2)>': 1}}
    (run / "clean" / "stats.json").write_text(json.dumps(stats))
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "report.json").write_text("[1, 2]")
    logs = run / "logs"
    logs.mkdir()
    train = [{"kind": "train", "step": s, "tokens": 100 * s, "loss": 5.0 - 0.1 * s, "lr": 1e-3, "global_batch": 4,
              "skipped": skipped, "time": 1000.0 + s, "tokens_per_s": 50.0} for s, skipped in
             ((1, 0), (2, 0), (3, 1), (4, 1), (5, 2))]
    lines = [json.dumps(r) for r in train]
    lines[2:2] = ['{"kind": "train", "step": 3, "loss": "abc"', "[1, 2]", json.dumps({"kind": "train", "step": True}),
                  json.dumps({**train[1], "loss": 9.0})]  # a cut line, not objects, step 2 replayed after a kill (the last is kept)
    (logs / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (logs / "events.jsonl").write_text(json.dumps({"kind": "rollback", "step": 4, "tokens": 200, "loss": 7.0,
                                                   "checkpoint": "</td><script>alert(3)</script>"}) + "\n")

    assert main(report_args(run, corpus)) == 0
    page = (run / "report" / "index.html").read_text()
    assert "<script" not in page and "onerror=alert(2)>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;/td&gt;&lt;script&gt;alert(3)" in page
    assert len(re.findall("<img ", page)) == 4  # data_clean, loss, schedule, throughput: nothing injected
    for name in ("data_clean", "loss", "schedule", "throughput"):
        check_png(run / "report" / f"{name}.png")
    assert "tokenizer/report.json holds a JSON list, not an object" in page
    assert "2 unreadable log lines ignored" in page

    log = read_training(run)
    assert [r["step"] for r in log.train] == [1, 2, 3, 4, 5] and log.train[1]["loss"] == 9.0
    assert log.skipped_steps() == [3, 5]


def test_job_ids_name_slurm_arrays_once():
    from pipeline.report_data import job_ids

    record = {"jobs": {"executor": "slurm", "jobs": {"filter": {"0": "123_0", "1": "123_1"}, "publish": {"0": "124"}}},
              "slurm_job_id": "124"}
    assert job_ids(record) == "Slurm 123, 124"
    assert job_ids({"jobs": {"executor": "inline", "jobs": {"x": {"0": "inline"}}}}) == "inline"


def test_report_of_a_missing_run_directory_exits_2(tmp_path, capsys):
    assert main(report_args(tmp_path / "nothing", tmp_path)) == 2
    assert "does not exist: run a stage first" in capsys.readouterr().err
