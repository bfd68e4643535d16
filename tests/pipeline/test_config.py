"""Run configuration: overrides, validation messages and exit codes."""

import subprocess
import sys

import pytest

from core.config import apply_override, describe
from core.errors import ConfigError
from pipeline.config import RunConfig, load_config


def test_defaults_load_and_round_trip(tmp_path):
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_demo_config_loads():
    cfg = load_config("configs/demo.yaml")
    assert cfg.run_dir == "runs/demo"
    assert cfg.clean.languages


def test_override_values_are_yaml():
    cfg = load_config(None, ["clean.inputs=[\"a/*.jsonl\", b.txt]", "train.lr=3e-4", "clean.pii=false",
                             "cluster.gpu={time: 60}"])
    assert cfg.clean.inputs == ["a/*.jsonl", "b.txt"]
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.clean.pii is False
    assert cfg.cluster.gpu == {"time": 60}


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["clean.no_such_key=1"])
    msg = str(err.value)
    assert "no_such_key" in msg and "num_tasks" in msg and "languages" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="valid keys at the top level: run_dir"):
        load_config(None, ["trian.lr=1"])


@pytest.mark.parametrize("override, expected", [
    ("clean.num_tasks=-1", "clean.num_tasks=-1 is out of range; expected >= 1"),
    ("clean.num_tasks=many", "clean.num_tasks='many' must be an integer"),
    ("train.precision=fp8", "expected one of fp32, bf16, fp16"),
    ("clean.pii=2", "must be true or false"),
    ("clean.dedup.threshold=1.5", "<= 1"),
    ("clean.languages={a: 1}", "must be a list"),
])
def test_wrong_values_name_key_value_and_expectation(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [override])


def test_cross_key_checks_name_the_fix():
    with pytest.raises(ConfigError, match="lower train.seq_len"):
        load_config(None, ["train.seq_len=4096", "model.max_positions=2048"])
    with pytest.raises(ConfigError, match="clean.dedup.num_perm=12"):
        load_config(None, ["clean.dedup.bands=3", "clean.dedup.rows=4"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="not key=value"):
        apply_override({}, "train.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"seed": 1}, "seed.x=1")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clean: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_section_hash_covers_only_its_sections():
    a = load_config(None)
    b = load_config(None, ["train.lr=1e-3"])
    assert a.section_hash("clean") == b.section_hash("clean")
    assert a.section_hash("train") != b.section_hash("train")


def test_every_key_is_documented():
    rows = describe(RunConfig)
    assert len(rows) > 50
    undocumented = [k for k, _, h in rows if not h and not k.startswith(("train.beta", "train.eps", "train.weight",
                                                                          "model.hidden_dropout", "model.attention",
                                                                          "export.dtype", "seed"))]
    assert not undocumented, undocumented


@pytest.mark.parametrize("override, needle", [
    ("clean.no_such_key=1", "no_such_key"),
    ("clean.num_tasks=-1", "clean.num_tasks"),
])
def test_cli_exits_2_on_bad_config(override, needle):
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "clean", "-c", "configs/demo.yaml",
                          override, "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 2, out
    assert needle in out.stderr


def test_cli_exits_2_on_bad_usage():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "clean", "-c", "configs/demo.yaml",
                          "--no-such-flag"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "--no-such-flag" in out.stderr


def test_task_counts_are_not_part_of_a_stage_identity():
    a = load_config(None, ["clean.num_tasks=2", "preprocess.num_tasks=3"])
    b = load_config(None, ["clean.num_tasks=5", "preprocess.num_tasks=1"])
    assert a.section_hash("clean", "preprocess") == b.section_hash("clean", "preprocess")
    assert a.shape("clean") == {"clean.num_tasks": 2} and b.shape("clean", "preprocess")["preprocess.num_tasks"] == 1
    assert a.section_hash("clean") != load_config(None, ["clean.num_tasks=2", "clean.min_lang_score=0.9"]).section_hash("clean")
