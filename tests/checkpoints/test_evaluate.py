"""Stage `evaluate` on a real tiny run (corpus -> ... -> pretrain on 2 ranks -> export of steps 4 and 16):
per-language perplexity and bits per byte on shards/valid/, a longer-trained step scoring better,
idempotent re-runs, a re-export made stale; and lm-evaluation-harness run offline, through the stage, on a
two-language task defined here from local jsonl files."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from pipeline import runner
from tests.support import tiny_run

pytest.importorskip("transformers")

EXTRA = ("preprocess.validation_fraction=0.2", "checkpoint.keep_every=4", "evaluate.max_tokens=2048")
LANGS = ("en", "fr")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from data_prep import synthetic

    base = tmp_path_factory.mktemp("evaluate")
    synthetic.main([str(base / "corpus"), "--docs-per-language", "40"])
    cfg = tiny_run.config(base / "run", base / "corpus", *EXTRA)
    runner.run(cfg, ["clean", "tokenizer", "preprocess"], executor="inline")
    runner.run(cfg, ["pretrain"], executor="local")
    for step in (4, 16):
        runner.run(tiny_run.config(base / "run", base / "corpus", *EXTRA, f"export.step={step}"), ["export"],
                   executor="inline", force=True)
    return base


@pytest.fixture
def run(trained, tmp_path) -> tuple[Path, Path]:
    shutil.copytree(trained / "run", tmp_path / "run", symlinks=True)
    return tmp_path / "run", trained / "corpus"


def cfg_of(run, *extra):
    return tiny_run.config(run[0], run[1], *EXTRA, "export.step=16", *extra)


def test_perplexity_per_language_improves_with_training_and_reruns_do_nothing(run, capsys):
    runner.run(cfg_of(run), ["evaluate"], executor="inline")
    ev = run[0] / "eval"
    early = json.loads((ev / "global_step4" / "perplexity.json").read_text())
    late = json.loads((ev / "global_step16" / "perplexity.json").read_text())
    blend = json.loads((run[0] / "shards" / "blend.json").read_text())
    expected = {n for n, d in blend["datasets"].items() if d.get("valid", {}).get("tokens")}
    assert len(expected) >= 5 and set(early["datasets"]) == set(late["datasets"]) == expected
    for name, d in late["datasets"].items():
        assert d["lang"] == blend["datasets"][name]["lang"]
        assert 0 < d["tokens"] <= 2048 and math.isclose(d["perplexity"], math.exp(d["nll"]))
        assert 0 < d["bits_per_byte"] < 20
    # 16 steps of training beat 4 on held-out text of every language.
    assert all(late["datasets"][n]["nll"] < early["datasets"][n]["nll"] for n in expected)
    lines = [json.loads(ln) for ln in (ev / "results.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["dataset"]) for r in lines) == sorted((s, n) for s in (4, 16) for n in expected)
    assert "step 16: bits/byte" in capsys.readouterr().out

    # Unchanged inputs: nothing runs, nothing is rewritten.
    before = (ev / "global_step16" / "perplexity.json").stat().st_mtime_ns
    runner.run(cfg_of(run), ["evaluate"], executor="inline")
    assert (ev / "global_step16" / "perplexity.json").stat().st_mtime_ns == before
    assert (ev / "results.jsonl").read_text().count("\n") == len(lines)

    # A re-export of a step with other weights is not carried over; the same weights are.
    from training import evaluate

    for sha, kept in ((late["source_weights_sha256"], True), ("0" * 64, False)):
        staging = run[0] / f"staging-{kept}"
        staging.mkdir()
        assert evaluate._carried(ev, staging, run[0] / "export" / "global_step16", sha, []) is kept
        assert (staging / "global_step16" / "perplexity.json").is_file() is kept


def write_task(folder: Path, clean_dir: Path) -> list[str]:
    """A multiple-choice task per language: a training document's real continuation vs the same words shuffled."""
    from data_prep.shards import read_documents

    rng = random.Random(0)
    docs: dict[str, list[str]] = {lang: [] for lang in LANGS}
    for doc in read_documents(clean_dir):
        words = doc.text.split()
        if doc.lang in docs and len(docs[doc.lang]) < 12 and len(words) >= 30:
            docs[doc.lang].append(words)
    names = []
    for lang, texts in docs.items():
        assert len(texts) >= 4, f"too few {lang} documents for the task"
        rows = []
        for words in texts:
            real = words[8:24]
            shuffled = list(real)
            rng.shuffle(shuffled)
            rows.append({"context": " ".join(words[:8]), "choices": [" " + " ".join(real), " " + " ".join(shuffled)]})
        (folder / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        name = f"graine_order_{lang}"
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / (lang + '.jsonl')}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
            "doc_to_choice: '{{choices}}'\ndoc_to_target: 0\nmetric_list:\n  - metric: acc\n")
        names.append(name)
    return names


def test_lm_eval_runs_offline_through_the_stage(run, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    names = write_task(tasks_dir, run[0] / "clean")
    runner.run(cfg_of(run, f"evaluate.tasks=[{','.join(names)}]", f"evaluate.task_dir={tasks_dir}"), ["evaluate"],
               executor="inline")
    acc = {}
    for step in (4, 16):
        out = json.loads((run[0] / "eval" / f"global_step{step}" / "lm_eval.json").read_text())
        assert set(out["results"]) == set(names)
        acc[step] = {t: out["results"][t]["acc,none"] for t in names}
        assert all(0.0 <= a <= 1.0 for a in acc[step].values())
    # The real order of training text is likelier than a shuffle once the model has learnt a little.
    assert all(acc[16][t] >= acc[4][t] for t in names), acc
    assert sum(acc[16].values()) / len(names) > 0.5, acc
