"""Stage `preprocess`: shards decode to the documents, any task count gives the same bytes, kills are safe."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataError
from core.stage import TaskContext
from data_prep import preprocess, tokenizer
from data_prep.indexed_dataset import IndexedDataset
from data_prep.sample_index import BlendedSampleIndex
from tests.data_prep.test_indexed_dataset import read_megatron
from tests.data_prep.test_tokenizer_corpus import make_config, make_documents, run_stage, write_clean

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {"tokenizer.vocab_size": 1000, "tokenizer.sample_bytes": 60_000, "preprocess.validation_fraction": 0.05}


@pytest.fixture(scope="module")
def corpus():
    return make_documents(1200, seed=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus):
    """A run directory with clean/ and a trained tokenizer/, copied by each test."""
    root = tmp_path_factory.mktemp("base")
    write_clean(root, corpus, num_shards=3)
    run_stage(tokenizer.STAGE, make_config(root, **SETTINGS))
    return root


def fresh(base: Path, where: Path) -> Path:
    shutil.copytree(base / "clean", where / "clean")
    shutil.copytree(base / "tokenizer", where / "tokenizer")
    return where


def preprocess_run(run: Path, **overrides) -> Path:
    return run_stage(preprocess.STAGE, make_config(run, **SETTINGS, **overrides))


def files_of(shards: Path) -> dict[str, bytes]:
    return {str(p.relative_to(shards)): p.read_bytes() for p in sorted(shards.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_task(base, tmp_path_factory):
    return preprocess_run(fresh(base, tmp_path_factory.mktemp("one")), **{"preprocess.num_tasks": 1})


def test_four_tasks_give_byte_identical_datasets(one_task, base, tmp_path):
    four = preprocess_run(fresh(base, tmp_path), **{"preprocess.num_tasks": 4})
    a, b = files_of(one_task), files_of(four)
    assert a.keys() == b.keys() and any(k.endswith(".bin") for k in a)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


def test_independent_reader_and_decoding_reproduce_documents(one_task, base, corpus):
    blend = json.loads((one_task / "blend.json").read_text())
    sp = tokenizer.load_tokenizer(base / "tokenizer")
    eod = sp.eos_id()
    seen = 0
    for name, d in blend["datasets"].items():
        for split in ("train", "valid"):
            if split not in d:
                continue
            theirs = read_megatron(one_task / d[split]["path"])
            ours = IndexedDataset(one_task / d[split]["path"])
            assert len(theirs) == len(ours) == d[split]["documents"]
            assert list(ours.sizes) == [len(x) for x in theirs]
            assert all(np.array_equal(a, ours[i]) for i, a in enumerate(theirs))
            assert d[split]["max_id"] == int(ours.tokens.max())  # what the sample index checks the vocabulary by
            texts = [sp.decode(x[:-1].tolist()) for x in theirs]
            assert all(x[-1] == eod for x in theirs)
            expected = [doc["text"] for doc in corpus if preprocess.dataset_name(doc["lang"], None) == name
                        and (preprocess.unit_hash(1234, "valid", doc["id"]) < 0.05) == (split == "valid")]
            assert texts == expected
            seen += len(texts)
    assert seen == len(corpus)
    assert blend["totals"]["valid"]["documents"] > 0


def test_blend_weights_follow_alpha_and_multipliers(one_task, base, tmp_path):
    blend = json.loads((one_task / "blend.json").read_text())
    assert blend["tokenizer_hash"] == tokenizer.tokenizer_hash(base / "tokenizer")
    tokens = {n: d["train"]["tokens"] for n, d in blend["datasets"].items()}
    norm = sum(t**0.3 for t in tokens.values())
    for n, d in blend["datasets"].items():
        assert d["weight"] == pytest.approx(tokens[n] ** 0.3 / norm, rel=1e-6)
    boosted = preprocess_run(fresh(base, tmp_path), **{"preprocess.multipliers": "{zgh: 3.0}"})
    b = json.loads((boosted / "blend.json").read_text())["datasets"]
    ratio = b["zgh"]["weight"] / b["en"]["weight"]
    assert ratio == pytest.approx(3 * blend["datasets"]["zgh"]["weight"] / blend["datasets"]["en"]["weight"])
    assert "datasets" in preprocess.summary(boosted)


def test_split_by_source(base, tmp_path):
    # These records name their source in `source` (as clean's input file field would): the field is a setting.
    shards = preprocess_run(fresh(base, tmp_path), **{"preprocess.split_by_source": True, "preprocess.source_field": "source"})
    names = set(json.loads((shards / "blend.json").read_text())["datasets"])
    assert {"en__web", "en__books", "code_python__web"} <= names


# Run with the repository root as the working directory (`python -c` puts it first on sys.path), for tests.*.
KILLER = textwrap.dedent("""
    import os, signal
    from pathlib import Path
    from data_prep import indexed_dataset, preprocess
    from core.stage import TaskContext
    from tests.data_prep.test_tokenizer_corpus import make_config
    calls = []
    real = indexed_dataset.IndexedDatasetWriter.add_documents
    def add_then_die(self, docs):
        max_id = real(self, docs)
        self._bin.flush()
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a node failure
        return max_id
    indexed_dataset.IndexedDatasetWriter.add_documents = add_then_die
    cfg = make_config(Path({run!r}), **{settings!r})
    run = Path({run!r})
    preprocess.tokenize_step(TaskContext(cfg=cfg, stage="preprocess", step="tokenize", rank=1, world_size=2,
                             out_dir=run / ".preprocess.staging", work_dir=run / ".preprocess.work"))
""")


def test_killed_task_leaves_nothing_visible_and_rerun_is_identical(one_task, base, tmp_path):
    run = fresh(base, tmp_path)
    settings = {**SETTINGS, "preprocess.num_tasks": 2}
    cfg = make_config(run, **settings)
    run_stage(preprocess.STAGE, cfg, steps=("count",))
    preprocess.tokenize_step(TaskContext(cfg=cfg, stage="preprocess", step="tokenize", rank=0, world_size=2,
                                         out_dir=run / ".preprocess.staging", work_dir=run / ".preprocess.work"))
    script = KILLER.format(run=str(run), settings=settings)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == -9, proc.stderr[-2000:]
    tasks = run / ".preprocess.work" / "tasks"
    assert not (tasks / "00001").exists() and (tasks / "00001.tmp").exists()
    half = list((tasks / "00001.tmp").rglob("*.bin*"))
    assert half and all(re.fullmatch(r"\..+\.bin\.tmp\d+", p.name) for p in half)  # core.fs.tmp_name: hidden
    with pytest.raises(DataError, match="tokenize task 1 of 2 has not completed"):
        run_stage(preprocess.STAGE, cfg, steps=("merge",))
    shards = run_stage(preprocess.STAGE, cfg)  # the re-run: every step again, as after a requeue
    assert not (tasks / "00001.tmp").exists()
    a, b = files_of(one_task), files_of(shards)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_shards_built_with_another_tokenizer_are_refused(one_task, base, tmp_path):
    other = tmp_path / "other"
    write_clean(other, make_documents(400, seed=9))
    run_stage(tokenizer.STAGE, make_config(other, **{**SETTINGS, "tokenizer.vocab_size": 900}))
    with pytest.raises(DataError, match=r"blend\.json was built with tokenizer .* re-run `graine run preprocess`"):
        BlendedSampleIndex(one_task, 32, 1, tokenizer_dir=other / "tokenizer", cache=False)
    index = BlendedSampleIndex(one_task, 32, 1, tokenizer_dir=base / "tokenizer", cache=False)
    assert len(index) > 0 and index[0].shape == (33,)
